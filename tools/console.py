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
import csv
import getpass
import json
import logging
import os
import sys
import threading
import time

from host.schema import stop_reason as _stop_name
from protocol import codec
from protocol import fields as F
from host import cli

PROMPT = b"pile> "
_BAUD = 115200


class ConsoleError(Exception):
    """The console answered with an error (the message is its own)."""


class NoConsole(Exception):
    """Nothing answering like a pile console on the port."""


class LinkLost(Exception):
    """The port went away under an open session (a pulled USB cable, the
    simulator stopped): reads or writes fail."""


class PortBusy(Exception):
    """Another program holds the port (exclusive lock)."""


def open_port(url, baud=_BAUD, timeout=0.05):
    """The port, opened exclusively (a second pile-console or a terminal on
    the same cable is refused, not interleaved). PortBusy / serial errors."""
    import serial
    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=timeout, exclusive=True)
    except serial.SerialException as e:
        if "exclusively lock" in str(e):
            raise PortBusy("%s is busy: another program has it open (%s)"
                           % (url, getattr(e, "__context__", None) or e))
        raise


def _io(fn, *a):
    """A port read or write; a failing port is LinkLost (one error class for
    pyserial's SerialException and the OSError a vanished device gives)."""
    import serial
    try:
        return fn(*a)
    except (serial.SerialException, OSError, TypeError, AttributeError) as e:
        # TypeError / AttributeError: pyserial closing the fd under a reader
        raise LinkLost(str(e) or type(e).__name__)


class ConsoleClient:
    """Commands over an open pyserial port; `port` is closed by close()."""

    def __init__(self, port, timeout=5.0, url=""):
        self.port = port
        self.timeout = timeout
        self.url = url or getattr(port, "port", "") or "the port"

    def close(self):
        self.port.close()

    def _read_until(self, done):
        buf = bytearray()
        end = time.monotonic() + self.timeout
        while not done(buf):
            if time.monotonic() > end:
                raise NoConsole("no answer from a pile console on %s within %.0f s "
                                "(wrong port, baud rate or cable?)" % (self.url, self.timeout))
            chunk = _io(self.port.read, 4096)
            if chunk:
                buf += chunk
        return bytes(buf)

    def sync(self):
        # Ctrl-C drops whatever half line the console holds and prompts again.
        _io(self.port.write, b"\x03")
        self._read_until(lambda b: b.endswith(PROMPT))

    def command(self, line):
        """The console's text answer to one line (echo and prompt removed)."""
        cmd = line.encode()
        _io(self.port.write, cmd + b"\r")
        echo = cmd + b"\r\n"

        def done(b):
            i = b.find(echo)
            return i >= 0 and b.endswith(PROMPT) and len(b) >= i + len(echo) + len(PROMPT)

        raw = self._read_until(done)
        body = raw[raw.find(echo) + len(echo):-len(PROMPT)]
        return body.decode("utf-8", "replace")

    def json(self, line):
        text = self.command("json " + line)
        for s in text.splitlines():
            s = s.strip()
            if s.startswith("{"):
                d = json.loads(s)
                if isinstance(d, dict) and "error" in d and len(d) == 1:
                    raise ConsoleError(d["error"])
                return d
        raise ConsoleError("no JSON in the answer to %r: %r" % (line, text[:200]))


# --- presentation -------------------------------------------------------------------

