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
