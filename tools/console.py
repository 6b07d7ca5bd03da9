"""pile-console: the technician's laptop end of the pile console.

    pile-console /dev/ttyUSB0                  state, versions, unconfirmed bills
    pile-console URL status|bills|versions|log|tariff|meter|session
    pile-console URL bill SERIAL               every field of one bill, with units
    pile-console URL export --csv F --json-file F   unconfirmed bills (--all: every listed bill)
    pile-console URL shell                     type console commands yourself
    pile-console URL unlock [--pin PIN]        write commands need the technician PIN
    pile-console URL reboot now|idle [--pin PIN]
    pile-console URL config get [KEY]  |  config set KEY VALUE [--pin PIN]
    pile-console URL release SERIAL [--pin PIN]  |  clock [set YYYY-MM-DD HH:MM:SS]
    pile-console URL spy [--count N] [--idle S]    the pile link (YKC side): each
                                               frame in hex and decoded, bad frames
                                               one line each (also: spy URL)

URL is anything pyserial opens: /dev/ttyUSB0, COM3, socket://host:port,
loop://, or a simulated pile's console pty (pile-sim run --pty). Ports are
opened exclusively. --json prints the pile's own JSON answer on stdout.

Exit status: 0 ok; 1 the pile refused the command (its message on stderr);
2 usage (a bad flag or argument); 3 cannot reach the pile: the port cannot
be opened or is busy, nothing answers like a pile console, or the link was
lost (cable pulled) during the command. Every failure is one line on stderr.
"""
import argparse
import getpass
import json
import os
import sys

from host import cli
from host.console import (ConsoleClient, ConsoleError, LinkLost, NoConsole, PortBusy, _BAUD, _SHOW,
                          _pairs, collect_bills, open_port, shell, show_bill, show_bills,
                          show_status, show_versions, spy, write_csv, write_json)


_READS = ("summary", "status", "bills", "bill", "versions", "log", "tariff", "meter",
          "session", "key")
_WRITES = ("unlock", "lock", "reboot", "config", "release", "clock")
COMMANDS = _READS + ("export", "shell", "spy") + _WRITES


