# Pile links as one small async interface, whatever carries the bytes:
#
#   await link.read()  -> bytes (b"" once the link is closed or broken)
#   await link.write(b)          raises LinkClosed when it cannot
#   await link.close()
#   link.name                    "tcp:10.0.0.7:50312", "serial:/dev/ttyUSB0"
#
# TCP piles dial in to an asyncio server (YKC piles are TCP clients). Serial
# ports are opened from pyserial URLs (device paths, socket://, loop://, ...)
# and served by two threads each, so a blocking or dying port never stalls
# the event loop or another pile.
import asyncio
import logging
import socket
import struct
import threading

log = logging.getLogger("host.links")

_READ_CHUNK = 4096
_SERIAL_POLL = 0.05     # s a serial read blocks before it checks for close
_CLOSE_S = 5.0          # s a closing TCP link may take to flush; then it is aborted


class LinkClosed(ConnectionError):
    pass


class StreamLink:
    """A TCP connection from a pile (asyncio streams)."""

    def __init__(self, reader, writer):
        self._r = reader
        self._w = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.name = "tcp:%s:%s" % (peer[0], peer[1])
        self.peer_ip = peer[0]
        self.closed = False

    async def read(self):
        if self.closed:
            return b""
        try:
            data = await self._r.read(_READ_CHUNK)
        except (ConnectionError, OSError) as e:
            log.info("%s: read failed: %s", self.name, e)
            data = b""
        return data

    async def write(self, data):
        if self.closed or self._w.is_closing():
            raise LinkClosed(self.name + " is closed")
        try:
            self._w.write(data)
            await self._w.drain()
        except (ConnectionError, OSError) as e:
            raise LinkClosed("%s: %s" % (self.name, e))

    async def close(self):
        if self.closed:
            return
        self.closed = True
        self._w.close()
        try:
            await asyncio.wait_for(self._w.wait_closed(), _CLOSE_S)
        except asyncio.TimeoutError:
            # The peer does not read what is still buffered for it: a FIN
            # would wait for ever (with the socket and its buffers). Reset it
            # (linger 0: the kernel drops the unsent bytes too).
            log.info("%s: peer not reading; connection reset", self.name)
            sock = self._w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._w.transport.abort()
        except (ConnectionError, OSError):
            pass


class SerialLink:
    """A pyserial port: a reader thread feeds an asyncio queue; writes go
    through one writer thread so they stay in order."""

    def __init__(self, port, name):
        self._port = port
        self.name = name
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._rx = asyncio.Queue()
        self._wlock = asyncio.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reader, name="rx " + name, daemon=True)
        self._thread.start()

    @classmethod
    async def open(cls, url, baudrate=115200, **kw):
        import serial  # pyserial, host side only

        def _open():
            return serial.serial_for_url(url, baudrate=baudrate, timeout=_SERIAL_POLL,
                                         write_timeout=5, **kw)
        port = await asyncio.get_running_loop().run_in_executor(None, _open)
        return cls(port, "serial:" + url)

    def _reader(self):
        port = self._port
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except Exception as e:  # device gone, EIO on a pty whose other side closed
                if not self._stop.is_set():
                    log.info("%s: read failed: %s", self.name, e)
                break
            if data:
                self._put(data)
        self._put(b"")

    def _put(self, data):
        try:
            self._loop.call_soon_threadsafe(self._rx.put_nowait, data)
        except RuntimeError:
            pass  # loop closed during shutdown

    async def read(self):
        if self.closed:
            return b""
        data = await self._rx.get()
        if not data:
            self.closed = True
        return data

    async def write(self, data):
        if self.closed:
            raise LinkClosed(self.name + " is closed")
        async with self._wlock:
            try:
                await self._loop.run_in_executor(None, self._port.write, data)
            except Exception as e:
                raise LinkClosed("%s: %s" % (self.name, e))

    async def close(self):
        if self._stop.is_set():
            return
        self.closed = True
        self._stop.set()
        try:
            self._port.cancel_read()
        except Exception:
            pass
        await self._loop.run_in_executor(None, self._thread.join, 2.0)
        try:
            self._port.close()
        except Exception:
            pass
        self._rx.put_nowait(b"")
