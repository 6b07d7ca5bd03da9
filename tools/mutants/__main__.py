"""Run the fixed mutant set (tools/mutants/fixed.py): every mutant must make
its tests fail.

    python -m tools.mutants [--jobs N] [--only ID ...] [--list] [--keep]

For each mutant: a fresh copy of the tree in a temporary folder, the mutant's
edits applied there (each old text must occur exactly once), then pytest on
the mutant's tests only, in the copy, with the copy first on PYTHONPATH (and
checked to be what is imported). pytest failing (exit 1) = killed; passing =
SURVIVED; anything else (collection error, unknown test id) = ERROR. The
unmutated copy must pass the union of the tests first, or "killed" would
mean nothing. Exit status 0 only when every mutant is killed.
"""
import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tools.mutants.copytree import check_imports_from, copy_tree, env_for, module_name, ROOT
from tools.mutants.fixed import MUTANTS

TIMEOUT_S = 300


class Rotten(Exception):
    """A mutant's old text is not in its file exactly once."""


def apply(copy, edits):
    for path, old, new in edits:
        p = os.path.join(copy, path)
        with open(p, encoding="utf-8") as f:
            text = f.read()
        n = text.count(old)
        if n != 1:
            raise Rotten("%s: old text found %d times (must be exactly once): %r"
                         % (path, n, old[:80]))
        with open(p, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))


def pytest(copy, tests, stop_first=True):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
           "-o", "addopts="]
    if stop_first:
        cmd.append("-x")
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd + list(tests), cwd=copy, env=env_for(copy),
                           capture_output=True, text=True, timeout=TIMEOUT_S)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, "timed out after %d s\n%s" % (TIMEOUT_S, e.stdout or "")
    return rc, out, time.monotonic() - t0


def run_one(base, m):
    copy = copy_tree(os.path.join(base, m["id"]))
    try:
        apply(copy, m["edits"])
    except Rotten as e:
        return m["id"], "ROTTEN", 0.0, str(e)
    rc, out, dt = pytest(copy, m["tests"])
    if rc == 1:
        verdict = "killed"
    elif rc is None:
        verdict = "killed (timeout)"
    elif rc == 0:
        verdict = "SURVIVED"
    else:
        verdict = "ERROR"
    shutil.rmtree(copy, ignore_errors=True)
    return m["id"], verdict, dt, out


def baseline(base, mutants):
    copy = copy_tree(os.path.join(base, "unmutated"))
    mods = sorted({module_name(p) for m in mutants for p, _, _ in m["edits"]})
    try:
        check_imports_from(copy, mods)
    except RuntimeError as e:
        return "ERROR", 0.0, str(e)
    tests = []
    for m in mutants:
        for t in m["tests"]:
            if t not in tests:
                tests.append(t)
    rc, out, dt = pytest(copy, tests, stop_first=False)
    return ("passed" if rc == 0 else "FAILED"), dt, out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.mutants", description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", "-j", type=int, default=2, help="mutants run side by side (2)")
    ap.add_argument("--only", nargs="*", metavar="ID", help="these mutants only")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies")
    a = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not a.only or m["id"] in a.only]
    if a.only and len(mutants) != len(set(a.only)):
        ap.error("unknown mutant id in %s" % a.only)
    if a.list:
        for m in mutants:
            print("%-48s %s" % (m["id"], m["rule"]))
        return 0
    t0 = time.monotonic()
    base = tempfile.mkdtemp(prefix="pc-mutants-")
    failed = False
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, a.jobs)) as pool:
            fb = pool.submit(baseline, base, mutants)
            futs = [pool.submit(run_one, base, m) for m in mutants]
            state, dt, out = fb.result()
            print("%-48s %-16s %5.1f s" % ("(unmutated copy: every selected test)", state, dt))
            if state != "passed":
                failed = True
                print(out[-4000:])
            for fut in futs:
                mid, verdict, dt, out = fut.result()
                print("%-48s %-16s %5.1f s" % (mid, verdict, dt))
                if not verdict.startswith("killed"):
                    failed = True
                    print("    " + "\n    ".join(out.strip().splitlines()[-15:]))
    finally:
        if a.keep:
            print("copies kept in", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    n_killed = "all" if not failed else "NOT all"
    print("fixed mutants: %d run, %s killed, %.0f s" % (len(mutants), n_killed, time.monotonic() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
