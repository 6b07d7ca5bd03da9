# The technician console: a line-based shell on a second UART, usable from
# any terminal (miniterm, screen, PuTTY) and from tools/console.py.
#
#   pile> status            plain aligned text
#   pile> json bills        the same facts as one JSON line (for tools)
#
# Reading commands are open to anyone holding the cable; commands that change
# the pile (config set, reboot, release) need the technician PIN (cfg "pin"), compared
# in constant time. _MAX_TRIES wrong PINs lock the console for _LOCKOUT_MS,
# each further lockout before a right PIN for twice as long, up to
# _LOCKOUT_MAX_MS (5, 10, 20 ... minutes, then a day: a few dozen guesses a
# day, not 1,440); tick differences. The failure and lockout counts are kept
# on flash, so a reboot does not reset them (a lockout in force at boot
# starts again in full).
#
# Wire it to the main loop:  con = Console(pile, uart2); pile.console = con
# (Pile.poll() then polls it), or call con.poll() from your own loop.
import json

from firmware import fsio
from firmware import session as S
from firmware.pile import BOOT_NAMES, FW_VERSION
from firmware.ticks import diff_of
from protocol import codec
from protocol.bill import split as split_payload
from protocol.fields import iso
from protocol import units

from protocol import const

_MAX_LINE = const(96)          # bytes of one command line; more is refused whole
_MAX_TRIES = const(5)          # wrong PINs before the lockout
_LOCKOUT_MS = const(300000)    # 5 minutes: the first lockout
_LOCKOUT_MAX_MS = const(86400000)   # a day: the longest
_UNLOCK_MS = const(600000)     # an unlocked console locks itself after 10 idle minutes
_READ = const(64)              # bytes taken from the UART per read
_BS = const(0x08)
_DEL = const(0x7F)
_CR = const(0x0D)
_LF = const(0x0A)
_ESC = const(0x1B)
_CTRL_C = const(0x03)

PROMPT = b"pile> "
PROTOCOL = "YKC V1.6"

# config keys: name -> (kind, lo, hi) ; kind "i" int in [lo, hi], "s" ASCII of
# at most hi chars. Everything else in cfg is read-only here.
_WRITABLE = {"period_ms": ("i", 100, 60000), "hmi_version": ("s", 0, 8)}
_READABLE = ("pile", "gun", "pile_type", "sw_version", "hmi_version", "period_ms",
             "journal_bytes")

_STATES = ("pending", "confirmed", "illegal")
_STATE_LABEL = {"pending": "unconfirmed", "confirmed": "unsettled", "illegal": "illegal"}
# 0xE4 results of a bill the platform refused (docs/platform.md)
_RESULTS = {1: "MAC", 2: "unsigned"}


class CommandError(Exception):
    """A command that cannot be done; the message is shown as "error: ..."."""


def _dec(v, places):
    # Integer units shown as decimals without floats: 123456, 4 -> "12.3456".
    return units.text(v, places) if isinstance(v, int) else str(v)


def _show(name, v):
    # How a bill / session field reads for a person (JSON keeps raw integers).
    return units.field_text(name, v, secs=True)


def _serial_arg(cmd, args):
    # The one argument of `bill` and `release`: a trade serial, 32 digits.
    if len(args) != 1:
        raise CommandError("usage: %s SERIAL (32 digits)" % cmd)
    serial = args[0]
    if len(serial) != 32 or not serial.isdigit():
        raise CommandError("trade serial must be 32 digits, got %r" % serial)
    return serial


def _result(res):
    # The platform's 0xE4 result as a technician reads it.
    if res is None:
        return "-"
    return "%d (%s)" % (res, _RESULTS.get(res, "refused"))


def _pairs(rows):
    # [(label, text)] -> aligned lines.
    w = 0
    for k, _ in rows:
        if len(k) > w:
            w = len(k)
    return ["%-*s  %s" % (w, k, v) for k, v in rows]


def _table(head, rows):
    w = [len(h) for h in head]
    for r in rows:
        for i in range(len(r)):
            if len(r[i]) > w[i]:
                w[i] = len(r[i])
    out = []
    for r in [head] + rows:
        out.append("  ".join(["%-*s" % (w[i], r[i]) for i in range(len(r))]).rstrip())
    return out


