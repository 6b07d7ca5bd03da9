# What a pile controller board carries in flash, frozen as bytecode by
# tools/board.sh (MicroPython manifest syntax; paths are relative to this
# file). One list, used by every board build: add a module here when the
# board needs it, never in the build script.
#
# Not carried: firmware/main.py (the board's editable main.py with its
# CONFIG, copied as source, README "A real board"). The simulated hardware
# for tests and tools (sim/hardware.py, sim/flash.py, sim/loopuart.py and
# the meter peer sim/meter.py) lives outside firmware/;
# tests/board/manifest.py adds it to the test image.
# littlefs needs mp_hal_time_ns, which the qemu port lacks: a few lines of C.
c_module("cmod/boardhal")
package("protocol", base_path="../..")
package(
    "firmware",
    files=(
        "__init__.py",
        "auth.py",
        "billindex.py",
        "bms.py",
        "console.py",
        "dlt645.py",
        "errors.py",
        "fsio.py",
        "handlers.py",
        "journal.py",
        "link.py",
        "ocmfsign.py",
        "outbox.py",
        "parallel.py",
        "pile.py",
        "realtime.py",
        "remote.py",
        "session.py",
        "sharing.py",
        "tariff.py",
        "ticks.py",
        "upgrade.py",
        "vinauth.py",
    ),
    base_path="../..",
)
