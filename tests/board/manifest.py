# The test image for the board lane (tools/board_test.py): what a board
# carries (firmware/board/manifest.py) plus the simulated hardware and the
# dual-interpreter suites, all frozen, and the RAM block device the suites'
# filesystem lives on.
include("../../firmware/board/manifest.py")
package("sim", files=("__init__.py", "hardware.py", "flash.py", "loopuart.py", "meter.py", "platform.py",
                "bms.py"), base_path="../..")
package("tests", files=("__init__.py",), base_path="../..")
package("tests/mp", base_path="../..")
module("boardfs.py")
module("heapbench.py")
module("boardbench.py")
