# Raw-first custody (issue 12 item 1, shared/context/decisions.md "Custody and
# ownership"): every bill frame with a good CRC is kept as raw bytes before
# anything else. A bill of the link's own pile that we cannot decode is
# taken into custody like any other (stored, 0x40, published decoded=false,
# confirmed by the platform); a copy from a link with no login or naming
# another pile is quarantined: stored with its reason, an event, no 0x40.
# Real bridge (in this process), Mosquitto, a raw TCP pile.
import asyncio

from sim.testkit import make_bill, make_extra
from protocol import codec
from protocol.codec import FrameReader
from tests.test_bridge_helpers import (
    PILE_A, PILE_B, bridge_and_platform, db_rows, in_tempdir, until)

_LOGIN = {"pile_type": 0, "guns": 1, "proto_version": 0x10, "sw_version": "V1.5",
          "net_type": 3, "sim": "0" * 20, "carrier": 4}


class RawPile:
    """A third-party pile reduced to bytes: it writes frames as given and
    reads whatever comes back, decodable or not."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.frames = FrameReader()
        self.got = []                       # Frame, or FrameError (with .frame when CRC good)
        self._task = asyncio.ensure_future(self._read())
        self._changed = asyncio.Event()

    @classmethod
    async def connect(cls, port, login=None):
        """Connected to the bridge's TCP `port`; logged in as pile `login` if given."""
        r, w = await asyncio.open_connection("127.0.0.1", port)
        p = cls(r, w)
        if login is not None:
            await p.login(login)
        return p

    async def _read(self):
        while True:
            data = await self.r.read(4096)
            if not data:
                return
            self.got.extend(self.frames.push(data))
            self._changed.set()

    async def write(self, raw):
        self.w.write(raw)
        await self.w.drain()

    async def login(self, code):
        await self.write(codec.encode("login", dict(_LOGIN, pile=code), 1))
        await self.wait(lambda: self.named("login_reply"))

    def named(self, name):
        return [f for f in self.got if isinstance(f, codec.Frame) and f.name == name]

    def confirms(self):
        """(serial bytes, result) of every 0x40 received, decodable or not."""
        out = []
        for f in self.got:
            f = getattr(f, "frame", f)
            if isinstance(f, codec.Frame) and f.code == 0x40:
                out.append((bytes(f.body[:16]), f.body[16]))
        return out

    async def wait(self, pred, timeout=10):
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():
            self._changed.clear()
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, "timed out"
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def close(self):
        self._task.cancel()
        self.w.close()


async def _events(plat, kind, n):
    """The platform's events of `kind`, once there are exactly n of them."""
    def got():
        ev = [e for e in plat.events if e["type"] == kind]
        return ev if len(ev) == n else None
    return await plat.wait_for(got)


def _bill_frame(v, seq):
    return codec.encode("bill", v, seq)


def _not_bcd(raw):
    """The frame with its serial's last byte made 0xAB (not BCD), CRC right."""
    body = bytearray(raw[6:-2])
    body[15] = 0xAB
    return codec.wrap(raw[5], body, raw[2] | raw[3] << 8)


def _bad_month(raw):
    """The frame with its end time's month made 13 (no valid CP56), CRC right."""
    body = bytearray(raw[6:-2])
    body[16 + 7 + 1 + 7 + 5] = 13
    return codec.wrap(raw[5], body, raw[2] | raw[3] << 8)


