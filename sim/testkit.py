# A scripted YKC pile for tests and benchmarks of the bridge, built on
# protocol.codec, over any byte transport of sim/links.py (TCP, a pty, paced
# at a serial line's rate: open_transport(url)).
#
# The pile's interface is what the bridge tests use, so the real firmware
# (firmware/pile.py) can stand in for it behind the same methods:
#   await pile.start(); await pile.login()
#   await pile.send_bill(values[, extra]) -> 0x40 result   (the pile's journal
#       keeps it until 0x40; pile.flush_journal() resends, like our firmware)
#   pile.confirmed {serial: [0x40 results]}, pile.settled {serial: result}
#   await pile.wait_for(predicate, timeout)
# It answers what a pile answers (0x55, 0xE3, 0x33, 0x35, 0x91, 0x57, 0xE5,
# 0x13) unless told to stay silent for a frame name.
import asyncio
import collections
import time

from protocol import codec
from protocol import fields as F
from protocol.fields import PERIODS
from protocol.router import on, reply


async def poll(pred, changed, timeout):
    """pred()'s value once truthy, re-checked each time the event changed()
    returns (replaced on every change) is set; its last falsy value after
    timeout s. The test kit's piles and platforms wait with it."""
    deadline = time.monotonic() + timeout
    while True:
        ev = changed()
        r = pred()
        if r:
            return r
        left = deadline - time.monotonic()
        if left <= 0:
            return r
        try:
            await asyncio.wait_for(ev.wait(), left)
        except asyncio.TimeoutError:
            pass


def make_bill(pile, n, gun="01", energy=123456, price=120000, stop_reason=0x40,
              when=None, vin="LSVAU2180N2183294"):
    """A sound 4-period bill (periods sum to the totals, meter delta = energy)
    with a unique trade serial built like YKC's: pile + gun + time + counter."""
    when = F.to_secs(2024, 5, 1, 8, 0, 0) if when is None else when
    y, mo, d, h, mi, s, _ = F.to_civil(when)
    serial = "%s%s%02d%02d%02d%02d%02d%02d%04d" % (pile, gun, y % 100, mo, d, h, mi, s, n % 10000)
    v = {"serial": serial, "pile": pile, "gun": gun, "start_time": when,
         "end_time": when + 3600, "meter_start": 1000000 + n * 1000,
         "total_energy": energy, "total_loss": 0, "total_amount": 0, "vin": vin,
         "trade_flag": 1, "trade_time": when + 3605, "stop_reason": stop_reason,
         "card": "00000000D14B0A54"}
    v["meter_stop"] = v["meter_start"] + energy
    share = energy // 4
    for i, p in enumerate(PERIODS):
        e = energy - 3 * share if i == 0 else share
        v[p + "_price"] = price
        v[p + "_energy"] = e
        v[p + "_loss"] = 0
        v[p + "_amount"] = e * price // 10 ** 5
        v["total_amount"] += v[p + "_amount"]
    return v


def make_extra(bill, service_share=30):
    """The 0xEB for `bill`: each period's amount split into energy and
    service fee (service_share %), summing exactly."""
    x = {"serial": bill["serial"], "model": "0001", "vin_mismatch": 0, "nameplate_vin": bill["vin"],
         "mac": "00" * 32, "deep_energy_fee": 0, "deep_service_fee": 0}
    for p in PERIODS:
        amt = bill[p + "_amount"]
        svc = amt * service_share // 100
        x[p + "_service_fee"] = svc
        x[p + "_energy_fee"] = amt - svc
    return x


# What the scripted pile does with each frame from the bridge
# (ScriptedPile methods registered with @on; protocol/router.py).
HANDLERS = {}


