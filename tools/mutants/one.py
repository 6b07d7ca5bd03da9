"""Check one mutant by hand (docs/testing.md, "Surviving mutants"): apply one
edit to a fresh copy of the tree and run the given tests there.

    python -m tools.mutants.one FILE OLD NEW TEST [TEST ...]

OLD must occur exactly once in FILE (a Python string literal's escapes,
e.g. \\n, are understood). Prints "killed" (the tests fail: exit 0),
"SURVIVED" (they pass: exit 1) or "ERROR" (anything else: exit 2), and the
end of pytest's output.
"""
import codecs
import os
import shutil
import sys
import tempfile

from tools.mutants.__main__ import Rotten, apply, pytest
from tools.mutants.copytree import check_imports_from, copy_tree, module_name


def check(path, old, new, tests):
    base = tempfile.mkdtemp(prefix="pc-mutant-one-")
    try:
        copy = copy_tree(os.path.join(base, "tree"))
        check_imports_from(copy, [module_name(path)])
        apply(copy, [(path, old, new)])
        rc, out, dt = pytest(copy, tests)
        verdict = "killed" if rc == 1 else "SURVIVED" if rc == 0 else "ERROR"
        return verdict, dt, out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv=None):
    a = sys.argv[1:] if argv is None else argv
    if len(a) < 4:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    path, old, new = a[0], codecs.decode(a[1], "unicode_escape"), codecs.decode(a[2], "unicode_escape")
    try:
        verdict, dt, out = check(path, old, new, a[3:])
    except Rotten as e:
        print("ERROR %s" % e)
        return 2
    print("%s in %.1f s: %s -> %s" % (verdict, dt, old.strip(), new.strip()))
    print("\n".join(out.strip().splitlines()[-3:]))
    return {"killed": 0, "SURVIVED": 1}.get(verdict, 2)


if __name__ == "__main__":
    sys.exit(main())