def _same(a, b):
    # Constant-time comparison: the time depends on len(b) only, never on
    # where the first difference is.
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    diff = len(a) ^ len(b)
    n = len(a)
    for i in range(len(b)):
        x = a[i] if i < n else 0
        diff |= x ^ b[i]
    return diff == 0


def _read_file(path):
    return fsio.read(fsio.OS, path)


def _write_file(path, data):
    fsio.save_atomic(fsio.OS, path, data)


def _remove(path):
    fsio.try_remove(fsio.OS, path)


class Console:
    """Console(pile, uart, clock=None). poll() reads what the UART has,
    runs complete lines and writes the answers; it never raises."""

    def __init__(self, pile, uart, clock=None):
        self.pile = pile
        self.uart = uart
        self.clock = clock or pile.clock
        self._diff = diff_of(self.clock)
        self._buf = bytearray(_MAX_LINE)
        self._n = 0
        self._over = False        # the current line passed _MAX_LINE
        self._esc = 0             # inside an escape sequence (arrow keys)
        self._last = 0            # previous byte (CR LF is one line end)
        self._unlocked = None     # ticks of the last command while unlocked
        self._locked_at = None    # ticks the lockout began
        self._lock_path = pile.root + "/console.pin"
        self._cfg_path = pile.root + "/console.cfg"
        raw = _read_file(self._lock_path)
        self._fails = 0
        self._lockouts = 0        # lockouts since the last right PIN
        if raw:
            try:
                parts = raw.split(b",")   # "fails" (older firmware) or "fails,lockouts"
                self._fails = int(parts[0])
                if len(parts) > 1:
                    self._lockouts = int(parts[1])
            except ValueError:
                self._fails = _MAX_TRIES  # unreadable: assume the worst
                self._lockouts = 1
        if self._fails >= _MAX_TRIES:
            self._locked_at = self.clock.ticks_ms()
            if self._lockouts < 1:
                self._lockouts = 1
        self._load_cfg()
        self.uart.write(b"\r\npile console (" + FW_VERSION.encode() + b"), 'help' lists commands\r\n"
                        + PROMPT)

    # --- input -------------------------------------------------------------------

    def poll(self):
        try:
            while True:
                data = self.uart.read(_READ)
                if not data:
                    return
                for b in data:
                    self._byte(b)
        except Exception as e:  # the console must never take the pile down
            self._w("\r\nerror: console: %s: %s\r\n" % (type(e).__name__, e))
            self._n = 0
            self._over = False

    def _byte(self, b):
        last = self._last
        self._last = b
        if self._esc:
            # ESC [ ... final letter: swallowed (arrow keys, function keys).
            if self._esc == 1 and b == 0x5B:
                self._esc = 2
            elif self._esc == 1 or 0x40 <= b <= 0x7E:
                self._esc = 0
            return
        if b == _CR or b == _LF:
            if b == _LF and last == _CR:
                return
            self._end_line()
        elif b == _BS or b == _DEL:
            if self._n and not self._over:
                self._n -= 1
                self.uart.write(b"\x08 \x08")
        elif b == _CTRL_C:
            self._n = 0
            self._over = False
            self.uart.write(b"^C\r\n" + PROMPT)
        elif b == _ESC:
            self._esc = 1
        elif 0x20 <= b < 0x7F:
            if self._n >= _MAX_LINE:
                self._over = True
            elif not self._over:
                self._buf[self._n] = b
                self._n += 1
                self.uart.write(bytes((b,)))

    def _end_line(self):
        self.uart.write(b"\r\n")
        if self._over:
            self._w("error: line longer than %d bytes, ignored\r\n" % _MAX_LINE)
        elif self._n:
            line = bytes(self._buf[:self._n]).decode()
            self.run(line)
        self._n = 0
        self._over = False
        self.uart.write(PROMPT)

    def _w(self, s):
        self.uart.write(s.encode())

    # --- commands ----------------------------------------------------------------

    def run(self, line):
        """Run one command line and write its answer (without the prompt)."""
        words = line.split()
        js = False
        if words and words[0] == "json":
            js = True
            words = words[1:]
        if not words:
            return
        name = words[0]
        fn = getattr(self, "cmd_" + name, None)
        try:
            if fn is None:
                raise CommandError("unknown command %r; 'help' lists commands" % name)
            data, lines = fn(words[1:])
        except CommandError as e:
            data, lines = {"error": str(e)}, ["error: " + str(e)]
        except Exception as e:
            msg = "%s: %s: %s" % (name, type(e).__name__, e)
            data, lines = {"error": msg}, ["error: " + msg]
        if js:
            self._w(json.dumps(data) + "\r\n")
        else:
            for s in lines:
                self._w(s + "\r\n")

    def cmd_help(self, args):
        cmds = (("status", "state, link, boot reason, journal and bill counts"),
                ("meter [GUN]", "energy register, power, voltage, current"),
                ("session [GUN]", "the running trade: serial, energy, amount, targets"),
                ("bills", "unconfirmed, unsettled, refused and illegal bills"),
                ("bill SERIAL", "every field of one bill"),
                ("tariff", "prices and half-hour slots"),
                ("versions", "firmware, screen (HMI) and protocol versions"),
                ("key", "the pile's OCMF public key, to register in the site config"),
                ("log", "recent events"),
                ("config get [KEY]", "settings (" + ", ".join(_READABLE) + ")"),
                ("config set KEY VALUE", "needs unlock; keys: " + ", ".join(sorted(_WRITABLE))),
                ("reboot now|idle", "needs unlock; 'now' seals a running bill first"),
                ("clock [set YYYY-MM-DD HH:MM:SS]", "the pile's time; set needs unlock"),
                ("release SERIAL", "needs unlock; a refused or illegal bill, resolved with the"
                 " operator, settled (its space may be reclaimed)"),
                ("unlock PIN / lock", "technician PIN for write commands"),
                ("json CMD", "the answer as one JSON line"))
        return {"commands": [c[0] for c in cmds]}, _pairs(cmds)

    def cmd_status(self, args):
        p = self.pile
        st = p.status_fields()
        d = {"pile": st["pile"], "state": S.STATE_NAMES[st["state"]],
             "online": bool(p.link.online), "boot_reason": BOOT_NAMES[st["boot_reason"]],
             "journal_used": st["journal_used"], "journal_limit": st["journal_limit"],
             "pending": st["pending"], "unsettled": st["unsettled"], "illegal": st["illegal"],
             "oldest_pending": st["oldest_pending"], "fw_version": st["fw_version"],
             "hmi_version": st["hmi_version"], "locked": self._locked_left() > 0,
             "unlocked": self._is_unlocked()}
        pct = d["journal_used"] * 100 // d["journal_limit"] if d["journal_limit"] else 0
        rows = [("pile", d["pile"]), ("state", d["state"]),
                ("link", "online" if d["online"] else "offline"),
                ("boot reason", d["boot_reason"]),
                ("journal", "%d / %d bytes (%d%%)" % (d["journal_used"], d["journal_limit"], pct)),
                ("unconfirmed", str(d["pending"])), ("unsettled", str(d["unsettled"])),
                ("illegal", str(d["illegal"])),
                ("oldest unconfirmed", d["oldest_pending"] or "-"),
                ("firmware", d["fw_version"]), ("hmi", d["hmi_version"] or "-")]
        if len(p.guns) > 1:
            # each gun's state and running trade (a single-gun pile's answer
            # is unchanged: its one state is the "state" above)
            d["guns"] = []
            for g in p.guns:
                tr = g.trade
                gd = {"gun": g.gun, "state": S.STATE_NAMES[g.state],
                      "serial": tr.h["serial"] if tr is not None else ""}
                d["guns"].append(gd)
                rows.append(("gun " + g.gun, gd["state"] + (" " + gd["serial"] if gd["serial"] else "")))
        return d, _pairs(rows)

    def _gun(self, args):
        # "session 02" / "meter 02": that gun; default gun 1
        if not args:
            return self.pile.gun
        g = self.pile.gun_named(args[0]) if len(self.pile.guns) > 1 or args[0] == "01" else None
        if g is None:
            raise CommandError("no gun %s on this pile" % args[0])
        return g

    def cmd_meter(self, args):
        m = self._gun(args).meter
        d = {}
        rows = []
        for key, fn, fmt in (("energy", "read_energy", "%s kWh"), ("power", "read_power", "%s W"),
                             ("voltage", "read_voltage", "%s V"),
                             ("current", "read_current", "%s A")):
            try:
                v = getattr(m, fn)()
                d[key] = v
                txt = fmt % (_dec(v, 4) if key == "energy" else
                             _dec(v, 1) if key in ("voltage", "current") else str(v))
            except Exception as e:
                d[key] = None
                d[key + "_error"] = "%s: %s" % (type(e).__name__, e)
                txt = "error: " + d[key + "_error"]
            rows.append((key, txt))
        return d, _pairs(rows)

    def cmd_session(self, args):
        g = self._gun(args)
        tr = g.trade
        d = {"state": S.STATE_NAMES[g.state], "active": tr is not None}
        if tr is None:
            last = g.bill["serial"] if g.bill else ""
            d["last_bill"] = last
            return d, _pairs((("state", d["state"]), ("session", "none"),
                              ("last bill", last or "-")))
        acc = tr.acc
        d.update({"serial": tr.h["serial"], "card": tr.h["card"],
                  "start_time": tr.h["start_time"], "meter_start": tr.h["meter_start"],
                  "energy": acc.total(), "amount": acc.amount(),
                  "minutes": self._diff(self.clock.ticks_ms(), tr.t0) // 60000
                  if g.state == S.CHARGING else 0,
                  "power": tr.p, "soc": g.vehicle.soc,
                  "target_amount": tr.amount_cap or 0, "target_energy": tr.energy_cap or 0,
                  "target_minutes": (tr.deadline or 0) // 60000,
                  "target_soc": tr.soc_target or 0, "balance": tr.balance_cap})
        rows = [("state", d["state"]), ("serial", d["serial"]), ("card", d["card"]),
                ("start", _show("start_time", d["start_time"])),
                ("energy", _show("energy", d["energy"])),
                ("amount", _show("amount", d["amount"])),
                ("minutes", str(d["minutes"])), ("power", "%d W" % d["power"]),
                ("soc", "%d %%" % d["soc"])]
        for k in ("target_amount", "target_energy", "target_minutes", "target_soc"):
            rows.append((k.replace("_", " "), _show(k, d[k]) if d[k] else "-"))
        rows.append(("balance", "-" if d["balance"] is None else _show("amount", d["balance"])))
        return d, _pairs(rows)

    def _decode(self, serial):
        raw = self.pile.journal.bill(serial)
        if raw is None:
            raise CommandError("no bill %s in the journal" % serial)
        body, extra = split_payload(raw)
        lay = codec.layout_for(0x3B, len(body))
        b = codec.decode_body(lay, body)
        x = codec.decode_body(codec.layout_named("bill_extra"), extra)
        return b, x, lay

    def _label(self, serial, st):
        # (state label, the platform's 0xE4 result or None): an illegal bill
        # with a result is one the platform refused
        res = self.pile.journal.platform_result(serial) if st == "illegal" else None
        return ("refused" if res is not None else _STATE_LABEL.get(st, st)), res

    def cmd_bills(self, args):
        j = self.pile.journal
        out = []
        rows = []
        for st in _STATES:
            for serial in j.each(st):
                label, res = self._label(serial, st)
                try:
                    b = self._decode(serial)[0]
                    r = {"serial": serial, "state": label,
                         "energy": b["total_energy"], "amount": b["total_amount"],
                         "stop_reason": b["stop_reason"], "end_time": b["end_time"]}
                except Exception as e:  # a damaged record is listed, not fatal
                    r = {"serial": serial, "state": label, "error": str(e)}
                if res is not None:
                    r["result"] = res
                out.append(r)
        for r in out:
            res = _result(r.get("result"))
            if "error" in r:
                rows.append([r["serial"], r["state"], "-", "-", "-", "error: " + r["error"], res])
            else:
                rows.append([r["serial"], r["state"], _dec(r["energy"], 4), _dec(r["amount"], 4),
                             units.stop_text(r["stop_reason"]), iso(r["end_time"]), res])
        lines = _table(["serial", "state", "kWh", "yuan", "stop", "ended", "result"], rows)
        lines.append("%d bill(s)" % len(out))
        return {"bills": out}, lines

    def cmd_bill(self, args):
        serial = _serial_arg("bill", args)
        b, x, lay = self._decode(serial)
        label, res = self._label(serial, self.pile.journal.status(serial))
        d = {"serial": serial, "state": label, "bill": b, "extra": x}
        rows = [("journal state", d["state"])]
        if res is not None:
            d["result"] = res
            rows.append(("platform result", _result(res)))
        for name, kind, size, off in lay.fields:
            rows.append((name, _show(name, b[name])))
        for name, kind, size, off in codec.layout_named("bill_extra").fields:
            if name != "serial":
                rows.append((name, _show(name, x[name])))
        return d, _pairs(rows)

    def cmd_tariff(self, args):
        t = self.pile.gun.tariff
        if t is None:
            raise CommandError("no tariff: none received from the platform yet")
        from firmware.tariff import CLASSES
        classes = []
        rows = [("model", t.model), ("loss ratio", "%d %%" % t.loss_ratio)]
        for c in range(t.n):
            classes.append({"class": CLASSES[c], "energy": t.energy[c], "service": t.service[c]})
            rows.append((CLASSES[c], "energy %s + service %s yuan/kWh"
                         % (_dec(t.energy[c], 5), _dec(t.service[c], 5))))
        spans = []
        i = 0
        while i < 48:
            k = i
            while k < 48 and t.slots[k] == t.slots[i]:
                k += 1
            spans.append(["%02d:%02d" % (i // 2, 30 * (i % 2)),
                          "%02d:%02d" % (k // 2, 30 * (k % 2)), CLASSES[t.slots[i]]])
            i = k
        for a, b, c in spans:
            rows.append(("%s-%s" % (a, b), c))
        return {"model": t.model, "loss_ratio": t.loss_ratio, "classes": classes,
                "slots": [t.slots[i] for i in range(48)], "spans": spans}, _pairs(rows)

    def cmd_versions(self, args):
        # what the pile reports on the wire (login sw_version, 0xE5): the
        # running slot's firmware after an upgrade, not cfg's factory version
        rem = self.pile.remote
        d = {"fw": rem.board_version(), "hmi": rem.hmi_version(), "protocol": PROTOCOL}
        return d, _pairs((("firmware", d["fw"]), ("hmi", d["hmi"] or "-"),
                          ("protocol", d["protocol"])))

    def cmd_key(self, args):
        # The OCMF public key (docs/ocmf.md) as the site config takes it
        # (pile.<code>.ocmf_key): DER SubjectPublicKeyInfo, hex. The private
        # key has no command: it never leaves the pile.
        o = self.pile.ocmf
        k = o.spki_hex() if o is not None else None
        if k is None:
            why = "OCMF signing is off (cfg ocmf)" if o is None else \
                "no key yet (being made, or no entropy source: see 'log')"
            return {"ocmf_key": None, "why": why}, ["ocmf key: none (%s)" % why]
        return {"ocmf_key": k, "algorithm": "ECDSA-secp256r1-SHA256"}, \
            ["ocmf key (P-256, DER hex; register as pile.%s.ocmf_key):" % self.pile.pile, k]

    def cmd_log(self, args):
        ev = [{"time": t, "kind": k, "detail": dt} for t, k, dt in self.pile.events]
        lines = ["%s  %s  %s" % (iso(e["time"]), e["kind"], e["detail"]) for e in ev]
        if not lines:
            lines = ["(no events since boot)"]
        return {"events": ev}, lines

    def cmd_config(self, args):
        cfg = self.pile.cfg
        if args and args[0] == "get":
            keys = args[1:] or list(_READABLE)
            d = {}
            for k in keys:
                if k not in _READABLE:
                    raise CommandError("unknown key %r; keys: %s" % (k, ", ".join(_READABLE)))
                d[k] = self._cfg_value(k)
            return d, _pairs([(k, str(d[k])) for k in keys])
        if len(args) == 3 and args[0] == "set":
            self._need_unlock()
            k, v = args[1], args[2]
            val = self._check(k, v)
            self._apply(k, val)
            self._save_cfg()
            self.pile.event("console_config", "%s=%s" % (k, val))
            return {"ok": True, k: val}, ["%s = %s (saved)" % (k, val)]
        raise CommandError("usage: config get [KEY] | config set KEY VALUE")

    def _cfg_value(self, k):
        v = self.pile.cfg.get(k)
        if v is None:
            if k == "sw_version":
                return FW_VERSION
            if k == "period_ms":
                return self.pile.gun.period_ms
            if k == "journal_bytes":
                return 65536
            return ""
        return v

    def _check(self, k, v):
        spec = _WRITABLE.get(k)
        if spec is None:
            raise CommandError("%r cannot be set here; settable: %s"
                               % (k, ", ".join(sorted(_WRITABLE))))
        kind, lo, hi = spec
        if kind == "i":
            try:
                n = int(v)
            except ValueError:
                raise CommandError("%s: %r is not an integer" % (k, v))
            if n < lo or n > hi:
                raise CommandError("%s: %d outside %d..%d" % (k, n, lo, hi))
            return n
        if len(v) > hi:
            raise CommandError("%s: at most %d characters" % (k, hi))
        return v

    def _apply(self, k, v):
        self.pile.cfg[k] = v
        if k == "period_ms":
            self.pile.gun.period_ms = v

    def _save_cfg(self):
        lines = []
        for k in sorted(_WRITABLE):
            if k in self.pile.cfg:
                lines.append("%s=%s" % (k, self.pile.cfg[k]))
        _write_file(self._cfg_path, ("\n".join(lines) + "\n").encode())

    def _load_cfg(self):
        raw = _read_file(self._cfg_path)
        if not raw:
            return
        for line in raw.decode().split("\n"):
            if "=" not in line:
                continue
            k, v = line.split("=", 1)
            try:
                self._apply(k, self._check(k, v))
            except CommandError as e:
                self.pile.event("console_config_refused", str(e))

    def cmd_clock(self, args):
        # 'clock': the pile's time. 'clock set YYYY-MM-DD HH:MM:SS' (needs
        # unlock): the technician's way back from a clock that ran ahead,
        # past the bound a time sync (0x56) may step it.
        if not args:
            return {"time": iso(self.clock.now())}, [iso(self.clock.now())]
        if args[0] != "set" or len(args) != 3:
            raise CommandError("usage: clock | clock set YYYY-MM-DD HH:MM:SS")
        try:
            d = [int(x) for x in args[1].split("-")]
            t = [int(x) for x in args[2].split(":")]
            if len(d) != 3 or len(t) != 3 or not (2000 <= d[0] <= 2099 and 1 <= d[1] <= 12
                                                  and 1 <= d[2] <= 31 and 0 <= t[0] < 24
                                                  and 0 <= t[1] < 60 and 0 <= t[2] < 60):
                raise ValueError
        except ValueError:
            raise CommandError("clock set: a date YYYY-MM-DD and a time HH:MM:SS (2000..2099)")
        self._need_unlock()
        from protocol.fields import to_secs
        secs = to_secs(d[0], d[1], d[2], t[0], t[1], t[2])
        if not self.pile.set_clock(secs, "console", force=True):
            raise CommandError("this pile's clock cannot be set")
        self.pile.event("console_clock_set", iso(secs))
        return {"ok": True, "time": iso(secs)}, ["clock set to " + iso(secs)]

    def cmd_reboot(self, args):
        if len(args) != 1 or args[0] not in ("now", "idle"):
            raise CommandError("usage: reboot now|idle")
        self._need_unlock()
        when = 1 if args[0] == "now" else 2
        if not self.pile.request_reboot(when, "console"):
            raise CommandError("reboot not possible: this pile has no reset hook")
        msg = ("rebooting; a running session is stopped and billed first" if when == 1
               else "will reboot when no session is running")
        return {"ok": True, "when": args[0]}, [msg]

    def cmd_release(self, args):
        # After the case of a refused (0xE4 result) or illegal (0x40) bill was
        # resolved with the operator: settled, so compaction may reclaim it.
        # Only those: a pending or unsettled bill is still on its way.
        serial = _serial_arg("release", args)
        self._need_unlock()
        j = self.pile.journal
        st = j.status(serial)
        if st != "illegal":
            raise CommandError("bill %s is %s: only refused or illegal bills are released"
                               % (serial, _STATE_LABEL.get(st, st) if st else "not in the journal"))
        label, res = self._label(serial, st)
        r = j.settle(serial)
        if r != "ok":
            raise CommandError("release %s: journal says %s" % (serial, r))
        self.pile.event("console_release", "%s %s result %s"
                        % (serial, label, "-" if res is None else res))
        return ({"ok": True, "serial": serial, "state": label, "result": res},
                ["released %s (%s, platform result %s): settled, its space may be reclaimed"
                 % (serial, label, _result(res))])

    # --- PIN -------------------------------------------------------------------------

    def _lockout_ms(self):
        ms = _LOCKOUT_MS
        n = 1
        while n < self._lockouts and ms < _LOCKOUT_MAX_MS:
            ms *= 2
            n += 1
        return ms if ms < _LOCKOUT_MAX_MS else _LOCKOUT_MAX_MS

    def _save_fails(self):
        _write_file(self._lock_path, ("%d,%d" % (self._fails, self._lockouts)).encode())

    def _locked_left(self):
        if self._locked_at is None:
            return 0
        left = self._lockout_ms() - self._diff(self.clock.ticks_ms(), self._locked_at)
        if left <= 0:
            # Over: another _MAX_TRIES tries; the lockout count stays until
            # a right PIN, so the next lockout is longer.
            self._locked_at = None
            self._fails = 0
            self._save_fails()
            return 0
        return left

    def _is_unlocked(self):
        u = self._unlocked
        if u is None:
            return False
        if self._diff(self.clock.ticks_ms(), u) >= _UNLOCK_MS:
            self._unlocked = None
            return False
        return True

    def _need_unlock(self):
        if not self._is_unlocked():
            raise CommandError("locked: 'unlock PIN' first (technician PIN)")
        self._unlocked = self.clock.ticks_ms()

    def cmd_unlock(self, args):
        if len(args) != 1:
            raise CommandError("usage: unlock PIN")
        left = self._locked_left()
        if left:
            raise CommandError("locked out after %d wrong PINs: try again in %d s"
                               % (_MAX_TRIES, (left + 999) // 1000))
        pin = self.pile.cfg.get("pin")
        if not pin:
            raise CommandError("no technician PIN configured on this pile (cfg 'pin')")
        if _same(args[0], str(pin)):
            self._fails = 0
            self._lockouts = 0
            _remove(self._lock_path)
            self._unlocked = self.clock.ticks_ms()
            self.pile.event("console_unlocked", "")
            return {"ok": True}, ["unlocked (locks again after %d idle minutes or 'lock')"
                                  % (_UNLOCK_MS // 60000)]
        self._fails += 1
        self._unlocked = None
        if self._fails >= _MAX_TRIES:
            self._lockouts += 1
            self._save_fails()
            self._locked_at = self.clock.ticks_ms()
            self.pile.event("console_lockout", "%d wrong PINs, lockout %d" % (self._fails, self._lockouts))
            raise CommandError("wrong PIN; locked out for %d minutes" % (self._lockout_ms() // 60000))
        self._save_fails()
        self.pile.event("console_bad_pin", str(self._fails))
        raise CommandError("wrong PIN (%d of %d tries left)" % (_MAX_TRIES - self._fails,
                                                                _MAX_TRIES))

    def cmd_lock(self, args):
        self._unlocked = None
        return {"ok": True}, ["locked"]
