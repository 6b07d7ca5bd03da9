# Issue 12's "done when", live: a real bridge process, real Mosquitto, the
# real `pile-platform` process and a third-party pile (sim.testkit.
# ThirdPartyPile: hex SIM, swapped CRCs, V1.5 version byte, two guns, meter
# 0 -> 0, bills that do not reconcile, 156-byte and 0x3D bills, gives a bill
# up after 3 resends). Every good-CRC bill of every variant is stored once,
# published once and confirmed; none is lost; the bad-CRC bill is recorded
# with an event; bridge and platform name the same problems for every bill.
import asyncio
import json
import os
import sys

from sim.testkit import ThirdPartyPile, third_party_corpus
from sim.links import TcpTransport
from protocol.reconcile import problem_classes
from tests.test_bridge_helpers import (
    ROOT, BridgeProcess, Platform, db_rows, fast_config, in_tempdir, until, url_of)

PILE = "55031412782399"


class PlatformProcess:
    """`pile-platform` (python -m host.platform) as a child process, ready
    once it prints its ready line (subscribed)."""

    def __init__(self, tmp, broker_url):
        self.db = os.path.join(tmp, "platform.db")
        self.args = [sys.executable, "-m", "host.platform", "--broker", broker_url, "--db", self.db,
                     "--site", "t1"]
        self.log_path = os.path.join(tmp, "platform.log")
        self.proc = None

    async def start(self):
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = await asyncio.create_subprocess_exec(*self.args, stdout=asyncio.subprocess.PIPE,
                                                         stderr=log, cwd=ROOT, env=env)
        log.close()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line and json.loads(line)["ready"], "pile-platform did not start: %s" % self.log()
        return self

    async def stop(self):
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    async def summary(self):
        env = dict(os.environ, PYTHONPATH=ROOT)
        p = await asyncio.create_subprocess_exec(sys.executable, "-m", "host.platform", "--summary",
                                                 "--db", self.db, stdout=asyncio.subprocess.PIPE,
                                                 cwd=ROOT, env=env)
        out, _ = await p.communicate()
        assert p.returncode == 0
        return json.loads(out)