def _parser():
    p = argparse.ArgumentParser(prog="pile-console", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("url", help="pyserial URL of the console port (spy: of the pile link)")
    p.add_argument("command", nargs="?", default="summary", metavar="COMMAND",
                   help="one of: " + ", ".join(COMMANDS) + " (default summary)")
    p.add_argument("words", nargs="*", metavar="ARG",
                   help="the command's arguments: bill SERIAL, reboot now|idle, config set "
                        "KEY VALUE, release SERIAL, clock set DATE TIME")
    p.add_argument("--json", action="store_true",
                   help="JSON on stdout: the pile's own answer (raw protocol integers)")
    p.add_argument("--csv", metavar="FILE", help="export: write a CSV file")
    p.add_argument("--json-file", metavar="FILE", help="export: write a JSON file")
    p.add_argument("--all", action="store_true", help="export unsettled and illegal bills too")
    p.add_argument("--pin", help="write commands: the technician PIN (or PILE_CONSOLE_PIN; "
                                 "asked for on a terminal); unlocks first")
    p.add_argument("--baud", type=int, default=_BAUD)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    p.add_argument("--count", type=int, default=0, help="spy: stop after N frames / errors")
    p.add_argument("--idle", type=float, default=0.0, help="spy: stop after S quiet seconds")
    cli.common(p, log_level="warning")
    return p


def _parse(argv):
    p = _parser()
    a = p.parse_intermixed_args(argv)
    if a.url == "spy":            # the older order: pile-console spy URL
        if a.command == "summary" or a.words:
            p.error("spy needs a URL: pile-console URL spy")
        a.url, a.command = a.command, "spy"
    if a.command not in COMMANDS:
        p.error("unknown command %r (one of: %s)" % (a.command, ", ".join(COMMANDS)))
    n = len(a.words)
    c, w = a.command, a.words
    want = {"bill": n == 1, "release": n == 1, "reboot": n == 1 and w[0] in ("now", "idle"),
            "config": (n in (1, 2) and w[0] == "get") or (n == 3 and w[0] == "set"),
            "clock": n == 0 or (n == 3 and w[0] == "set"), "unlock": n <= 1}
    usage = {"bill": "bill SERIAL", "release": "release SERIAL", "reboot": "reboot now|idle",
             "config": "config get [KEY] | config set KEY VALUE",
             "clock": "clock [set YYYY-MM-DD HH:MM:SS]", "unlock": "unlock [--pin PIN]"}
    if c in want and not want[c]:
        p.error("usage: pile-console URL " + usage[c])
    if c not in want and w:
        p.error("%s takes no arguments, got %s" % (c, " ".join(w)))
    if c == "export" and not (a.csv or a.json_file or a.json):
        p.error("export needs --csv FILE, --json-file FILE and/or --json (stdout)")
    return a


def _needs_pin(a):
    c = a.command
    return (c == "unlock" or c in ("reboot", "release")
            or (c == "config" and a.words[0] == "set") or (c == "clock" and a.words))


def _pin(a):
    if a.words and a.command == "unlock":
        return a.words[0]
    pin = a.pin or os.environ.get("PILE_CONSOLE_PIN")
    if pin is None and a.command == "unlock" and sys.stdin.isatty():
        pin = getpass.getpass("technician PIN: ")
    return pin


def main(argv=None, out=None):
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parse(argv)              # usage errors: argparse's exit 2
    cli.setup_logging(a)
    import serial
    try:
        port = open_port(a.url, a.baud)
    except PortBusy as e:
        return cli.fail("pile-console", str(e), cli.UNREACHABLE)
    except (serial.SerialException, OSError, ValueError) as e:
        return cli.fail("pile-console", "cannot open %s: %s" % (a.url, e), cli.UNREACHABLE)
    client = ConsoleClient(port, a.timeout, a.url)
    try:
        if a.command == "spy":
            sys.stderr.write("pile-console: spying on %s (Ctrl-C ends)\n" % a.url)
            sys.stderr.flush()
            try:
                spy(port, out, a.count, a.idle)
            except KeyboardInterrupt:
                pass
            return cli.OK
        if a.command == "shell":
            shell(port, sys.stdin, out, a.timeout)
            return cli.OK
        client.sync()
        return _run(client, a, out)
    except LinkLost as e:
        out.flush()
        return cli.fail("pile-console", "lost the link to %s (cable pulled or device gone): %s"
                        % (a.url, e), cli.UNREACHABLE)
    except NoConsole as e:
        return cli.fail("pile-console", str(e), cli.UNREACHABLE)
    except ConsoleError as e:
        return cli.fail("pile-console", "the pile says: %s" % e, cli.NO)
    except OSError as e:          # export files
        return cli.fail("pile-console", str(e), cli.NO)
    finally:
        try:
            client.close()
        except Exception:
            pass


def _dump(d, out):
    out.write(json.dumps(d, sort_keys=True) + "\n")


def _run(client, a, out):
    c = a.command
    if _needs_pin(a):
        pin = _pin(a)
        if pin is not None:
            client.json("unlock " + pin)
        elif c == "unlock":
            raise ConsoleError("unlock needs a PIN: --pin PIN or PILE_CONSOLE_PIN")
    if c == "summary":
        st, ver, d = client.json("status"), client.json("versions"), client.json("bills")
        d["bills"] = [b for b in d["bills"] if b["state"] == "unconfirmed"]
        if a.json:
            _dump({"status": st, "versions": ver, "unconfirmed": d["bills"]}, out)
            return cli.OK
        show_status(st, out)
        out.write("\n")
        show_versions(ver, out)
        out.write("\n")
        out.write("unconfirmed bills:\n")
        show_bills(d, out)
    elif c == "bill":
        d = client.json("bill " + a.words[0])
        _dump(d, out) if a.json else show_bill(d, out)
    elif c == "export":
        bills = collect_bills(client, a.all)
        if a.csv:
            write_csv(bills, a.csv)
        if a.json_file:
            write_json(bills, a.json_file)
        if a.json:
            _dump({"bills": bills}, out)
        else:
            out.write("%d bill(s) exported to %s\n"
                      % (len(bills), " and ".join(p for p in (a.csv, a.json_file) if p)))
    elif c in _WRITES:
        if c == "unlock":
            d = {"ok": True}
        else:
            d = client.json(" ".join([c] + a.words))
        if a.json:
            _dump(d, out)
        else:
            _pairs([(k, str(v)) for k, v in d.items()], out)
    else:
        d = client.json(c)
        _dump(d, out) if a.json else _SHOW[c](d, out)
    return cli.OK


if __name__ == "__main__":
    sys.exit(main())