def test_bills_we_cannot_decode_are_kept_raw_published_and_confirmed(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto,
                                       tcp={"listen": "127.0.0.1:0", "ext": False}) as (cfg, b, plat):
            p = await RawPile.connect(b.tcp_port, login=PILE_A)
            # Read leniently, with their problems named (protocol/lenient.py):
            # 1. a serial that is not BCD; 2. two bytes more than the table's
            # 158. Not readable at all: 3. a 0x3D shorter than V1.7's 201
            # bytes; 4. an end time in month 13. Each has a good CRC.
            one = _not_bcd(_bill_frame(make_bill(PILE_A, 1), 11))
            two_body = _bill_frame(make_bill(PILE_A, 2), 12)[6:-2] + b"\x01\x02"
            two = codec.wrap(0x3B, two_body, 12)
            three = codec.wrap(0x3D, _bill_frame(make_bill(PILE_A, 3), 13)[6:-2] + b"\x00" * 8, 13)
            four = _bad_month(_bill_frame(make_bill(PILE_A, 4), 14))
            frames = (one, two, three, four)
            for raw in frames:
                await p.write(raw)
            await p.wait(lambda: len(p.confirms()) == 4)
            serials = [raw[6:22] for raw in frames]
            assert p.confirms() == [(s, 0) for s in serials]
            hexserials = [s.hex().upper() for s in serials]
            docs = await plat.wait_for(lambda: [plat.bills.get(s) for s in hexserials]
                                       if all(s in plat.bills for s in hexserials) else None)
            for doc, raw in zip(docs, frames):
                assert doc["frame"] == raw.hex().upper()
                assert doc["pile"] == PILE_A and doc["checks"]["ok"] is False
            assert docs[0]["decoded"] is True and docs[0]["serial"] == hexserials[0]
            assert docs[0]["checks"]["problems"] == ["not_bcd: serial %s" % hexserials[0]]
            assert docs[1]["decoded"] is True and docs[1]["raw"]["tail"] == "0102"
            assert docs[1]["decode_problems"] == [
                "extra_bytes: 2 byte(s) past the 158-byte bill layout, kept in tail"]
            for doc in docs[2:]:
                assert doc["decoded"] is False and doc["raw"] is None and doc["error"]
                assert doc["checks"]["problems"] == ["undecodable: %s" % doc["error"]]
            ev = await _events(plat, "undecodable_bill", 2)
            assert sorted(e["serial"] for e in ev) == sorted(hexserials[2:])
            # Stored as received, and confirmed by the platform.
            await until(lambda: db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE "
                                      "confirmed_at IS NOT NULL")[0][0] == 4, what="4 confirmed")
            stored = db_rows(cfg["database"], "SELECT serial, frame FROM bills ORDER BY id")
            assert [(s, bytes(f)) for s, f in stored] == list(zip(hexserials, frames))
            # A bill that decodes still takes the normal path beside them.
            good = make_bill(PILE_A, 5)
            await p.write(_bill_frame(good, 15))
            doc = await plat.wait_for(lambda: plat.bills.get(good["serial"]))
            assert doc["decoded"] is True and doc["checks"]["ok"]
            await p.close()
    in_tempdir("undecodable", scenario)


def test_bills_from_no_login_or_for_another_pile_are_quarantined_never_acknowledged(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto) as (cfg, b, plat):
            # A bill on a link that never logged in.
            stranger = await RawPile.connect(b.tcp_port)
            early = make_bill(PILE_B, 1)
            early_raw = _bill_frame(early, 3)
            await stranger.write(early_raw)
            # A logged-in pile sending another pile's bill (decodable, and not).
            p = await RawPile.connect(b.tcp_port, login=PILE_A)
            foreign = make_bill(PILE_B, 2)
            foreign_raw = _bill_frame(foreign, 4)
            await p.write(foreign_raw)
            foreign_bad = _not_bcd(_bill_frame(make_bill(PILE_B, 3), 5))
            await p.write(foreign_bad)
            ev = await _events(plat, "bill_quarantined", 3)
            assert {e["frame"] for e in ev} == {r.hex().upper() for r in (early_raw, foreign_raw, foreign_bad)}
            assert any("no login" in e["message"] for e in ev)
            assert sum("names pile %s but came from pile %s" % (PILE_B, PILE_A) in e["message"]
                       for e in ev) == 2
            rows = db_rows(cfg["database"], "SELECT kind, frame FROM rejected ORDER BY id")
            assert sorted(bytes(f) for k, f in rows if k == "quarantine") == \
                sorted((early_raw, foreign_raw, foreign_bad))
            # No 0x40 to anyone, nothing published as a bill, nothing in custody.
            good = make_bill(PILE_A, 9)
            await p.write(_bill_frame(good, 6))
            await plat.wait_for(lambda: plat.bills.get(good["serial"]))
            assert [c for c in p.confirms() if c[0] != bytes.fromhex(good["serial"])] == []
            assert stranger.confirms() == []
            assert set(plat.bills) == {good["serial"]}
            assert db_rows(cfg["database"], "SELECT serial FROM bills") == [(good["serial"],)]
            # The true pile sends its bill after its login: the normal path.
            await stranger.login(PILE_B)
            await stranger.write(early_raw)
            await stranger.write(codec.encode("bill_extra", make_extra(early), 7))
            doc = await plat.wait_for(lambda: plat.bills.get(early["serial"]))
            assert doc["decoded"] is True and doc["pile"] == PILE_B
            assert stranger.confirms() == [(bytes.fromhex(early["serial"]), 0)]
            await p.close()
            await stranger.close()
    in_tempdir("quarantine", scenario)