class ScriptedPile:
    def __init__(self, code, transport=None, *, ext=True, swap_crc=False, guns=1,
                 sw_version="PC-0.1", heartbeat_s=None, reply_timeout=5.0,
                 status_frame="status_reply"):
        self.code = code
        self.ext = ext
        self.swap_crc = swap_crc
        self.guns = guns
        self.sw_version = sw_version
        self.heartbeat_s = heartbeat_s
        self.reply_timeout = reply_timeout
        self.transport = None
        self.reader = None
        self.frames = []                      # every frame received, in order
        self.confirmed = collections.defaultdict(list)   # serial -> [0x40 results]
        self.settled = {}                     # serial -> 0xE4 result
        self.settled_count = collections.Counter()
        self.journal = collections.OrderedDict()   # serial -> (bill, extra) until answered
        self.extra_acked = collections.Counter()     # serial -> 0xEC received
        self._bill_done = set()                      # serials with a 0x40
        self._extra_done = set()                     # serials with a 0xEC
        self.silent = set()                   # frame names not to answer
        self.vins = []                        # VIN records received (0xEE)
        self.start_result = (1, 0)
        self.stop_result = (1, 0)
        self.status = {"state": 0, "boot_reason": 0, "fw_version": "209.04.0", "hmi_version": "103"}
        # "status_reply55": answer 0xE5 as firmware from before refusing_starts did
        self.status_frame = status_frame
        self._seq = 0
        self._tasks = []
        self._changed = asyncio.Event()
        self.logged_in = False
        self.connected = False
        if transport is not None:
            self.attach(transport)

    # --- transport ------------------------------------------------------------------

    def attach(self, transport):
        """Use `transport` (a new TCP connection after a drop, say)."""
        self.transport = transport
        self.reader = codec.FrameReader(tolerant=False)
        self.logged_in = False
        self.connected = True
        self._tasks.append(asyncio.ensure_future(self._read_loop(transport)))
        if self.heartbeat_s:
            self._tasks.append(asyncio.ensure_future(self._heartbeats(transport)))

    async def close(self):
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.transport is not None:
            await self.transport.close()
        self.connected = False

    async def _read_loop(self, transport):
        while True:
            data = await transport.read()
            if not data:
                break
            for f in self.reader.push(data):
                if isinstance(f, Exception):
                    continue
                await self._on_frame(f)
        if transport is self.transport:
            self.connected = False
            self.logged_in = False
            self._notify()

    async def _heartbeats(self, transport):
        while transport is self.transport:
            await asyncio.sleep(self.heartbeat_s)
            if self.logged_in:
                try:
                    await self.heartbeat()
                except (ConnectionError, OSError):
                    return

    def _notify(self):
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, pred, timeout=5.0):
        """Wait until pred() is truthy (re-checked on every frame); returns it."""
        r = await poll(pred, lambda: self._changed, timeout)
        if not r:
            raise asyncio.TimeoutError("pile %s: condition not met in %g s" % (self.code, timeout))
        return r

    # --- sending ---------------------------------------------------------------------

    def next_seq(self):
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def send(self, name, values, seq=None):
        seq = self.next_seq() if seq is None else seq
        raw = codec.encode(name, values, seq)
        if self.swap_crc:
            raw = raw[:-2] + bytes((raw[-1], raw[-2]))
        if self.transport is None or not self.connected:
            raise ConnectionError("pile %s: not connected" % self.code)
        await self.transport.write(raw)
        return seq

    async def request(self, name, values, reply, timeout=None):
        n = len(self.frames)
        await self.send(name, values)
        f = await self.wait_for(lambda: next((x for x in self.frames[n:] if x.name == reply), None),
                                self.reply_timeout if timeout is None else timeout)
        return f

    async def login(self, timeout=None):
        f = await self.request("login", {
            "pile": self.code, "pile_type": 0, "guns": self.guns, "proto_version": 0x10,
            "sw_version": self.sw_version, "net_type": 0, "sim": "0" * 20, "carrier": 0},
            "login_reply", timeout)
        self.logged_in = f.fields["result"] == 0
        return f.fields["result"]

    async def heartbeat(self, gun="01"):
        await self.send("heartbeat", {"pile": self.code, "gun": gun, "gun_status": 0})

    async def realtime(self, gun="01", status=2, serial="0" * 32, energy=0, amount=0, faults=0, seq=None):
        await self.send("realtime", self._realtime_values(gun, status, serial, energy, amount, faults), seq)

    def _realtime_values(self, gun, status, serial="0" * 32, energy=0, amount=0, faults=0):
        return {"serial": serial, "pile": self.code, "gun": gun, "status": status, "homed": 0,
                "plugged": 1, "voltage": 3800, "current": 1200, "gun_temp": 75,
                "cable_code": "0" * 16, "soc": 55, "battery_temp": 75, "minutes": 10,
                "minutes_left": 30, "energy": energy, "loss_energy": 0, "amount": amount,
                "faults": faults}

    async def send_bill(self, values, extra=None, timeout=None):
        """Journal the bill, send it (and its 0xEB), wait for its 0x40 (and
        the 0xEC for the 0xEB). Returns the 0x40 result; raises
        asyncio.TimeoutError if the answers do not come. The bill leaves the
        journal once both answers came, as in our firmware."""
        serial = values["serial"]
        if not self.ext:
            extra = None
        self.journal.setdefault(serial, (values, extra))
        t = self.reply_timeout if timeout is None else timeout
        need_bill = serial not in self._bill_done
        need_extra = extra is not None and serial not in self._extra_done
        n = len(self.confirmed[serial])
        m = self.extra_acked[serial]
        if need_bill:
            await self.send(0x3B, values)     # by code: 4 or 5 periods by the fields
        if need_extra:
            await self.send("bill_extra", extra)
        if need_bill:
            await self.wait_for(lambda: len(self.confirmed[serial]) > n, t)
        if need_extra:
            await self.wait_for(lambda: self.extra_acked[serial] > m, t)
        self.journal.pop(serial, None)
        return self.confirmed[serial][-1]

    async def resend_bill(self, values):
        """Send a bill again regardless of the journal (a pile that lost
        track of its 0x40); returns the new 0x40 result."""
        serial = values["serial"]
        n = len(self.confirmed[serial])
        await self.send(0x3B, values)
        await self.wait_for(lambda: len(self.confirmed[serial]) > n, self.reply_timeout)
        return self.confirmed[serial][-1]

    async def flush_journal(self, timeout=None):
        """Send again, in order, every journaled bill (or 0xEB) not yet answered."""
        for serial, (values, extra) in list(self.journal.items()):
            if serial in self.journal:
                await self.send_bill(values, extra, timeout)

    # --- receiving ------------------------------------------------------------------------

    async def _on_frame(self, f):
        # protocol/router.py: each frame to its handler below; reply() names
        # the answer (the table's reply column) and echoes the sequence. A
        # name in `silent` is neither acted on nor answered (frames nothing
        # answers, 0x40 and 0xEC, are always taken).
        self.frames.append(f)
        h = HANDLERS.get(f.code)
        if h is not None and not (f.name in self.silent and reply(f, {}) is not None):
            try:
                r = reply(f, await h(self, f))
                if r is not None:
                    await self.send(r[0], r[1], r[2])
            except (ConnectionError, OSError):
                pass
        self._notify()

    @on(HANDLERS, 0x40)
    async def _bill_confirm(self, f):
        v = f.fields
        self.confirmed[v["serial"]].append(v["result"])
        self._bill_done.add(v["serial"])

    @on(HANDLERS, 0xEC)
    async def _bill_extra_ack(self, f):
        self.extra_acked[f.fields["serial"]] += 1
        self._extra_done.add(f.fields["serial"])

    @on(HANDLERS, 0xE4)
    async def _settled(self, f):
        v = f.fields
        self.settled[v["serial"]] = v["result"]
        self.settled_count[v["serial"]] += 1
        return {"serial": v["serial"], "result": 0}

    @on(HANDLERS, 0x56)
    async def _time_sync(self, f):
        return {"pile": self.code, "time": f.fields["time"]}

    @on(HANDLERS, 0x34, 0xE2)
    async def _remote_start(self, f):
        r, why = self.start_result
        return {"serial": f.fields["serial"], "pile": self.code, "gun": f.fields["gun"],
                "result": r, "reason": why}

    @on(HANDLERS, 0x36)
    async def _remote_stop(self, f):
        r, why = self.stop_result
        return {"pile": self.code, "gun": f.fields["gun"], "result": r, "reason": why}

    @on(HANDLERS, 0x92)
    async def _reboot(self, f):
        return {"pile": self.code, "result": 1}

    @on(HANDLERS, 0x58)
    async def _tariff_set(self, f):
        return {"pile": self.code, "result": 1}

    @on(HANDLERS, 0xE6)
    async def _status_query(self, f):
        s = self.status
        v = {"pile": self.code, "pending": len(self.journal), "unsettled": 0, "illegal": 0,
             "journal_used": s.get("journal_used", 0), "journal_limit": 65536,
             "oldest_pending": next(iter(self.journal), "0" * 32), "state": s["state"],
             "boot_reason": s["boot_reason"], "fw_version": s["fw_version"],
             "hmi_version": s["hmi_version"]}
        if self.status_frame == "status_reply":
            v["refusing_starts"] = s.get("refusing_starts", 0)
        return v    # without refusing_starts the codec takes the 55-byte layout

    @on(HANDLERS, 0xEE)
    async def _vin_list(self, f):
        v = f.fields
        self.vins.extend(codec.unpack_records("vin_list", "records", v["records"]))
        return {"version": v["version"], "result": 0, "stored": len(self.vins)}

    @on(HANDLERS, 0x12)
    async def _read_realtime(self, f):
        return self._realtime_values(f.fields["gun"], 2)

    def received(self, name):
        return [f for f in self.frames if f.name == name]


