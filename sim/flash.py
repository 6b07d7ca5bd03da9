"""A simulated flash filesystem for power-cut and corruption tests.

Implements the small fs interface firmware.journal uses (same as
fsio.RealFS): open(path, mode) for "rb" / "ab" / "wb", rename, remove,
stat (size at index 6), listdir, sync. MicroPython + CPython.

Power cuts: every byte written costs one unit, and so does every metadata
change (rename, remove, create, the truncation of open(..., "wb")). With
cut_after=k the first k units happen; the unit after them raises PowerCut
(a write is cut mid-way). After a cut every call raises PowerCut until
reboot(), which models a restart: handles opened before it are dead, files
keep what survived. A new Journal on the same FlashSim is the rebooted
firmware.

Durability (what a cut keeps):

- File bytes are durable once committed. Default (strict=False, littlefs
  and FAT as MicroPython uses them): f.flush(), f.close() and fs.sync(f)
  commit. strict=True: only fs.sync(f) (or fs.sync() for every file)
  commits, as on POSIX where close and flush reach only the page cache;
  fsio.RealFS.sync(f) is flush + fsync (CPython) or flush + os.sync
  (MicroPython), so it commits on every target and code that calls it
  passes both models.
- At the cut, the bytes of each file written since its last commit are
  reduced to a prefix chosen by `keep`: "all" (default: every byte written
  survives), "none" (all of them are lost), "half", or a callable
  keep(n) -> bytes kept out of n. The write that was cut counts among them.
- Metadata changes (create, truncate, rename, remove) are atomic and
  durable when the call returns: littlefs commits each one to its
  metadata pair, FatFs syncs the directory at the end of f_rename /
  f_unlink. fat=True models MicroPython's FAT rename onto an existing name,
  which unlinks the target first: two units, a cut between them leaves only
  the source.

    fs = FlashSim(cut_after=1234, strict=True, keep="none", fat=False)
    fs.units        units spent so far (bytes + metadata changes)
    fs.bytes_written, fs.syncs, fs.cut (True once the power went)
    fs.partial      (path, bytes of it written, bytes asked) of the cut write
    fs.lost         bytes dropped at the cut because they were not committed
    fs.corrupt(path, offset, length, xor=0xFF)
    fs.reboot(cut_after=None) -> fs
"""


class PowerCut(Exception):
    pass


class FlashSim:
    def __init__(self, cut_after=None, strict=False, keep="all", fat=False):
        self.files = {}
        self.units = 0
        self.bytes_written = 0
        self.syncs = 0
        self.cut_after = cut_after
        self.cut = False
        self.partial = None
        self.lost = 0
        self.strict = strict
        self.keep = keep
        self.fat = fat
        self._gen = 0
        # [buffer, committed length] per file content; found by identity (a
        # rename moves the buffer to another name, deepcopy keeps identity).
        self._dur = []

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
            self._power_off()
            raise PowerCut("power cut before a metadata change")
        self.units += 1

    def _kept(self, n):
        k = self.keep
        if k == "all":
            return n
        if k == "none":
            return 0
        if k == "half":
            return n // 2
        m = k(n)
        return 0 if m < 0 else (n if m > n else m)

    def _power_off(self):
        """The cut: uncommitted bytes of every file shrink to what `keep`
        leaves of them."""
        self.cut = True
        live = self.files
        dur = []
        for d in self._dur:
            buf, n = d
            found = False
            for v in live.values():
                if v is buf:
                    found = True
                    break
            if not found:
                continue  # removed or replaced: nothing to keep
            extra = len(buf) - n
            if extra > 0:
                k = self._kept(extra)
                if k < extra:
                    buf[n + k:] = b""
                    self.lost += extra - k
            d[1] = len(buf)
            dur.append(d)
        self._dur = dur

    def _track(self, buf):
        # forget contents no name holds any more (replaced or removed), so a
        # long run of compactions does not keep every old copy alive
        live = list(self.files.values())
        keep = []
        for d in self._dur:
            for v in live:
                if v is d[0]:
                    keep.append(d)
                    break
        keep.append([buf, 0])
        self._dur = keep

    def _commit(self, buf):
        for d in self._dur:
            if d[0] is buf:
                d[1] = len(buf)
                return

    def reboot(self, cut_after=None):
        if not self.cut:
            self._power_off()  # a reboot without a cut still loses the RAM
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
            b = bytearray()
            self.files[path] = b
            self._track(b)
        elif "a" in mode:
            if path not in self.files:
                self._meta()
                b = bytearray()
                self.files[path] = b
                self._track(b)
        elif path not in self.files:
            raise OSError(2)  # ENOENT
        return SimFile(self, path, mode)

    def rename(self, old, new):
        self._alive()
        if old not in self.files:
            raise OSError(2)
        if self.fat and new in self.files and new != old:
            self._meta()            # FAT: the target is unlinked first ...
            del self.files[new]
        self._meta()                # ... then the entry renamed
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
        """f: commit that file's bytes; neither: every file's (os.sync);
        path alone: its folder, whose entries are already durable."""
        self._alive()
        self.syncs += 1
        if f is not None:
            f._commit()
        elif path is None:
            for d in self._dur:
                d[1] = len(d[0])


class SimFile:
    def __init__(self, sim, path, mode):
        self.sim = sim
        self.path = path
        self.mode = mode
        self.pos = 0
        self._gen = sim._gen
        self._buf = sim.files[path]
        self.closed = False

    def _live(self):
        s = self.sim
        s._alive()
        if self._gen != s._gen or self.closed:
            raise OSError(9)  # EBADF: opened before a reboot, or closed
        return self._buf

    def _commit(self):
        self._live()
        self.sim._commit(self._buf)

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
            s.partial = (self.path, ok, want)
            s._power_off()
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
        if not self.sim.strict:
            self.sim._commit(self._buf)   # littlefs / FAT: flush commits

    def close(self):
        # Never raises: closing after a cut is what a finally: block does.
        s = self.sim
        if not self.closed and not s.cut and self._gen == s._gen and not s.strict:
            s._commit(self._buf)          # littlefs / FAT: close commits
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