def test_a_pile_whose_login_carries_a_hex_iccid_logs_in_and_its_bill_goes_through(mosquitto):
    # Real piles (JCPP class) send the SIM's ICCID as 20 hex digits, A-F
    # included; the table declared it BCD, the login was refused and every
    # later frame ignored ("bill before login ignored"). It is hex now.
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto,
                                       tcp={"listen": "127.0.0.1:0", "ext": False}) as (cfg, b, plat):
            p = await RawPile.connect(b.tcp_port)
            login = codec.encode("login", dict(_LOGIN, pile=PILE_A, sim="89860B1F2C3D4E5F6A7B"), 1)
            await p.write(login)
            await p.wait(lambda: p.named("login_reply"))
            assert p.named("login_reply")[0].fields["result"] == 0
            bill = make_bill(PILE_A, 1)
            await p.write(_bill_frame(bill, 2))
            doc = await plat.wait_for(lambda: plat.bills.get(bill["serial"]))
            assert doc["decoded"] is True
            assert p.confirms() == [(bytes.fromhex(bill["serial"]), 0)]
            await p.close()
    in_tempdir("iccid", scenario)


def test_frames_with_a_bad_crc_are_kept_for_diagnosis_with_an_event(mosquitto):
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto) as (cfg, b, plat):
            p = await RawPile.connect(b.tcp_port, login=PILE_A)
            bill = make_bill(PILE_A, 1)
            raw = bytearray(_bill_frame(bill, 2))
            raw[-1] ^= 0x5A                              # the CRC no longer matches
            await p.write(bytes(raw))
            ev = await plat.wait_for(lambda: [e for e in plat.events if e["type"] == "bad_frames"])
            assert ev[0]["frame"] == bytes(raw).hex().upper() and ev[0]["count"] == 1
            rows, drops = await b.store.bad_frames()
            # The frame as received first; after it, any 0x68 inside it the
            # reader tried as a start (a bad CRC makes the boundary doubtful).
            assert (rows[0][1], rows[0][2]) == (PILE_A, bytes(raw)) and drops == {}
            assert all(r[2] in bytes(raw) for r in rows)
            assert p.confirms() == [] and bill["serial"] not in plat.bills   # no 0x40, no bill
            await p.close()
    in_tempdir("badcrc", scenario)


def test_a_fee_split_for_another_piles_bill_is_quarantined_never_joined_to_it(mosquitto):
    # Issue 17: the fee split (0xEB) had no owner check: any logged-in pile
    # could complete (or pre-empt) another pile's bill with its own split.
    async def scenario(tmp):
        async with bridge_and_platform(tmp, mosquitto) as (cfg, b, plat):
            a = await RawPile.connect(b.tcp_port, login=PILE_A)
            bpile = await RawPile.connect(b.tcp_port, login=PILE_B)
            bill = make_bill(PILE_B, 1)
            forged = make_extra(bill, service_share=90)
            # Before the true bill arrives (its serial says pile B) ...
            await a.write(codec.encode("bill_extra", forged, 5))
            # ... and after it is held.
            await bpile.write(_bill_frame(bill, 2))
            await bpile.wait(lambda: bpile.confirms())
            await a.write(codec.encode("bill_extra", forged, 6))
            ev = await _events(plat, "bill_quarantined", 2)
            assert all(e["frame_type"] == "bill_extra" and e["serial"] == bill["serial"] for e in ev)
            assert a.named("bill_extra_ack") == []
            # The true split completes the bill; the forged one never shows.
            true = make_extra(bill)
            await bpile.write(codec.encode("bill_extra", true, 3))
            doc = await plat.wait_for(lambda: (plat.bills.get(bill["serial"]) or {}).get("extra_frame")
                                      and plat.bills[bill["serial"]])
            assert doc["extra_frame"] == codec.encode("bill_extra", true, 3).hex().upper()
            rows = db_rows(cfg["database"], "SELECT kind, pile FROM rejected")
            assert rows == [("extra_quarantine", PILE_A)] * 2
            await a.close()
            await bpile.close()
    in_tempdir("extraowner", scenario)
