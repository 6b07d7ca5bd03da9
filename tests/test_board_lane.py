# The board lane's own rules, without qemu: the build names what is missing
# in one line, and the runner's verdict on what a board printed.
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from sim import board as board_test  # noqa: E402


def test_board_build_without_vendor_fails_in_one_line_naming_it(tmp_path):
    env = dict(os.environ, PILE_VENDOR=str(tmp_path / "vendor"))
    r = subprocess.run(["bash", os.path.join(ROOT, "tools", "board.sh")], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "missing" in lines[0] and "micropython-1c3c201149-qemu-src.tar.xz" in lines[0]


def test_board_lane_without_vendor_fails_without_a_second_line(tmp_path):
    env = dict(os.environ, PILE_VENDOR=str(tmp_path / "vendor"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "board_test.py")], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, (r.stdout, r.stderr)


def test_board_verdict_passes_only_a_clean_closing_line():
    assert board_test.verdict("ok a\n3 passed, 0 failed\r\n", "")[0]


def test_board_verdict_fails_a_failed_test():
    ok, text = board_test.verdict("FAIL test_x test_y AssertionError\n2 passed, 1 failed\n", "")
    assert not ok and "FAIL" in text


def test_board_verdict_fails_a_suite_that_never_finished():
    ok, text = board_test.verdict("ok a\n", "")
    assert not ok and "no closing" in text


def test_board_verdict_fails_an_exception_after_the_closing_line():
    ok, text = board_test.verdict("1 passed, 0 failed\n", "Traceback...\nMemoryError: \n")
    assert not ok and "MemoryError" in text


def test_board_verdict_fails_a_suite_with_no_tests():
    assert not board_test.verdict("0 passed, 0 failed\n", "")[0]


def _manifest_files(path, found):
    """(package, file) pairs a MicroPython manifest freezes, read by running
    it with stand-ins for the manifest functions."""
    here = os.path.dirname(path)

    def package(name, files=None, base_path="."):
        base = os.path.normpath(os.path.join(here, base_path, name))
        if files is None:
            files = [os.path.relpath(os.path.join(d, f), base)
                     for d, _, fs in os.walk(base) for f in fs if f.endswith(".py")]
        for f in files:
            found.add((name, f))

    def include(p):
        _manifest_files(os.path.normpath(os.path.join(here, p)), found)

    env = {"package": package, "include": include, "module": lambda *a, **k: None,
           "c_module": lambda *a, **k: None}
    with open(path) as f:
        exec(f.read(), env)
    return found


def test_board_manifest_carries_every_firmware_module_but_the_named_ones():
    # A new firmware module must be added to the board's manifest (or to the
    # modules a board does not carry, named in its header), never forgotten.
    not_carried = {"main.py"}
    carried = {f for p, f in _manifest_files(os.path.join(ROOT, "firmware", "board", "manifest.py"), set())
               if p == "firmware"}
    every = {f for f in os.listdir(os.path.join(ROOT, "firmware")) if f.endswith(".py")}
    assert carried == every - not_carried
    protocol = {f for p, f in _manifest_files(os.path.join(ROOT, "firmware", "board", "manifest.py"), set())
                if p == "protocol"}
    assert protocol == {f for f in os.listdir(os.path.join(ROOT, "protocol")) if f.endswith(".py")}


def test_littlefs_power_cut_sample_on_the_unix_port():
    # tests/mp/lfscut.py on the unix port's littlefs (the same C library
    # as the board's): every 13th block operation of a journal's life, each
    # boot checked; the full sweep is tools/board_cutsweep.py (docs/board.md).
    from sim.programs import find_program
    mp = find_program("micropython")
    r = subprocess.run([mp, "tests/mp/lfscut.py", "13", "5"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    ok, text = board_test.verdict(r.stdout, r.stderr)
    assert ok and r.returncode == 0, text
    assert "block operations in the life" in r.stdout and " 0 failed" in r.stdout
