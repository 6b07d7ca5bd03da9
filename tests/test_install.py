# Installed as one distinctive name (issue 18 item 5): the wheel holds
# pile_companion/ and its dist-info only, and works from a fresh venv with
# no checkout on its path, run from a folder outside the repo. Offline: the
# wheel is built from a copy of the sources with the venv's own setuptools
# and wheel (--no-build-isolation --no-index), so nothing is written into
# the working tree.
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.cfg", "pyproject.toml", "README.md",
           "pile_companion", "protocol", "firmware", "host", "sim", "tools")
LOGIN_REPLY = "680C000000025503141278230500DA4C"

# Run by the installed interpreter: where each of our modules came from, and
# how many module objects each file has.
_WHERE = r"""
import json, sys
import pile_companion.host.bridge as alias
import host.bridge, protocol.codec, firmware.journal
ours = [(n, m) for n, m in list(sys.modules.items())
        if n.split(".")[0] in ("pile_companion",) + tuple(__import__("pile_companion").NAMES)
        and getattr(m, "__file__", None)]
per_file = {}
for n, m in ours:
    per_file.setdefault(m.__file__, set()).add(id(m))
print(json.dumps({"same": alias is host.bridge, "names": sorted(n for n, _ in ours),
                  "path": sys.path, "finders": [repr(f) for f in sys.meta_path],
                  "files": sorted(per_file),
                  "copies": sorted(f for f, ids in per_file.items() if len(ids) > 1)}))
"""


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, "%s exited %d:\n%s%s" % (cmd, r.returncode, r.stdout, r.stderr)
    return r


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("install")


@pytest.fixture(scope="module")
def wheel(work):
    src = work / "src"
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif os.path.exists(path):
            os.makedirs(src, exist_ok=True)
            shutil.copy(path, src / name)
    out = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", str(out), str(src)], cwd=str(work))
    built = [p for p in os.listdir(out) if p.endswith(".whl")]
    assert len(built) == 1, built
    return out / built[0]


@pytest.fixture(scope="module")
def venv(work, wheel):
    """A fresh venv holding only the wheel; the dependencies come from this
    interpreter's site-packages as a plain path line (a .pth line that is a
    folder: the .pth files inside it, the checkout's editable finder among
    them, are not run)."""
    env_dir = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    py = str(env_dir / "bin" / "python")
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    here = sysconfig.get_paths()
    with open(os.path.join(site, "dev_deps.pth"), "w") as f:
        f.write("".join(p + "\n" for p in sorted({here["purelib"], here["platlib"]})))
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
          "-q", str(wheel)])
    return env_dir, site


def _clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_installs_one_top_level_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"pile_companion"}, sorted(top)
    # the five folders inside it, with the data files the commands read
    for path in ("pile_companion/__init__.py", "pile_companion/protocol/codec.py",
                 "pile_companion/firmware/journal.py", "pile_companion/host/bridge.py",
                 "pile_companion/sim/demo.py", "pile_companion/tools/frames.py",
                 "pile_companion/tools/mutants/__init__.py",
                 "pile_companion/tools/scenarios/demo.json",
                 "pile_companion/host/mosquitto/site.conf",
                 "pile_companion/host/bridge.example.toml"):
        assert path in names, path


def test_installed_wheel_runs_from_outside_the_repo(venv, work):
    env_dir, site = venv
    elsewhere = work / "elsewhere"
    os.makedirs(elsewhere, exist_ok=True)
    # A console script: decode a frame (protocol/ and host/ from the install).
    r = _run([str(env_dir / "bin" / "pile-frames"), "decode", "--json", LOGIN_REPLY],
             cwd=str(elsewhere), env=_clean_env())
    assert json.loads(r.stdout.splitlines()[0])["name"] == "login_reply"
    r = _run([str(env_dir / "bin" / "pile-bridge"), "--version"],
             cwd=str(elsewhere), env=_clean_env())
    assert "0.1.0" in r.stdout + r.stderr
    # The bridge module by both names: one object, every file from the install.
    r = _run([str(env_dir / "bin" / "python"), "-c", _WHERE], cwd=str(elsewhere), env=_clean_env())
    got = json.loads(r.stdout)
    assert got["same"], got
    assert got["copies"] == [], got
    installed = os.path.join(os.path.realpath(site), "pile_companion") + os.sep
    outside = [f for f in got["files"] if not os.path.realpath(f).startswith(installed)]
    assert outside == [], "loaded from outside the installed package: %s" % outside
    assert {"host.bridge", "protocol.codec", "firmware.journal",
            "pile_companion.host.bridge"} <= set(got["names"])
    # nothing could have come from the checkout: not on the path, and its
    # editable install's finder not loaded
    assert os.path.realpath(ROOT) not in [os.path.realpath(p) for p in got["path"] if p], got["path"]
    assert not [f for f in got["finders"] if "editable" in f.lower()], got["finders"]


def test_short_and_long_names_are_one_module_in_the_checkout():
    # The development install (pip install -e) follows the same rule.
    import pile_companion.host.topics as alias
    import pile_companion.protocol as proto
    import host.topics
    import protocol
    assert alias is host.topics and proto is protocol
    assert alias.__name__ == "host.topics"
    assert os.path.dirname(os.path.dirname(host.topics.__file__)) == pile_companion_root()


def pile_companion_root():
    import pile_companion
    return pile_companion.ROOT
