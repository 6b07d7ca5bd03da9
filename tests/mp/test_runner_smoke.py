from tests.mp.util import raises, tmpdir, rmtree
import os


def test_tmpdir_is_fresh_and_removable():
    d = tmpdir("smoke")
    with open(d + "/f", "w") as f:
        f.write("x")
    rmtree(d)
    raises(OSError, os.stat, d)