# --- a third-party pile ------------------------------------------------------------------

# What a vendor pile (not ours) sends, bill by bill: the corpus the live test
# (tests/test_third_party_live.py) and pile-chaos use. Each entry's
# `expect` is the problem classes the bridge and the platform must both name.
THIRD_PARTY_VARIANTS = ("sound_gun1", "sound_gun2", "meter_zero", "no_segments", "bill156",
                        "bill17", "bill5", "padded_blank_time", "not_bcd_gun", "extra_bytes",
                        "undecodable", "bad_crc")


def _put(body, layout, field, raw):
    at = dict((f[0], f[3]) for f in codec.layout_named(layout).fields)[field]
    body[at:at + len(raw)] = raw


def third_party_bill(pile, n, variant):
    """One third-party bill: {"variant", "code", "body" (bytes), "serial"
    (as the bridge keys it: the body's first 16 bytes in hex), "expect"
    (problem classes), "bad_crc" (bool)}. n makes the serial unique."""
    gun = "02" if variant == "sound_gun2" else "01"
    v = make_bill(pile, n, gun=gun)
    code, layout, expect = 0x3B, "bill", []
    if variant == "meter_zero":            # the vendor's meter 0 -> 0
        v["meter_start"] = v["meter_stop"] = 0
        expect = ["meter_absent"]
    elif variant == "no_segments":         # total energy, no period energy
        for p in PERIODS:
            v[p + "_energy"] = 0
        expect = ["segments_missing"]
    elif variant == "bill156":
        layout = "bill156"
    elif variant == "bill17":
        code, layout = 0x3D, "bill17"
        v.update({"meter_no": "000000012345", "meter_cipher": "5A" * 34, "meter_proto": 0x0100,
                  "meter_enc": 0})
    elif variant == "bill5":
        layout = "bill5"
        for k in ("price", "energy", "loss", "amount"):
            v["deep_" + k] = 0
    body = bytearray(codec.encode_body(codec.layout_named(layout), v))
    if variant == "padded_blank_time":     # VIN padded with FF and spaces, no trade time
        _put(body, "bill", "vin", b"LSVAU2180N" + b"\xff" * 4 + b"   ")
        _put(body, "bill", "trade_time", b"\xff" * 7)
        expect = ["time_blank"]
    elif variant == "not_bcd_gun":
        body[23] = 0x0A
        expect = ["not_bcd"]
    elif variant == "extra_bytes":
        body += b"\x00\x00\x00\x01"
        expect = ["extra_bytes"]
    elif variant == "undecodable":         # end time in month 13: no reading gives way on it
        body[16 + 7 + 1 + 7 + 5] = 13
        expect = ["undecodable"]
    return {"variant": variant, "code": code, "body": bytes(body),
            "serial": F.hex_decode(body, 0, 16), "expect": expect, "bad_crc": variant == "bad_crc"}


