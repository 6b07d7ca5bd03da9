"""A throw-away copy of the source tree, so that no mutant ever touches the
working tree, and the environment that makes Python import the copy."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache",
                               ".hypothesis", "build", "mutants", "*.egg-info", ".mutation*")


def copy_tree(dest):
    """Copy the project (sources, tests, docs, config; no venv, no git) into
    dest, which must not exist yet."""
    shutil.copytree(ROOT, dest, ignore=_SKIP, symlinks=True)
    return dest


def env_for(copy):
    """The environment for running Python in the copy: the copy first on
    sys.path (before the editable install's finder, which points at the
    working tree), no bytecode written (a mutant and the original may share
    a size and a second)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = copy + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_imports_from(copy, modules):
    """Raise RuntimeError unless each module (dotted name) is imported from
    the copy, not from the working tree."""
    # find_spec: where the import system would load each module from,
    # without running it (importing protocol.reader alone first trips over
    # the codec <-> reader cycle).
    code = ("import importlib.util, sys\n"
            "for m in sys.argv[1:]:\n"
            "    print(m, importlib.util.find_spec(m).origin)\n")
    out = subprocess.run([sys.executable, "-c", code] + list(modules), cwd=copy,
                         env=env_for(copy), capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError("importing %s in the copy failed:\n%s" % (modules, out.stderr))
    real = os.path.realpath(copy) + os.sep
    for line in out.stdout.splitlines():
        name, path = line.split(" ", 1)
        if not os.path.realpath(path).startswith(real):
            raise RuntimeError("%s is imported from %s, not from the copy %s" % (name, path, copy))
    return out.stdout


def module_name(path):
    """'host/store.py' -> 'host.store'."""
    p = path[:-3] if path.endswith(".py") else path
    return p.replace("/", ".").replace(os.sep, ".")