def test_every_third_party_bill_variant_is_kept_published_once_and_confirmed(mosquitto):
    async def scenario(tmp):
        corpus = third_party_corpus(PILE)
        good = [b for b in corpus if not b["bad_crc"]]
        cfg = fast_config(tmp, url_of(mosquitto), tcp={"listen": "127.0.0.1:0", "ext": False},
                          log_level="info")
        bridge = await BridgeProcess(tmp, cfg).start()
        platform = await PlatformProcess(tmp, url_of(mosquitto)).start()
        pile = None
        try:
            async with Platform(url_of(mosquitto), confirm=False, name="observer") as seen:
                pile = ThirdPartyPile(PILE, await TcpTransport.connect("127.0.0.1", bridge.tcp_port),
                                      resend_s=0.5, heartbeat_s=2.0)
                assert await pile.login() == 0
                for b in corpus:
                    await pile.send_raw_bill(b)
                # The pile gave up only the bill whose CRC is bad, after 3 resends.
                assert pile.given_up == [b["serial"] for b in corpus if b["bad_crc"]]
                assert all(pile.sent[b["serial"]] == 1 for b in good)
                assert all(pile.confirmed[b["serial"]] == [0] for b in good)
                serials = [b["serial"] for b in good]
                # Confirmed by the real platform, in the bridge's store.
                await until(lambda: db_rows(cfg["database"], "SELECT COUNT(*) FROM bills WHERE "
                                          "confirmed_at IS NOT NULL")[0][0] == len(good),
                            timeout=30, what="every good bill confirmed")
                stored = db_rows(cfg["database"], "SELECT serial, frame FROM bills ORDER BY id")
                assert [(s, bytes(f)) for s, f in stored] == [
                    (b["serial"], pile.frame_sent[b["serial"]]) for b in good]
                # Published once each (the observer sees every publication).
                await seen.wait_for(lambda: all(s in seen.bills for s in serials), 20)
                assert [seen.bill_count[s] for s in serials] == [1] * len(good)
                # The bad-CRC bill: recorded for diagnosis, with an event.
                bad = [b for b in corpus if b["bad_crc"]][0]
                frames = [bytes(r[0]) for r in db_rows(cfg["database"], "SELECT frame FROM bad_frames")]
                assert pile.frame_sent[bad["serial"]] in frames
                ev = await seen.wait_for(lambda: [e for e in seen.events if e["type"] == "bad_frames"])
                assert ev[0]["pile"] == PILE
                # Bridge and platform: the same problem list for every bill,
                # and the classes this variant is about.
                held = dict((s, json.loads(p)) for s, p in db_rows(
                    platform.db, "SELECT serial, problems FROM bills"))
                assert sorted(held) == sorted(serials)       # 0 lost
                for b in good:
                    doc = seen.bills[b["serial"]]
                    assert doc["pile_kind"] == "third_party" and doc["crc_swapped"] is True
                    assert held[b["serial"]] == doc["checks"]["problems"], b["variant"]
                    assert problem_classes(held[b["serial"]]) == b["expect"], (b["variant"],
                                                                               held[b["serial"]])
                    assert doc["decoded"] is (b["variant"] != "undecodable")
                # The bridge's own events name the same problems: read leniently,
                # only the truly undecodable bill is an undecodable_bill.
                flagged = [b for b in good if b["expect"]]
                evs = await seen.wait_for(lambda: [e for e in seen.events if e["type"] in (
                    "unreconciled_bill", "undecodable_bill")] if len([
                        e for e in seen.events if e["type"] in (
                            "unreconciled_bill", "undecodable_bill")]) >= len(flagged) else None)
                by_serial = dict((e["serial"], e) for e in evs)
                assert sorted(by_serial) == sorted(b["serial"] for b in flagged)
                for b in flagged:
                    e = by_serial[b["serial"]]
                    if b["variant"] == "undecodable":
                        assert e["type"] == "undecodable_bill"
                    else:
                        assert e["type"] == "unreconciled_bill", b["variant"]
                        assert e["problems"] == held[b["serial"]]
                # Reports: nothing held against our piles; third-party bills by class.
                s = await platform.summary()
                assert s["ours"] == {"bills": 0, "unreconciled": 0} and s["unreconciled"] == 0
                want = {}
                for b in good:
                    for c in b["expect"]:
                        want[c] = want.get(c, 0) + 1
                assert s["third_party"]["bills"] == len(good)
                assert s["third_party"]["by_class"] == want
        finally:
            if pile is not None:
                await pile.close()
            await platform.stop()
            await bridge.stop()
    in_tempdir("thirdparty", scenario, timeout=120)


def test_pile_sim_third_party_sends_the_variants_and_gives_up_the_bad_crc_bill(mosquitto):
    # The same piles from the command line (tools/sim.py third-party).
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), tcp={"listen": "127.0.0.1:0", "ext": False})
        bridge = await BridgeProcess(tmp, cfg).start()
        try:
            env = dict(os.environ, PYTHONPATH=ROOT)
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tools.sim", "third-party", "--bridge",
                "127.0.0.1:%d" % bridge.tcp_port, "--variants", "bill17,not_bcd_gun,bad_crc",
                "--resend-s", "0.3", stdout=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
            out, _ = await asyncio.wait_for(p.communicate(), 60)
            assert p.returncode == 0
            lines = [json.loads(x) for x in out.decode().splitlines()]
            assert [(x["variant"], x["sent"], x["result"]) for x in lines[:3]] == [
                ("bill17", 1, "confirmed (0x40)"), ("not_bcd_gun", 1, "confirmed (0x40)"),
                ("bad_crc", 4, "given up after 3 resends")]
            assert lines[3] == {"done": True, "bills": 3, "confirmed": 2, "given_up": 1}
            stored = [s for (s,) in db_rows(cfg["database"], "SELECT serial FROM bills ORDER BY id")]
            assert stored == [x["serial"] for x in lines[:2]]
        finally:
            await bridge.stop()
    in_tempdir("thirdpartycli", scenario, timeout=90)
