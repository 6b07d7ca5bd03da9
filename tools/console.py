"""pile-console: the technician's laptop end of the pile console.

    pile-console /dev/ttyUSB0                  state, versions, unconfirmed bills
    pile-console URL status|bills|versions|log|tariff|meter|session
    pile-console URL bill SERIAL               every field of one bill
    pile-console URL export --csv bills.csv    unconfirmed bills (--all: every listed bill)
    pile-console URL export --json bills.json
    pile-console URL shell                     type console commands yourself
    pile-console spy URL                       the pile link (YKC side): each frame in
                                               hex and decoded, bad frames one line each

URL is anything pyserial opens: /dev/ttyUSB0, COM3, socket://host:port,
loop://. The console on the pile (firmware/console.py) answers every
command as one JSON line when asked with a `json` prefix; this tool asks
that way and lays the answer out as tables. Exit status: 0 ok, 1 the pile
refused the command, 2 no console answering on URL.
"""
import argparse
import csv
import json
import sys
import threading
import time

from protocol import codec
from protocol import fields as F

PROMPT = b"pile> "
_BAUD = 115200


class ConsoleError(Exception):
    """The console answered with an error (the message is its own)."""


class NoConsole(Exception):
    """Nothing answering like a pile console on the port."""


def open_port(url, baud=_BAUD, timeout=0.05):
    import serial
    return serial.serial_for_url(url, baudrate=baud, timeout=timeout)


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
            chunk = self.port.read(4096)
            if chunk:
                buf += chunk
        return bytes(buf)

    def sync(self):
        # Ctrl-C drops whatever half line the console holds and prompts again.
        self.port.write(b"\x03")
        self._read_until(lambda b: b.endswith(PROMPT))

    def command(self, line):
        """The console's text answer to one line (echo and prompt removed)."""
        cmd = line.encode()
        self.port.write(cmd + b"\r")
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


def _field(name, v):
    if not isinstance(v, int):
        return str(v)
    if name.endswith("_time") or name == "time":
        return F.iso(v)
    if name.endswith("price"):
        return _dec(v, 5)
    if name.endswith("energy") or name.endswith("loss") or name.startswith("meter_"):
        return _dec(v, 4)
    if name.endswith("amount") or name.endswith("fee"):
        return _dec(v, 4)
    if name == "stop_reason":
        return "0x%02X" % v
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
             "0x%02X" % b["stop_reason"] if "stop_reason" in b else "-",
             F.iso(b["end_time"]) if "end_time" in b else "error: " + b.get("error", ""),
             _result(b.get("result"))]
            for b in d["bills"]]
    _table(["trade serial", "state", "kWh", "yuan", "stop", "ended", "result"], rows, out)
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


_SHOW = {"status": show_status, "versions": show_versions, "bills": show_bills,
         "log": show_log, "tariff": show_tariff, "meter": show_meter, "session": show_session}


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
        data = port.read(4096)
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
    the end of input (Ctrl-D, or a piped script) the last answer is awaited."""
    stop = threading.Event()
    tail = bytearray()
    prompted = threading.Event()

    def show():
        while not stop.is_set():
            data = port.read(4096)
            if data:
                tail.extend(data)
                del tail[:-len(PROMPT)]
                if bytes(tail) == PROMPT:
                    prompted.set()
                out.write(data.decode("utf-8", "replace"))
                out.flush()

    t = threading.Thread(target=show, daemon=True)
    t.start()
    try:
        port.write(b"\r")
        for line in inp:
            prompted.wait(timeout)
            prompted.clear()
            port.write(line.rstrip("\r\n").encode() + b"\r")
        prompted.wait(timeout)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        t.join()


# --- main --------------------------------------------------------------------------------

def _parser():
    p = argparse.ArgumentParser(prog="pile-console", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("url", help="pyserial URL of the console port")
    p.add_argument("command", nargs="?", default="summary",
                   choices=["summary", "status", "bills", "bill", "versions", "log", "tariff",
                            "meter", "session", "export", "shell"])
    p.add_argument("serial", nargs="?", help="trade serial (bill)")
    p.add_argument("--csv", metavar="FILE", help="export: write a CSV file")
    p.add_argument("--json", metavar="FILE", help="export: write a JSON file")
    p.add_argument("--all", action="store_true", help="export unsettled and illegal bills too")
    p.add_argument("--baud", type=int, default=_BAUD)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    return p


def _spy_parser():
    p = argparse.ArgumentParser(prog="pile-console spy",
                                description="print the pile link's frames, hex and decoded")
    p.add_argument("url", help="pyserial URL of the pile link (a tap on the YKC side)")
    p.add_argument("--baud", type=int, default=_BAUD)
    p.add_argument("--count", type=int, default=0, help="stop after N frames / errors")
    p.add_argument("--idle", type=float, default=0.0, help="stop after S quiet seconds")
    return p


def main(argv=None, out=None):
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    import serial
    if argv and argv[0] == "spy":
        a = _spy_parser().parse_args(argv[1:])
        try:
            port = open_port(a.url, a.baud)
        except serial.SerialException as e:
            sys.stderr.write("pile-console: cannot open %s: %s\n" % (a.url, e))
            return 2
        try:
            spy(port, out, a.count, a.idle)
        except KeyboardInterrupt:
            pass
        finally:
            port.close()
        return 0
    a = _parser().parse_args(argv)
    if a.command == "bill" and not a.serial:
        sys.stderr.write("pile-console: bill needs a trade serial\n")
        return 2
    if a.command == "export" and not (a.csv or a.json):
        sys.stderr.write("pile-console: export needs --csv FILE and/or --json FILE\n")
        return 2
    try:
        port = open_port(a.url, a.baud)
    except serial.SerialException as e:
        sys.stderr.write("pile-console: cannot open %s: %s\n" % (a.url, e))
        return 2
    client = ConsoleClient(port, a.timeout, a.url)
    try:
        if a.command == "shell":
            shell(port, sys.stdin, out)
            return 0
        client.sync()
        return _run(client, a, out)
    except NoConsole as e:
        sys.stderr.write("pile-console: %s\n" % e)
        return 2
    except ConsoleError as e:
        sys.stderr.write("pile-console: the pile says: %s\n" % e)
        return 1
    finally:
        client.close()


def _run(client, a, out):
    c = a.command
    if c == "summary":
        show_status(client.json("status"), out)
        out.write("\n")
        show_versions(client.json("versions"), out)
        out.write("\n")
        d = client.json("bills")
        d["bills"] = [b for b in d["bills"] if b["state"] == "unconfirmed"]
        out.write("unconfirmed bills:\n")
        show_bills(d, out)
    elif c == "bill":
        show_bill(client.json("bill " + a.serial), out)
    elif c == "export":
        bills = collect_bills(client, a.all)
        if a.csv:
            write_csv(bills, a.csv)
        if a.json:
            write_json(bills, a.json)
        out.write("%d bill(s) exported to %s\n"
                  % (len(bills), " and ".join(p for p in (a.csv, a.json) if p)))
    else:
        _SHOW[c](client.json(c), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