def _dec(v, places):
    if not isinstance(v, int):
        return "-" if v is None else str(v)
    s = "-" if v < 0 else ""
    v = abs(v)
    p = 10 ** places
    return "%s%d.%0*d" % (s, v // p, places, v % p)


def _pairs(rows, out):
    w = max([len(k) for k, _ in rows] or [0])
    for k, v in rows:
        out.write("%-*s  %s\n" % (w, k, v))


def _table(head, rows, out):
    w = [len(h) for h in head]
    for r in rows:
        for i, c in enumerate(r):
            w[i] = max(w[i], len(c))
    for r in [head, ["-" * n for n in w]] + rows:
        out.write("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() + "\n")


def stop_text(code):
    """0x43 amount_target: the code as on the wire and its name."""
    if not isinstance(code, int):
        return "-"
    return "0x%02X %s" % (code, _stop_name(code)["name"])


def _field(name, v):
    if not isinstance(v, int):
        return str(v)
    if name.endswith("_time") or name == "time":
        return F.iso(v)
    if name.endswith("price"):
        return _dec(v, 5) + " yuan/kWh"
    if name.endswith("energy") or name.endswith("loss") or name.startswith("meter_"):
        return _dec(v, 4) + " kWh"
    if name.endswith("amount") or name.endswith("fee"):
        return _dec(v, 4) + " yuan"
    if name == "stop_reason":
        return stop_text(v)
    return str(v)


def show_status(d, out):
    pct = d["journal_used"] * 100 // d["journal_limit"] if d["journal_limit"] else 0
    _pairs([("pile", d["pile"]), ("state", d["state"]),
            ("link", "online" if d["online"] else "OFFLINE"), ("boot reason", d["boot_reason"]),
            ("journal", "%d / %d bytes (%d%%)" % (d["journal_used"], d["journal_limit"], pct)),
            ("unconfirmed bills", str(d["pending"])), ("unsettled bills", str(d["unsettled"])),
            ("illegal bills", str(d["illegal"])),
            ("oldest unconfirmed", d["oldest_pending"] or "-")], out)


def show_versions(d, out):
    _pairs([("firmware", d["fw"]), ("hmi", d["hmi"] or "-"), ("protocol", d["protocol"])], out)


_RESULTS = {1: "MAC", 2: "unsigned"}   # 0xE4 results of a refused bill (docs/platform.md)


def _result(res):
    return "-" if res is None else "%d (%s)" % (res, _RESULTS.get(res, "refused"))


def show_bills(d, out):
    rows = [[b["serial"], b["state"], _dec(b.get("energy"), 4), _dec(b.get("amount"), 4),
             stop_text(b.get("stop_reason")),
             F.iso(b["end_time"]) if "end_time" in b else "error: " + b.get("error", ""),
             _result(b.get("result"))]
            for b in d["bills"]]
    _table(["trade serial", "state", "energy kWh", "amount yuan", "stop reason", "ended",
            "result"], rows, out)
    out.write("%d bill(s)\n" % len(rows))


def show_bill(d, out):
    rows = [("journal state", d["state"])]
    rows += [(k, _field(k, v)) for k, v in d["bill"].items()]
    rows += [(k, _field(k, v)) for k, v in d["extra"].items() if k != "serial"]
    _pairs(rows, out)


def show_log(d, out):
    for e in d["events"]:
        out.write("%s  %s  %s\n" % (F.iso(e["time"]), e["kind"], e["detail"]))
    if not d["events"]:
        out.write("(no events since boot)\n")


def show_tariff(d, out):
    rows = [("model", d["model"]), ("loss ratio", "%d %%" % d["loss_ratio"])]
    rows += [(c["class"], "energy %s + service %s yuan/kWh" % (_dec(c["energy"], 5),
                                                               _dec(c["service"], 5)))
             for c in d["classes"]]
    rows += [("%s-%s" % (a, b), c) for a, b, c in d["spans"]]
    _pairs(rows, out)


def show_meter(d, out):
    units = {"energy": (4, "kWh"), "power": (0, "W"), "voltage": (1, "V"), "current": (1, "A")}
    rows = []
    for k, (p, u) in units.items():
        if d.get(k) is None:
            rows.append((k, "error: " + d.get(k + "_error", "?")))
        else:
            rows.append((k, "%s %s" % (_dec(d[k], p) if p else d[k], u)))
    _pairs(rows, out)


# The running session's integers (firmware/console.py cmd_session) in the
# wire's units: energy x10^4 kWh, amounts and the balance x10^4 yuan. A
# target of 0 is "no target"; a balance of None is "not enforced" (postpaid).
_SESSION_UNITS = {"meter_start": (4, "kWh"), "energy": (4, "kWh"), "amount": (4, "yuan"),
                  "minutes": (0, "min"), "power": (0, "W"), "soc": (0, "%"),
                  "target_amount": (4, "yuan"), "target_energy": (4, "kWh"),
                  "target_minutes": (0, "min"), "target_soc": (0, "%"), "balance": (4, "yuan")}


def _session_value(k, v):
    if k == "balance" and v is None:
        return "- (not enforced)"
    if k.startswith("target_") and not v:
        return "-"
    if k.endswith("_time") and isinstance(v, int):
        return F.iso(v)
    if k in _SESSION_UNITS and isinstance(v, int):
        places, unit = _SESSION_UNITS[k]
        return "%s %s" % (_dec(v, places) if places else v, unit)
    return _field(k, v)


def show_session(d, out):
    if not d["active"]:
        _pairs([("state", d["state"]), ("session", "none"), ("last bill", d["last_bill"] or "-")],
               out)
        return
    _pairs([(k.replace("_", " "), _session_value(k, v)) for k, v in d.items() if k != "active"],
           out)


def show_key(d, out):
    # The pile's OCMF public key (docs/ocmf.md), to register in the site
    # config as pile.<code>.ocmf_key: one line, easy to copy.
    if d.get("ocmf_key"):
        out.write(d["ocmf_key"] + "\n")
    else:
        out.write("no OCMF key: %s\n" % d.get("why", "unknown"))


_SHOW = {"status": show_status, "versions": show_versions, "bills": show_bills,
         "log": show_log, "tariff": show_tariff, "meter": show_meter, "session": show_session,
         "key": show_key}


# --- export --------------------------------------------------------------------------

def collect_bills(client, every=False):
    """[{serial, state, bill, extra}] for the unconfirmed bills (every=True:
    unsettled and illegal ones too), each read in full from the pile."""
    listed = client.json("bills")["bills"]
    out = []
    for b in listed:
        if every or b["state"] == "unconfirmed":
            out.append(client.json("bill " + b["serial"]))
    return out


def write_csv(bills, path):
    cols = ["serial", "state", "result"]   # result: the platform's 0xE4 refusal, if any
    for b in bills:
        for k in list(b["bill"]) + ["extra_" + k for k in b["extra"] if k != "serial"]:
            if k not in cols:
                cols.append(k)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for b in bills:
            row = {"serial": b["serial"], "state": b["state"], "result": b.get("result", "")}
            for k, v in b["bill"].items():
                row[k] = F.iso(v) if k.endswith("_time") else v
            for k, v in b["extra"].items():
                row["extra_" + k] = v
            w.writerow([row.get(c, "") for c in cols])


def write_json(bills, path):
    with open(path, "w") as f:
        json.dump({"bills": bills}, f, indent=1, sort_keys=True)
        f.write("\n")


# --- spy -------------------------------------------------------------------------------

def describe(item):
    """Lines for one FrameReader item: a Frame (hex + decoded) or an error."""
    if not isinstance(item, codec.Frame):
        return ["! bad frame: %s: %s" % (type(item).__name__, item)]
    # The reader keeps the fields, not the bytes; framing them again gives the
    # same bytes (the envelope is a function of seq, flag, type and body).
    raw = codec.wrap(item.code, item.body, item.seq, item.enc)
    head = "0x%02X %s seq=%d len=%d" % (item.code, item.name, item.seq, len(item.body))
    if item.crc_swapped:
        head += " (CRC bytes swapped)"
        raw = raw[:-2] + raw[-1:] + raw[-2:-1]
    lines = [head, "  " + raw.hex(" ").upper()]
    if item.fields is None:
        lines.append("  (encrypted body)")
    else:
        lines.append("  " + " ".join("%s=%s" % (k, F.iso(v) if k.endswith("time") and
                                              isinstance(v, int) else v)
                                     for k, v in item.fields.items()))
    return lines


def spy(port, out, count=0, idle=0.0):
    """Print each frame read from `port` until `count` items (0: no limit)
    or `idle` seconds without a byte (0: never)."""
    reader = codec.FrameReader(tolerant=True)
    seen = 0
    quiet_since = time.monotonic()
    while True:
        data = _io(port.read, 4096)
        if data:
            quiet_since = time.monotonic()
            for item in reader.push(data):
                stamp = time.strftime("%H:%M:%S")
                lines = describe(item)
                out.write("%s %s\n" % (stamp, lines[0]))
                for s in lines[1:]:
                    out.write(s + "\n")
                out.flush()
                seen += 1
                if count and seen >= count:
                    return seen
        elif idle and time.monotonic() - quiet_since >= idle:
            return seen


# --- shell -----------------------------------------------------------------------------

def shell(port, inp, out, timeout=5.0):
    """Lines typed on `inp` go to the console; what it writes is shown. At
    the end of input (Ctrl-D, or a piped script) the last answer is awaited.
    A link lost meanwhile (cable pulled) raises LinkLost, also while the
    technician is typing: the keyboard is read by a thread of its own, so
    the main loop never blocks on it and sees the loss at once (no signal
    racing the end of the input)."""
    import queue
    stop = threading.Event()
    tail = bytearray()
    prompted = threading.Event()
    lost = []
    lines = queue.Queue()

    def show():
        while not stop.is_set():
            try:
                data = _io(port.read, 4096)
            except LinkLost as e:
                if not stop.is_set():
                    lost.append(e)
                    prompted.set()
                return
            if data:
                tail.extend(data)
                del tail[:-len(PROMPT)]
                if bytes(tail) == PROMPT:
                    prompted.set()
                out.write(data.decode("utf-8", "replace"))
                out.flush()

    def feed():
        try:
            for line in inp:
                lines.put(line)
        finally:
            lines.put(None)

    t = threading.Thread(target=show, daemon=True)
    t.start()
    threading.Thread(target=feed, daemon=True).start()
    try:
        _io(port.write, b"\r")
        while not lost:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            prompted.wait(timeout)
            prompted.clear()
            if lost:
                break
            _io(port.write, line.rstrip("\r\n").encode() + b"\r")
        if not lost:
            prompted.wait(timeout)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        t.join()
    if lost:
        raise lost[0]


# --- main --------------------------------------------------------------------------------

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
