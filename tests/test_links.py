# sim/links.py: every byte link a simulator, tool or test uses, opened by URL
# as pyserial opens its ports.
import asyncio
import os
import socket

import pytest

from sim import links
from sim.loopuart import LoopUart


def _drain(uart, want, tries=2000):
    got = b""
    for _ in range(tries):
        got += uart.read(256) or b""
        if len(got) >= len(want):
            break
        _wait_readable(uart)
    return got


def _wait_readable(uart):
    import select
    fd = uart.fileno() if hasattr(uart, "fileno") else None
    if fd is not None:
        select.select([fd], [], [], 0.05)


def test_loop_url_gives_one_end_of_an_in_memory_pair():
    a = links.open_uart("loop://")
    assert isinstance(a, LoopUart)
    a.write(b"\x68\x0c")
    assert a.peer.read(16) == b"\x68\x0c"


def test_pty_url_carries_bytes_both_ways_to_whoever_opens_its_path():
    u = links.open_uart("pty://")
    try:
        other = links.FdUart(os.open(u.path, os.O_RDWR | os.O_NOCTTY))
        try:
            u.write(b"login")
            assert _drain(other, b"login") == b"login"
            other.write(b"\x00\xff")
            assert _drain(u, b"\x00\xff") == b"\x00\xff"
        finally:
            os.close(other.fd)
    finally:
        u.close()


def test_fd_url_reads_nothing_rather_than_blocking_and_eio_is_no_data():
    import pty
    master, slave = pty.openpty()
    u = links.open_uart("fd://%d" % master)
    try:
        assert u.read(10) is None
        os.close(slave)             # nobody on the other side: EIO on Linux
        slave = None
        assert u.read(10) is None
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)


def test_socket_url_dials_the_bridge_port_and_dials_again_after_a_drop():
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    try:
        u = links.open_uart("socket://127.0.0.1:%d" % port, wait_s=5.0)
        c1, _ = srv.accept()
        u.write(b"abc")
        c1.settimeout(5)
        assert c1.recv(16) == b"abc"
        u.drop()
        c2, _ = srv.accept()
        assert u.drops == 1 and u.connects == 2
        c2.sendall(b"xyz")
        c2.settimeout(5)
        got = b""
        for _ in range(500):
            got += u.read(16) or b""
            if got:
                break
            import select
            select.select([u.sock], [], [], 0.05)
        assert got == b"xyz"
        u.close()
        c1.close()
        c2.close()
    finally:
        srv.close()


def test_spy_url_hex_dumps_every_byte_each_way(tmp_path):
    log = tmp_path / "spy.txt"
    a = links.open_uart("spy://loop://?file=%s" % log)
    a.write(b"\x68\x0c\x01")
    a.peer.write(b"\xfe")
    assert a.read(8) == b"\xfe"
    a.close()
    assert log.read_text().splitlines() == ["tx 68 0c 01", "rx fe"]


def test_a_url_no_link_knows_goes_to_pyserial_with_a_clear_error():
    with pytest.raises(Exception) as e:
        links.open_uart("/nonexistent/ttyUSB9")
    assert "ttyUSB9" in str(e.value)

    class Refused(Exception):
        pass
    with pytest.raises(Refused, match="cannot open"):
        links.open_uart("/nonexistent/ttyUSB9", error=Refused)


def test_bad_socket_url_is_refused_by_name():
    with pytest.raises(ValueError, match="socket://HOST:PORT"):
        links.open_uart("socket://nohost")


def test_transports_by_url_tcp_paced_and_spy(tmp_path):
    log = tmp_path / "spy.txt"

    async def go():
        got = asyncio.get_running_loop().create_future()

        async def handle(r, w):
            data = await r.readexactly(4)
            w.write(data[::-1])
            await w.drain()
            got.set_result(data)
            w.close()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        t = await links.open_transport("spy://paced://socket://127.0.0.1:%d?baud=115200?file=%s"
                                       % (port, log))
        assert isinstance(t.inner, links.PacedTransport) and t.inner.byte_s == 10.0 / 115200
        await t.write(b"abcd")
        assert await asyncio.wait_for(got, 5) == b"abcd"
        assert await asyncio.wait_for(t.read(), 5) == b"dcba"
        await t.close()
        srv.close()
        await srv.wait_closed()
    asyncio.run(go())
    assert log.read_text().splitlines() == ["tx 61 62 63 64", "rx 64 63 62 61"]


def test_pty_transport_path_is_a_serial_port_for_the_bridge():
    async def go():
        t = await links.open_transport("pty://")
        fd = os.open(t.path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"hello")
            assert await asyncio.wait_for(t.read(), 5) == b"hello"
            await t.write(b"ok")
            assert os.read(fd, 16) == b"ok"
        finally:
            os.close(fd)
            await t.close()
    asyncio.run(go())


def test_unknown_transport_url_is_refused_by_name():
    with pytest.raises(ValueError, match="no transport"):
        asyncio.run(links.open_transport("carrier-pigeon://x"))
