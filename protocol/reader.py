# The stream reader: finds YKC frames in a serial or TCP byte stream.
# Re-exported by protocol.codec (use codec.FrameReader).
from protocol.codec import MAX_FRAME, START, _decode
from protocol.errors import BadCRC, BadLength, FrameError


class FrameReader:
    """Finds frames in a byte stream (serial or TCP).

    `push(data)` returns, in stream order, a Frame for each good frame and a
    FrameError instance for each bad one; the reader resynchronises on the
    next 0x68 and keeps going. It holds at most one frame (MAX_FRAME bytes,
    preallocated) between calls. `tolerant=True` accepts byte-swapped CRCs
    (some real piles send them) and counts them in `swapped_crc`;
    `lenient=True` reads fields as protocol/lenient.py says (piles that are
    not ours), each Frame's `problems` naming what was given way on.
    `decode` replaces codec._decode (same arguments and results): the
    host's fast path, host/fastcodec.py.
    """

    def __init__(self, tolerant=False, lenient=False, decode=None):
        self.tolerant = tolerant
        self.lenient = lenient
        self._decode = decode or _decode
        self._buf = bytearray(MAX_FRAME)
        self._mv = memoryview(self._buf)
        self._n = 0
        self.frames = 0
        self.errors = 0
        self.skipped = 0       # garbage bytes dropped while hunting for 0x68
        self.swapped_crc = 0

    def push(self, data):
        out = []
        data = memoryview(data)
        total = len(data)
        pos = 0
        buf = self._buf
        mv = self._mv
        n = self._n
        while pos < total:
            take = MAX_FRAME - n
            if take > total - pos:
                take = total - pos
            buf[n:n + take] = data[pos:pos + take]
            n += take
            pos += take
            i = self._scan(out, n)
            if i:
                # Keep only the unfinished tail (at most one frame) at the front.
                buf[0:n - i] = mv[i:n]
                n -= i
        self._n = n
        return out

    def _scan(self, out, end):
        # Reports every frame complete in buf[:end]; returns the bytes consumed.
        buf = self._buf
        i = 0
        while i < end:
            if buf[i] != START:
                i += 1
                self.skipped += 1
                continue
            if end - i < 2:
                break
            ln = buf[i + 1]
            if ln < 4:
                out.append(BadLength("length byte %d is below the minimum 4" % ln))
                self.errors += 1
                i += 1
                continue
            n = ln + 4
            if end - i < n:
                break
            try:
                f = self._decode(self._mv, i, n, self.tolerant, self.lenient)
            except FrameError as e:
                self.errors += 1
                out.append(e)
                # A bad CRC means the boundary is in doubt: rescan from the
                # next byte so a good frame hidden behind a false start is found.
                i += 1 if isinstance(e, BadCRC) else n
                continue
            if f.crc_swapped:
                self.swapped_crc += 1
            self.frames += 1
            out.append(f)
            i += n
        return i

    def pending(self):
        return self._n
