# Byte links for simulated piles and tools: the firmware's injected-uart
# interface (read(n) -> bytes | None, write(b) -> int) over TCP or a pty.
import os
import select
import socket
import time


class TcpUart:
    """The injected-uart interface over a non-blocking TCP connection to the
    bridge's pile port: read(n) -> bytes | None, write(b) -> int. Reconnects
    (after retry_s, real time) when the connection fails or closes; bytes
    written while there is no connection are lost, as on a dead line.
    on_change(up) is called when the connection comes up or goes down."""

    def __init__(self, host, port, on_change=None, retry_s=1.0):
        self.host = host
        self.port = port
        self.on_change = on_change
        self.retry_s = retry_s
        self.sock = None
        self.connected = False
        self.connects = 0
        self.closed = False
        self._tx = bytearray()
        self._retry_at = 0.0

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


class PtyUart:
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
        import pty
        import tty
        self.fd, self._slave = pty.openpty()
        tty.setraw(self._slave)          # no echo, no line editing, 8 bits
        os.set_blocking(self.fd, False)
        self.path = os.ttyname(self._slave)
        self.connected = True
        self.connects = 0
        self.dropped = 0
        self.closed = False
        self._tx = bytearray()

    def fileno(self):
        return self.fd

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
        for fd in (self.fd, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