def third_party_corpus(pile, start=1, variants=THIRD_PARTY_VARIANTS):
    return [third_party_bill(pile, start + i, var) for i, var in enumerate(variants)]


class ThirdPartyPile(ScriptedPile):
    """A vendor pile, as the field has them (issue 12 item 6): a hex SIM
    (ICCID with A-F) in its login, protocol version byte 0x0F (V1.5), two
    guns, every frame with its CRC byte-swapped, no extension frames, and
    YKC's resend rule: a bill with no 0x40 after `resend_s` is sent again,
    at most `resends` times (3), then given up (`given_up`): the way bills
    get lost. `send_raw_bill` takes any of third_party_bill()'s entries,
    including bodies our encoder would refuse; a `bad_crc` one goes out with
    a CRC that is wrong in either byte order."""

    SIM = "89860A1B2C3D4E5F6071"

    def __init__(self, code, transport=None, *, resend_s=30.0, resends=3, **kw):
        kw.setdefault("guns", 2)
        kw.setdefault("sw_version", "V3.2.1  ")
        super().__init__(code, transport, ext=False, swap_crc=True, **kw)
        self.resend_s = resend_s
        self.resends = resends
        self.sent = collections.Counter()     # serial -> times sent
        self.frame_sent = {}                  # serial -> the frame's bytes, as sent
        self.given_up = []                    # serials dropped after the last resend

    def attach(self, transport):
        super().attach(transport)
        # A 0x40 for a serial that is not BCD echoes its bytes: read leniently.
        self.reader = codec.FrameReader(tolerant=True, lenient=True)

    async def login(self, timeout=None):
        f = await self.request("login", {
            "pile": self.code, "pile_type": 0, "guns": self.guns, "proto_version": 0x0F,
            "sw_version": self.sw_version, "net_type": 0, "sim": self.SIM, "carrier": 4},
            "login_reply", timeout)
        self.logged_in = f.fields["result"] == 0
        return f.fields["result"]

    def frame_of(self, bill, seq):
        raw = codec.wrap(bill["code"], bill["body"], seq)
        if bill["bad_crc"]:
            return raw[:-2] + bytes((raw[-2] ^ 0x5A, raw[-1] ^ 0xA5))
        return raw[:-2] + bytes((raw[-1], raw[-2]))      # the vendor's byte order

    async def send_raw_bill(self, bill):
        """Send a bill YKC's way; True when a 0x40 came, False when given up."""
        serial = bill["serial"]
        n = len(self.confirmed[serial])
        seq = self.next_seq()
        raw = self.frame_of(bill, seq)
        self.frame_sent[serial] = raw
        for _ in range(1 + self.resends):
            self.sent[serial] += 1
            await self.transport.write(raw)
            try:
                await self.wait_for(lambda: len(self.confirmed[serial]) > n, self.resend_s)
                return True
            except asyncio.TimeoutError:
                continue
        self.given_up.append(serial)
        return False
