"""A simulated flash filesystem for power-cut and corruption tests.

Implements the small fs interface firmware.journal uses (same as
journal.RealFS): open(path, mode) for "rb" / "ab" / "wb", rename, remove,
stat (size at index 6), listdir, sync. MicroPython + CPython.

Power cuts: every byte written costs one unit, and so does every metadata
change (rename, remove, the truncation of open(..., "wb")). With
cut_after=k the first k units happen; the unit after them raises PowerCut,
keeping exactly the bytes written before it (a write is cut mid-way), and a
rename is atomic: done or not. After a cut every call raises PowerCut until
reboot(), which models a restart: handles opened before it are dead, files
keep what reached them. A new Journal on the same FlashSim is the rebooted
firmware.

    fs = FlashSim(cut_after=1234)
    fs.units        units spent so far (bytes + metadata changes)
    fs.bytes_written, fs.syncs, fs.cut (True once the power went)
    fs.partial      (path, bytes kept, bytes asked) of the write that was cut
    fs.corrupt(path, offset, length, xor=0xFF)
    fs.reboot(cut_after=None) -> fs
"""


class PowerCut(Exception):
    pass


class FlashSim:
    def __init__(self, cut_after=None):
        self.files = {}
        self.units = 0
        self.bytes_written = 0
        self.syncs = 0
        self.cut_after = cut_after
        self.cut = False
        self.partial = None
        self._gen = 0

    # ---- power --------------------------------------------------------------
    def _alive(self):
        if self.cut:
            raise PowerCut("power is off")

    def _budget(self, want):
        """Units that may still be spent out of want (cuts the power when
        fewer)."""
        self._alive()
        if self.cut_after is None:
            return want
        left = self.cut_after - self.units
        if left < 0:
            left = 0
        return want if want <= left else left

    def _meta(self):
        if self._budget(1) < 1:
            self.cut = True
            raise PowerCut("power cut before a metadata change")
        self.units += 1

    def reboot(self, cut_after=None):
        self.cut = False
        self.cut_after = cut_after
        self.partial = None
        self._gen += 1
        return self

    # ---- faults -------------------------------------------------------------
    def corrupt(self, path, offset, length, xor=0xFF):
        data = self.files[path]
        for i in range(offset, min(offset + length, len(data))):
            data[i] ^= xor

    # ---- fs interface -------------------------------------------------------
    def open(self, path, mode):
        self._alive()
        if "w" in mode:
            self._meta()
            self.files[path] = bytearray()
        elif "a" in mode:
            if path not in self.files:
                self._meta()
                self.files[path] = bytearray()
        elif path not in self.files:
            raise OSError(2)  # ENOENT
        return SimFile(self, path, mode)

    def rename(self, old, new):
        self._alive()
        if old not in self.files:
            raise OSError(2)
        self._meta()
        self.files[new] = self.files.pop(old)

    def remove(self, path):
        self._alive()
        if path not in self.files:
            raise OSError(2)
        self._meta()
        del self.files[path]

    def stat(self, path):
        self._alive()
        if path not in self.files:
            raise OSError(2)
        return (0x8000, 0, 0, 0, 0, 0, len(self.files[path]), 0, 0, 0)

    def listdir(self, path):
        self._alive()
        pre = path.rstrip("/") + "/"
        return [p[len(pre):] for p in self.files if p.startswith(pre) and "/" not in p[len(pre):]]

    def sync(self, f=None, path=None):
        self._alive()
        self.syncs += 1


class SimFile:
    def __init__(self, sim, path, mode):
        self.sim = sim
        self.path = path
        self.mode = mode
        self.pos = 0
        self._gen = sim._gen
        self.closed = False

    def _live(self):
        s = self.sim
        s._alive()
        if self._gen != s._gen or self.closed:
            raise OSError(9)  # EBADF: opened before a reboot, or closed
        return s.files[self.path]

    def write(self, data):
        buf = self._live()
        if "r" in self.mode and "+" not in self.mode:
            raise OSError(9)
        s = self.sim
        want = len(data)
        ok = s._budget(want)
        if "a" in self.mode:
            self.pos = len(buf)
        buf[self.pos:self.pos + ok] = bytes(data[0:ok])
        self.pos += ok
        s.units += ok
        s.bytes_written += ok
        if ok < want:
            s.cut = True
            s.partial = (self.path, ok, want)
            raise PowerCut("power cut after %d of %d bytes" % (ok, want))
        return want

    def read(self, n=-1):
        buf = self._live()
        end = len(buf) if n is None or n < 0 else min(len(buf), self.pos + n)
        out = bytes(buf[self.pos:end])
        self.pos = end
        return out

    def readinto(self, mv):
        buf = self._live()
        n = min(len(mv), len(buf) - self.pos)
        if n <= 0:
            return 0
        mv[0:n] = buf[self.pos:self.pos + n]
        self.pos += n
        return n

    def seek(self, off, whence=0):
        buf = self._live()
        if whence == 1:
            off += self.pos
        elif whence == 2:
            off += len(buf)
        self.pos = off
        return off

    def tell(self):
        return self.pos

    def flush(self):
        self._live()

    def close(self):
        # Never raises: closing after a cut is what a finally: block does.
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
