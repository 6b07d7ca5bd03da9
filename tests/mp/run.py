# Runs the dual-interpreter test modules (tests/mp/test_*.py) without pytest,
# so the same tests run under the real `micropython` binary:
#
#   micropython tests/mp/run.py                 # every module
#   micropython -X heapsize=96K tests/mp/run.py test_codec
#
# Each module's test_* functions are called in order; the closing line is
# "N passed, N failed" so CI can read it.
import sys
import os

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_ROOT = _HERE + "/../.."
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def _modules(names):
    if names:
        return [n[:-3] if n.endswith(".py") else n for n in names]
    found = [n[:-3] for n in os.listdir(_HERE) if n.startswith("test_") and n.endswith(".py")]
    found.sort()
    return found


def main(argv):
    import gc
    verbose = "-v" in argv
    names = [a for a in argv if not a.startswith("-")]
    passed = failed = 0
    for name in _modules(names):
        mod = __import__("tests.mp." + name, None, None, ["x"])
        tests = [k for k in dir(mod) if k.startswith("test_")]
        tests.sort()
        for t in tests:
            fn = getattr(mod, t)
            if not callable(fn):
                continue
            gc.collect()
            try:
                fn()
                passed += 1
                if verbose:
                    print("ok", name, t)
            except Exception as e:
                failed += 1
                print("FAIL", name, t, type(e).__name__, e)
                try:
                    sys.print_exception(e)
                except AttributeError:
                    import traceback
                    traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
