# Byte links for simulated piles, tools and tests, opened by URL as pyserial
# opens its ports (docs/sim.md "Byte links"). Two shapes:
#
#   open_uart(url)              the firmware's injected-uart interface:
#                               read(n) -> bytes | None (never blocks),
#                               write(b) -> int; for a real firmware Pile
#                               in a simulator, test or tool
#   await open_transport(url)   an asyncio byte stream: await read() -> bytes
#                               (b"" at the end), await write(b), await close();
#                               for the scripted piles of sim/testkit.py
#
#   loop://              an in-memory pair (sim/loopuart.py): one end; .peer
#                        is the other (open_uart only)
#   pty://               a new pty; .path is the slave to give the bridge
#                        (pile-bridge --serial PATH)
#   fd://N               an open, non-blocking file descriptor (a pty master)
#   socket://HOST:PORT   TCP to a bridge's pile port, as a pile's modem dials in
#                        (open_uart dials again after a drop)
#   spy://URL            URL with every byte hex-dumped, one line per read or
#                        write, to stderr (or spy://URL?file=PATH)
#   paced://URL?baud=N   URL at a serial line's rate, 8N1 (open_transport only:
#                        ptys and sockets ignore the baud rate)
#   anything else        a pyserial URL or device (/dev/ttyUSB0, rfc2217://...)
import asyncio
import binascii
import errno
import os
import select
import socket
import sys
import time

from sim.loopuart import LoopUart


def _hostport(rest, url):
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("%s: not socket://HOST:PORT" % url)
    return host.strip("[]") or "127.0.0.1", int(port)


def _split_query(url, key):
    """("spy://socket://h:1", "PATH") for key "file" in spy://socket://h:1?file=PATH."""
    base, sep, val = url.rpartition("?%s=" % key)
    return (base, val) if sep else (url, None)


def _open_pty():
    """(master, slave, slave's path) of a new raw pty: no echo, no line
    editing, 8 bits."""
    import pty
    import tty
    master, slave = pty.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def _close(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def open_uart(url, **kw):
    """A uart (read(n) -> bytes | None, write(b) -> int, close()) on url;
    kw go to the link's class (TcpUart: on_change, retry_s, wait_s;
    SerialUart: baudrate, parity, error)."""
    if url.startswith("spy://"):
        inner, path = _split_query(url[6:], "file")
        return SpyUart(open_uart(inner, **kw), path)
    if url == "loop://":
        return LoopUart.pair()[0]
    if url == "pty://":
        return PtyUart()
    if url.startswith("fd://"):
        return FdUart(int(url[5:]), **kw)
    if url.startswith("socket://"):
        host, port = _hostport(url[9:], url)
        return TcpUart(host, port, **kw)
    return SerialUart.open(url, **kw)


async def open_transport(url):
    """An asyncio byte transport on url (socket://, fd://, pty://, spy://,
    paced://...?baud=N)."""
    if url.startswith("spy://"):
        inner, path = _split_query(url[6:], "file")
        return SpyTransport(await open_transport(inner), path)
    if url.startswith("paced://"):
        inner, baud = _split_query(url[8:], "baud")
        return PacedTransport(await open_transport(inner), int(baud or 115200))
    if url.startswith("socket://"):
        host, port = _hostport(url[9:], url)
        return await TcpTransport.connect(host, port)
    if url.startswith("fd://"):
        return FdTransport(int(url[5:]))
    if url == "pty://":
        return PtyTransport()
    raise ValueError("%s: no transport for this URL (socket://, fd://, pty://, spy://, paced://)"
                     % url)


# --- uarts: the firmware's interface ------------------------------------------------------

class FdUart:
    """A file descriptor (the master side of a pty) as the firmware's uart:
    made non-blocking, read(n) -> bytes | None, write(b) waits until every
    byte is taken. The caller owns the descriptor. A read with nobody on the
    other side (EIO on a pty master) is no data. Any other failure: with
    error=None reads give None and writes raise OSError; with an exception
    class (the meter driver's MeterError), both raise it."""

    def __init__(self, fd, error=None):
        self.fd = fd
        self.error = error
        os.set_blocking(fd, False)

    def fileno(self):
        return self.fd

    def _fail(self, what, e):
        if self.error is None:
            raise e
        raise self.error("fd %d: %s failed: %s" % (self.fd, what, e))

    def read(self, n=256):
        try:
            return os.read(self.fd, n) or None
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno == errno.EIO or self.error is None:
                return None
            self._fail("read", e)

    def write(self, data):
        view = memoryview(bytes(data))
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)   # the pty's buffer drains at once
            except OSError as e:
                self._fail("write", e)
        return done

    def close(self):
        pass


