# One CLI style across every console script (issue 19 item 3): each entry
# point in setup.cfg answers --version and --help, and a bad flag is exit 2
# (usage) with argparse's one-line message, no traceback; logs can be JSON;
# a missing TLS file is a config error naming the key and the file.
import configparser
import importlib
import io
import json
import logging
import os

import pytest

from host import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def entry_points():
    cp = configparser.ConfigParser()
    cp.read(os.path.join(ROOT, "setup.cfg"))
    out = []
    for line in cp["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = line.partition("=")
        out.append((name.strip(), target.strip()))
    return out


EPS = entry_points()


def test_every_tool_is_listed():
    names = {n for n, _ in EPS}
    assert {"pile-console", "pile-sim", "pile-bridge", "pile-platform", "pile-demo",
            "pile-chaos", "pile-fuzz", "pile-frames", "pile-qr", "pile-mqtt-site"} <= names


def _call(target, argv, capsys):
    mod, _, fn = target.partition(":")
    main = getattr(importlib.import_module(mod), fn)
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("name, target", EPS, ids=[n for n, _ in EPS])
def test_version_help_and_a_bad_flag(name, target, capsys):
    rc, out, err = _call(target, ["--version"], capsys)
    assert rc in (0, None) and out.strip() == "%s %s" % (name, cli.version()), (out, err)
    rc, out, err = _call(target, ["--help"], capsys)
    assert rc in (0, None) and out.startswith("usage: " + name), out[:200]
    assert "--version" in out and "--log-format" in out
    rc, out, err = _call(target, ["--no-such-flag-xyz"], capsys)
    assert rc == cli.USAGE, (name, rc, err)
    # argparse's usage and one error line (a missing required argument may
    # be named before the unknown flag)
    assert "Traceback" not in err and err.splitlines()[-1].startswith(name)
    assert "error:" in err.splitlines()[-1]


def test_bridge_help_lists_its_subcommands(capsys):
    rc, out, _ = _call("host.bridge:main", ["--help"], capsys)
    assert "pile-bridge push" in out and "pile-bridge migrate-site" in out


def test_json_log_format_is_one_object_a_line():
    buf = io.StringIO()
    h = cli.setup_logging(level="info", fmt="json")
    h.setStream(buf)
    try:
        logging.getLogger("pile-test").warning("bill %s overdue", "X1")
    finally:
        logging.getLogger().removeHandler(h)
    d = json.loads(buf.getvalue().strip())
    assert d["level"] == "warning" and d["logger"] == "pile-test"
    assert d["message"] == "bill X1 overdue" and d["time"].endswith("Z")


def test_progress_is_off_without_a_terminal_and_with_json():
    assert cli.progress_enabled(False, io.StringIO()) is False
    with cli.progress("x", total=3, enabled=False) as tick:
        tick()                      # a no-op, no output anywhere


def test_bridge_missing_ca_file_is_a_config_error_naming_key_and_file(tmp_path, capsys):
    conf = tmp_path / "site.toml"
    missing = tmp_path / "nope" / "ca.crt"
    conf.write_text('site = "s1"\ndatabase = "%s"\n[mqtt]\nurl = "mqtts://127.0.0.1:1"\n'
                    'ca_file = "%s"\n' % (tmp_path / "b.db", missing))
    rc, out, err = _call("host.bridge:main", ["-c", str(conf)], capsys)
    assert rc == cli.USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(conf) in lines[0] and "mqtt.ca_file" in lines[0] and str(missing) in lines[0]


def test_bridge_config_errors_name_the_file(tmp_path, capsys):
    conf = tmp_path / "site.toml"
    conf.write_text('site = "s1"\n[bills]\nwindow = 0\n')
    rc, out, err = _call("host.bridge:main", ["-c", str(conf)], capsys)
    assert rc == cli.USAGE and str(conf) in err and "bills.window" in err


def test_platform_missing_ca_file_is_exit_2_naming_the_file(tmp_path, capsys):
    missing = str(tmp_path / "ca.crt")
    rc, out, err = _call("host.platform:main", ["--broker", "mqtts://127.0.0.1:1", "--ca", missing,
                                                "--cmd", "s1", "55031412782305", "status"], capsys)
    assert rc == cli.USAGE
    assert "--ca" in err and missing in err and "no such file" in err
