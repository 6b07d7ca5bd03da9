"""Fuzzing (tools/fuzz.py, docs/fuzzing.md): bounded runs of each target, and
the regressions for what the fuzzer found in the bridge."""
import asyncio
import gc
import json
import socket

import pytest

from host import commands as C
from host import links
from host.piles import PileConn


def _run(coro, timeout=60):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


# --- regressions: what the fuzzer found ---------------------------------------------------

def test_a_deeply_nested_command_is_a_bad_request_not_a_lost_result():
    # json.loads raises RecursionError past ~1000 levels; it escaped parse()
    # and the command got no result at all.
    for nest in ("[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000):
        payload = ('{"id": "deep", "cmd": "status", "x": %s}' % nest).encode()
        with pytest.raises(C.CommandError) as e:
            C.parse(payload, 65536)
        assert e.value.code == "bad_request"


@pytest.mark.parametrize("field,value", [
    ("gun", "\u0661"), ("gun", "\u00b2"), ("serial", "\u0661" * 4), ("logical_card", "\u0663"),
    ("card", "0x1F"), ("card", " 1F"), ("card", "1_F"), ("card", "\u0661"),
])
def test_digits_and_hex_outside_ascii_are_bad_requests(field, value):
    # str.isdigit() and int(v, 16) accept these; the frame encoder does not,
    # so they reached the pile's link and came back as code "error".
    doc = {"id": "r1", "cmd": "start", "gun": "01", field: value}
    with pytest.raises(C.CommandError) as e:
        C.parse(json.dumps(doc).encode(), 65536)
    assert e.value.code == "bad_request" and e.value.req_id == "r1"


def _peer_gone(sock):
    """True once the peer reset or closed the connection (TCP state left ESTABLISHED)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 1


class _StubBridge:
    cfg = {"piles": {"command_timeout_s": 1.0, "heartbeat_s": 10.0, "missed_heartbeats": 3}}


class _StuckLink:
    """A link whose writes never complete (a peer that stopped reading)."""
    name = "stuck"

    def __init__(self):
        self.release = asyncio.Event()

    async def write(self, data):
        await self.release.wait()

    async def read(self):
        return b""

    async def close(self):
        self.release.set()


def test_a_conn_whose_pile_was_replaced_skips_its_time_sync():
    # A second login with the same code sets the old conn's pile to None
    # while its after-login task is about to sync the clock.
    async def go():
        conn = PileConn(_StubBridge(), _StuckLink())
        assert conn.pile is None
        assert await conn.sync_time() is None
        await conn.poll_status()
    _run(go())


def test_a_request_cut_by_shutdown_while_sending_leaves_no_unretrieved_error():
    # shutdown() fails the request's future and cancels the task that is
    # still inside send(): nobody read the future's LinkClosed, and asyncio
    # logged "Future exception was never retrieved" at ERROR level.
    async def go():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx.get("message")))
        conn = PileConn(_StubBridge(), _StuckLink())
        t = conn.spawn(conn.request("time_sync", {"pile": "55031412782305", "time": 0}))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await conn.shutdown("test")
        await asyncio.gather(t, return_exceptions=True)
        del t
        gc.collect()
        await asyncio.sleep(0)
        return errors
    assert _run(go()) == []


def test_closing_a_tcp_link_to_a_peer_that_never_reads_does_not_hang(monkeypatch):
    # With unsent data buffered, StreamWriter.close() waits for the peer to
    # read it: for ever if it never does (the socket and its buffers were
    # never released). The close now gives up after links._CLOSE_S and aborts.
    monkeypatch.setattr(links, "_CLOSE_S", 0.3, raising=False)

    async def go():
        got = asyncio.get_running_loop().create_future()

        async def on_conn(r, w):
            got.set_result(links.StreamLink(r, w))
        srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        deaf = socket.socket()
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.connect(("127.0.0.1", port))
        link = await got
        writer = asyncio.ensure_future(link.write(b"\x00" * (16 << 20)))   # more than buffers hold
        done, _ = await asyncio.wait([writer], timeout=0.5)
        assert not done, "the write should be stuck on a peer that does not read"
        await asyncio.wait_for(link.close(), 10)    # hung here for ever before
        # The stuck write ends (its data is dropped) and the peer sees the
        # connection go (RST): the socket is released.
        await asyncio.wait_for(asyncio.gather(writer, return_exceptions=True), 10)
        while not _peer_gone(deaf):
            await asyncio.sleep(0.01)
        deaf.close()
        srv.close()
    _run(go())


def _outbox_cache(bridge, pile):
    # The per-pile publisher keeps its payload cache in a local of its
    # coroutine (suspended at an await): read it from the frame.
    return bridge.outbox._tasks[pile].get_coro().cr_frame.f_locals["cache"]


def test_the_outbox_forgets_the_payloads_of_confirmed_bills(mosquitto):
    # The cache of published JSON payloads was keyed by (bill id, has 0xEB)
    # but pruned by bill id alone: every bill a pile ever sent stayed in
    # memory (~3 KB each), the bridge's RSS grew for ever (fuzz bridge-tcp).
    from sim.testkit import make_bill, make_extra
    from tests.test_bridge_helpers import PILE_A, bridge_with_pile, tempdir, until

    async def scenario(tmp):
        async with bridge_with_pile(tmp, mosquitto) as (cfg, b, plat, pile):
            bills = [make_bill(PILE_A, n) for n in range(30)]
            for v in bills:
                assert await pile.send_bill(v, make_extra(v)) == 0
            await plat.wait_for(lambda: all(v["serial"] in plat.bills for v in bills), 30)
            await pile.wait_for(lambda: all(v["serial"] in pile.settled for v in bills), 30)
            await until(lambda: not _outbox_cache(b, PILE_A), timeout=10,
                        what="the outbox cache emptied once every bill is confirmed")
    with tempdir("outbox-cache") as tmp:
        _run(scenario(tmp), 90)


# --- bounded fuzz runs (the documented run is in docs/fuzzing.md) -----------------------------

from sim import brokers as _broker            # noqa: E402
from protocol import codec                    # noqa: E402
from sim import fuzz                          # noqa: E402
from sim import fuzz_mqtt, fuzz_tcp           # noqa: E402
from tools import fuzz as fuzz_cli            # noqa: E402

needs_mosquitto = pytest.mark.skipif(not _broker.mosquitto_available(),
                                     reason="mosquitto not installed (tools/setup.sh installs it)")


def test_reader_fuzz_yields_only_frames_and_frame_errors_and_finds_good_frames():
    rep = fuzz.fuzz_reader(20000, seed=11)
    d = rep.as_dict()
    assert d["violations"] == [] and d["verdict"] == "pass"
    assert d["inputs"] == 20000
    # Every kind of input was tried and every path of the reader was taken.
    assert set(d["kinds"]) == {k for k, _ in fuzz._READER_KINDS}
    for cls in ("Frame", "BadCRC", "BadLength", "FieldError", "UnknownType"):
        assert d["outcomes"].get(cls), cls
    # Intact frames placed in noise were recovered, each one, in order.
    assert d["outcomes"]["intact_frames_recovered"] >= 2 * d["kinds"]["frames_in_noise"]


def test_reader_fuzz_is_reproducible_from_its_seed():
    a = fuzz.fuzz_reader(2000, seed=5).as_dict()
    b = fuzz.fuzz_reader(2000, seed=5).as_dict()
    assert (a["kinds"], a["outcomes"]) == (b["kinds"], b["outcomes"])
    c = fuzz.fuzz_reader(2000, seed=6).as_dict()
    assert c["outcomes"] != a["outcomes"]


class _LeakyReader(codec.FrameReader):
    """A broken reader: a ValueError escapes on a 0x68 0x05 pair."""

    def push(self, data):
        if b"\x68\x05" in bytes(data):
            raise ValueError("boom")
        return super().push(data)


class _BlindReader(codec.FrameReader):
    """A broken reader: never finds a frame behind garbage."""

    def push(self, data):
        return [x for x in super().push(data)
                if not (isinstance(x, codec.Frame) and self.skipped)]


class _FirstOnlyReader(codec.FrameReader):
    """A broken reader: of the frames one push completes, only the first
    comes out (a bill behind another in the same read is lost)."""

    def push(self, data):
        out, seen = [], False
        for x in super().push(data):
            if isinstance(x, codec.Frame):
                if seen:
                    continue
                seen = True
            out.append(x)
        return out


@pytest.mark.parametrize("broken,what", [(_LeakyReader, "push raised"), (_BlindReader, "not found"),
                                         (_FirstOnlyReader, "not recovered in order")])
def test_reader_fuzz_reports_a_broken_reader_and_replays_its_case(monkeypatch, capsys, broken, what):
    monkeypatch.setattr(codec, "FrameReader", broken)
    d = fuzz.fuzz_reader(3000, seed=2).as_dict()
    assert d["verdict"] == "FAIL" and d["violation_count"] > 0
    v = next(v for v in d["violations"] if what in v["what"])
    # --case replays that one input, with the same finding; exit status 1.
    assert fuzz_cli.main(["reader", "--seed", "2", "--case", str(v["case"]), "--json"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["inputs"] == 1 and again["violations"][0]["what"] == v["what"]


@pytest.mark.slow
@needs_mosquitto
def test_bridge_tcp_fuzz_hostile_clients_beside_a_charging_pile():
    # Every kind of hostile client (random and mutated frames, frames before
    # login, login then garbage, valid-CRC random bodies, oversized lengths,
    # slowloris, abrupt resets, forged bills, bursts of connections, a
    # silent client, a client that never reads) while the good pile logs in
    # again and again and has every bill taken: the bridge lives, keeps
    # serving it, stays within 64 MB of its RSS, releases every socket and
    # logs no error.
    rep = fuzz_tcp.fuzz_bridge_tcp(300, seed=7)
    d = rep.as_dict()
    assert d["violations"] == [] and d["verdict"] == "pass", d["violations"]
    assert set(d["kinds"]) == {k for k, _ in fuzz_tcp._TCP_KINDS}
    assert d["inputs"] >= 300
    g = d["good_pile"]
    assert g["bills"] > 0 and g["on_platform"] == g["bills"] and g["logins"] > 1
    assert d["rss_kb"]["peak"] <= d["rss_kb"]["baseline"] + 64 * 1024
    assert d["fds"]["after"] <= d["fds"]["before"] + 4


@needs_mosquitto
def test_mqtt_command_fuzz_every_bad_command_gets_one_clear_failure():
    # Malformed JSON, wrong types, over max_command_bytes, unknown piles and
    # commands, missing ids, deep nesting, unicode, random bytes: each
    # command message gets exactly one result, ok=false with a documented
    # code (never "error"); valid commands between them and after them work.
    rep = fuzz_mqtt.fuzz_mqtt_commands(400, seed=7)
    d = rep.as_dict()
    assert d["violations"] == [] and d["verdict"] == "pass", d["violations"]
    assert set(fuzz_mqtt._FIRST_KINDS) - {"bad_argument"} <= set(d["kinds"])
    m = d["messages"]
    assert m["results"] == m["sent"] and m["controls"] >= 3
    for code in ("bad_request", "too_large", "unknown_command", "unknown_pile", "offline", "expired"):
        assert d["outcomes"].get(code), code
    assert "error" not in d["outcomes"]


@needs_mosquitto
def test_mqtt_command_fuzz_waits_for_a_bridge_slow_to_reach_its_broker():
    # The ready line comes before the bridge has subscribed to commands; a
    # command published in between is never delivered (no session for it
    # yet). The fuzz lost its first input that way about one run in four on
    # a loaded machine ("32 messages without a predictable id, 31 results").
    # Here the bridge's CONNECT is held for 1 s: every input still gets its
    # one result, because the platform waits for the bridge's online status.
    d = fuzz_mqtt.fuzz_mqtt_commands(40, seed=7, bridge_mqtt_delay_s=1.0).as_dict()
    assert d["violations"] == [] and d["verdict"] == "pass", d["violations"]
    assert d["messages"]["results"] == d["messages"]["sent"] == 43
