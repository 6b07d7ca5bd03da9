# An in-memory UART link for simulations and tests: two connected ends with
# the injected-uart interface (write(b) -> int, read(n) -> bytes | None), no
# OS resources. MicroPython + CPython.


class LoopUart:
    """One end of an in-memory UART link: what one end writes, the other
    reads. `a, b = LoopUart.pair()`. A device simulated on b answers from
    b.on_receive(b), called as soon as a's write lands. `tap`, if a list,
    collects every write of this end (exact bytes on the wire)."""

    def __init__(self):
        self.peer = None
        self.on_receive = None
        self.tap = None
        self._rx = bytearray()
        self._pos = 0

    @classmethod
    def pair(cls):
        a = cls()
        b = cls()
        a.peer = b
        b.peer = a
        return a, b

    def write(self, data):
        p = self.peer
        p._rx.extend(data)
        if self.tap is not None:
            self.tap.append(bytes(data))
        if p.on_receive is not None:
            p.on_receive(p)
        return len(data)

    def inject(self, data):
        """Bytes arrive on this end as if the peer had sent them (line
        noise, an echo, a late reply)."""
        self._rx.extend(data)

    def any(self):
        return len(self._rx) - self._pos

    def read(self, n=-1):
        avail = len(self._rx) - self._pos
        if avail <= 0:
            return None
        if n is None or n < 0 or n > avail:
            n = avail
        out = bytes(self._rx[self._pos:self._pos + n])
        self._pos += n
        if self._pos == len(self._rx):
            self._rx = bytearray()
            self._pos = 0
        return out