class TcpUart:
    """The injected-uart interface over a non-blocking TCP connection to the
    bridge's pile port: read(n) -> bytes | None, write(b) -> int. Reconnects
    (after retry_s, real time) when the connection fails or closes; bytes
    written while there is no connection are lost, as on a dead line.
    on_change(up) is called when the connection comes up or goes down."""

    def __init__(self, host, port, on_change=None, retry_s=1.0, wait_s=0.0):
        self.host = host
        self.port = port
        self.on_change = on_change
        self.retry_s = retry_s
        self.wait_s = wait_s
        self.sock = None
        self.connected = False
        self.connects = 0
        self.drops = 0
        self.closed = False
        self._tx = bytearray()
        self._retry_at = 0.0
        if wait_s:
            self._dial()

    def _dial(self):
        """Connect now, waiting up to wait_s (the first bytes, a login, are
        then never lost to a connect still in progress)."""
        s = socket.create_connection((self.host, self.port), timeout=self.wait_s)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self._up()

    def drop(self):
        """The modem loses its connection (and, with wait_s, dials again at once)."""
        self.drops += 1
        self._down()
        self._retry_at = 0.0
        if self.wait_s:
            self._dial()

    def _start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex((self.host, self.port))
        self.sock = s
        if err == 0:
            self._up()
        elif err not in (115, 36, 10035, 11):  # EINPROGRESS / EWOULDBLOCK family
            self._down()

    def _up(self):
        self.connected = True
        self.connects += 1
        if self.on_change:
            self.on_change(True)

    def _down(self):
        was = self.connected
        self.connected = False
        self._tx = bytearray()
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self._retry_at = time.monotonic() + self.retry_s
        if was and self.on_change:
            self.on_change(False)

    def service(self):
        """Connect, finish a connect, flush queued bytes. Cheap; call often."""
        if self.closed:
            return
        if self.sock is None:
            if time.monotonic() >= self._retry_at:
                self._start()
            return
        if not self.connected:
            _, w, _ = select.select([], [self.sock], [], 0)
            if not w:
                return
            if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._down()
                return
            self._up()
        if self._tx:
            try:
                n = self.sock.send(self._tx)
                del self._tx[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._down()

    def read(self, n=256):
        self.service()
        if not self.connected:
            return None
        try:
            data = self.sock.recv(n)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._down()
            return None
        if not data:
            self._down()
            return None
        return data

    def write(self, b):
        if self.connected:
            self._tx.extend(b)
            self.service()
        return len(b)

    def close(self):
        self.closed = True
        if self.sock is not None:
            try:
                if self._tx:
                    self.sock.setblocking(True)
                    self.sock.settimeout(1.0)
                    self.sock.sendall(self._tx)
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.connected = False


class PtyUart(FdUart):
    """The injected-uart interface on the master side of a pty, as a
    USB-serial cable on the bridge's side would see it: the bridge opens
    `path` (the slave) as a serial link. The slave is also held open here,
    so the master never reads EIO while the bridge has not opened it yet or
    is reopening it. Ptys ignore the baud rate (no line-rate pacing).

    Bytes the bridge does not read stay in the pty (a few KB), then in a
    queue of up to _TX_MAX bytes; beyond that they are dropped and counted,
    as on a line nobody listens to."""

    _TX_MAX = 65536

    def __init__(self):
        self.fd, self._slave, self.path = _open_pty()
        os.set_blocking(self.fd, False)
        self.error = None
        self.connected = True
        self.connects = 0
        self.dropped = 0
        self.closed = False
        self._tx = bytearray()

    def drain(self):
        """Throw away whatever arrived while nobody was reading (a power cut)."""
        while self.read(4096):
            pass

    def _flush(self):
        while self._tx:
            try:
                n = os.write(self.fd, self._tx)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            del self._tx[:n]

    def read(self, n=256):
        if self.closed:
            return None
        self._flush()
        try:
            return os.read(self.fd, n) or None
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:   # EIO: no slave open (not while we hold ours)
            return None

    def write(self, b):
        if self.closed:
            return len(b)
        room = self._TX_MAX - len(self._tx)
        if len(b) > room:
            self.dropped += len(b) - room
            b = b[:room]
        self._tx.extend(b)
        self._flush()
        return len(b)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.connected = False
        _close(self.fd, self._slave)


class SocketUart:
    """A connected socket (the accepted end of a pile's TCP link, on a
    platform double) as a uart. read(n) waits for data unless blocking=False;
    `closed` once the other end has gone."""

    def __init__(self, sock, blocking=True):
        self.sock = sock
        sock.setblocking(blocking)
        self.closed = False

    def read(self, n=256):
        try:
            data = self.sock.recv(n)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return None
        return data

    def write(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True
        return len(data)

    def close(self):
        self.closed = True
        self.sock.close()


class SpyUart:
    """Another uart with every byte hex-dumped (pyserial's spy://): one line
    per read or write, "rx 68 0c ..." / "tx ...", to stderr or to `path`."""

    def __init__(self, inner, path=None):
        self.inner = inner
        self._out = open(path, "a") if path else sys.stderr

    def _dump(self, tag, data):
        self._out.write("%s %s\n" % (tag, binascii.hexlify(bytes(data), " ").decode()))
        self._out.flush()

    def read(self, n=256):
        data = self.inner.read(n)
        if data:
            self._dump("rx", data)
        return data

    def write(self, data):
        self._dump("tx", data)
        return self.inner.write(data)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def close(self):
        if self._out is not sys.stderr:
            self._out.close()
        close = getattr(self.inner, "close", None)
        if close:
            close()


class SerialUart:
    """A pyserial port (any pyserial URL) as the firmware's uart: read(n)
    never blocks. A broken port raises OSError / serial.SerialException, or
    `error` (an exception class) when given."""

    def __init__(self, port, error=None):
        self.port = port
        self.error = error
        port.timeout = 0

    @classmethod
    def open(cls, url, baudrate=9600, parity="N", error=None):
        # Ptys and sockets ignore the line settings; pass parity "N" on a
        # pty (the tooling notes: even parity breaks pty clients).
        import serial
        try:
            port = serial.serial_for_url(url, baudrate=baudrate, bytesize=8, parity=parity,
                                         stopbits=1, timeout=0)
        except (OSError, serial.SerialException) as e:
            if error is None:
                raise
            raise error("cannot open %s: %s" % (url, e))
        return cls(port, error)

    def _call(self, what, fn, *a):
        import serial
        try:
            return fn(*a)
        except (OSError, serial.SerialException) as e:
            if self.error is None:
                raise
            raise self.error("%s: %s failed: %s" % (self.port.name, what, e))

    def write(self, data):
        return self._call("write", self.port.write, bytes(data))

    def read(self, n=256):
        return self._call("read", self.port.read, n) or None

    def close(self):
        self.port.close()


# --- transports: asyncio byte streams ------------------------------------------------------

class TcpTransport:
    def __init__(self, reader, writer):
        self._r = reader
        self._w = writer

    @classmethod
    async def connect(cls, host, port):
        r, w = await asyncio.open_connection(host, port)
        return cls(r, w)

    async def read(self):
        try:
            return await self._r.read(4096)
        except (ConnectionError, OSError):
            return b""

    async def write(self, data):
        self._w.write(data)
        await self._w.drain()

    async def close(self):
        self._w.close()
        try:
            await self._w.wait_closed()
        except (ConnectionError, OSError):
            pass


class FdTransport:
    """The master side of a pty (or any non-blocking fd), on the event loop."""

    def __init__(self, fd):
        self.fd = fd
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._q = asyncio.Queue()
        self._loop.add_reader(fd, self._readable)
        self._closed = False

    def _readable(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""   # EIO: nobody holds the other side open right now
            self._loop.remove_reader(self.fd)
            self._loop.call_later(0.05, self._rearm)
            return
        self._q.put_nowait(data)

    def _rearm(self):
        if not self._closed:
            self._loop.add_reader(self.fd, self._readable)

    async def read(self):
        return await self._q.get()

    async def write(self, data):
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def close(self):
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self.fd)
            self._q.put_nowait(b"")


class PacedTransport:
    """Wraps a transport so both directions move at `baud` (8N1: 10 bits a
    byte), as on a real UART. write() returns at once, like a write into a
    UART driver's buffer; the bytes reach the other side once their last
    bit would have been sent. Received bytes are handed over once their
    last bit would have arrived."""

    def __init__(self, inner, baud=115200):
        self.inner = inner
        self.byte_s = 10.0 / baud
        self._tx_free = 0.0
        self._rx_free = 0.0
        self._txq = asyncio.Queue()
        self._tx_task = asyncio.ensure_future(self._tx())
        self.tx_bytes = 0          # written by the caller
        self.tx_sent = 0           # on the wire so far
        self.rx_bytes = 0

    async def write(self, data):
        start = max(time.monotonic(), self._tx_free)
        self._tx_free = start + len(data) * self.byte_s
        self.tx_bytes += len(data)
        self._txq.put_nowait((self._tx_free, bytes(data)))

    async def _tx(self):
        while True:
            due, data = await self._txq.get()
            await _sleep_until(due)
            await self.inner.write(data)
            self.tx_sent += len(data)

    async def read(self):
        data = await self.inner.read()
        if data:
            now = time.monotonic()
            self._rx_free = max(now, self._rx_free) + len(data) * self.byte_s
            self.rx_bytes += len(data)
            await _sleep_until(self._rx_free)
        return data

    async def close(self):
        self._tx_task.cancel()
        await asyncio.gather(self._tx_task, return_exceptions=True)
        await self.inner.close()


async def _sleep_until(t):
    d = t - time.monotonic()
    if d > 0:
        await asyncio.sleep(d)


class PtyTransport(FdTransport):
    """A new pty on the event loop: .path is the slave to give the bridge.
    The slave is held open here too, so the master never reads EIO."""

    def __init__(self):
        master, self._slave, self.path = _open_pty()
        FdTransport.__init__(self, master)

    async def close(self):
        await FdTransport.close(self)
        _close(self.fd, self._slave)


class SpyTransport:
    """Another transport with every byte hex-dumped (see SpyUart)."""

    def __init__(self, inner, path=None):
        self.inner = inner
        self._spy = SpyUart(None, path)

    async def read(self):
        data = await self.inner.read()
        if data:
            self._spy._dump("rx", data)
        return data

    async def write(self, data):
        self._spy._dump("tx", data)
        await self.inner.write(data)

    async def close(self):
        if self._spy._out is not sys.stderr:
            self._spy._out.close()
        await self.inner.close()
