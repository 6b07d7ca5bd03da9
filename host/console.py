# The technician's laptop end of the pile console (docs/console.md): the
# client that drives the pile's console over any pyserial URL, the views of
# its answers, the bill export, the pile-link spy and the interactive shell.
# The command line is tools/console.py (pile-console).
import csv
import json
import threading
import time

from protocol import codec
from protocol import fields as F
from protocol import units

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
    return units.text(v, places)


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


def field_pair(k, v):
    """A decoded field as `pile-console spy` and docs/protocol.md's examples
    (tools/gen_protocol_doc.py) show it: name=value, times in ISO 8601."""
    return "%s=%s" % (k, F.iso(v) if k.endswith("time") and isinstance(v, int) else v)


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
             units.stop_text(b.get("stop_reason")),
             F.iso(b["end_time"]) if "end_time" in b else "error: " + b.get("error", ""),
             _result(b.get("result"))]
            for b in d["bills"]]
    _table(["trade serial", "state", "energy kWh", "amount yuan", "stop reason", "ended",
            "result"], rows, out)
    out.write("%d bill(s)\n" % len(rows))


def show_bill(d, out):
    rows = [("journal state", d["state"])]
    rows += [(k, units.field_text(k, v)) for k, v in d["bill"].items()]
    rows += [(k, units.field_text(k, v)) for k, v in d["extra"].items() if k != "serial"]
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
    return units.field_text(k, v)


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
        lines.append("  " + " ".join(field_pair(k, v) for k, v in item.fields.items()))
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
