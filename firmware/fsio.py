# The filesystem calls firmware modules use, on the real `os` (MicroPython
# and CPython), and atomic records: write a temp file, rename it over the old
# one. An injected fs (sim.flash.FlashSim) offers the same methods,
# so power cuts can be simulated at any byte.
try:
    import os
except ImportError:  # pragma: no cover
    import uos as os


class RealFS:
    """open, rename, remove, stat, listdir, sync; mkdir, rmdir and statvfs
    where the platform has them."""

    def open(self, path, mode):
        return open(path, mode)

    def rename(self, old, new):
        os.rename(old, new)

    def remove(self, path):
        os.remove(path)

    def mkdir(self, path):
        os.mkdir(path)

    def rmdir(self, path):
        os.rmdir(path)

    def listdir(self, path):
        return os.listdir(path)

    def stat(self, path):
        return os.stat(path)

    def statvfs(self, path):
        return os.statvfs(path)

    def sync(self, f=None, path=None):
        # Make the bytes of f (or a rename in path's folder) durable: the one
        # call that commits on every target. CPython: flush + fsync;
        # MicroPython: flush (the commit on littlefs and FAT), then os.sync
        # where the port has it.
        fsync = getattr(os, "fsync", None)
        if f is not None:
            f.flush()
        if fsync is not None and (f is not None or path is not None):
            if f is not None:
                fsync(f.fileno())
                return
            d = path.rsplit("/", 1)[0] if "/" in path else "."
            fd = os.open(d or "/", os.O_RDONLY)
            try:
                fsync(fd)
            finally:
                os.close(fd)
            return
        s = getattr(os, "sync", None)
        if s is not None:
            s()


OS = RealFS()


def exists(fs, path):
    try:
        fs.stat(path)
        return True
    except OSError:
        return False


def save_atomic(fs, path, data):
    """Write `data` to path.tmp, then rename over path. The rename is the
    commit; FAT renames by delete + rename, which load_atomic() covers."""
    tmp = path + ".tmp"
    sync = getattr(fs, "sync", None)
    f = fs.open(tmp, "wb")
    try:
        f.write(data)
        if sync:
            sync(f)
    finally:
        f.close()
    fs.rename(tmp, path)
    if sync:
        sync(None, path)


def load_atomic(fs, path, valid):
    """The committed record, or None. A valid path wins (a leftover .tmp is
    an uncommitted write and is dropped); with no valid path, a valid .tmp is
    a commit whose rename was cut short and is completed."""
    tmp = path + ".tmp"
    raw = read(fs, path)
    if raw is not None and valid(raw):
        if exists(fs, tmp):
            try_remove(fs, tmp)
        return raw
    raw = read(fs, tmp)
    if raw is not None and valid(raw):
        try:
            fs.rename(tmp, path)
        except OSError:
            pass
        return raw
    return None


def close_all(*files):
    """Close every file given (None: skipped), also when an earlier close
    fails (EIO at a power cut): none is left open for the GC's finaliser
    to close, and report, later. The first failure is raised."""
    err = None
    for f in files:
        if f is not None:
            try:
                f.close()
            except Exception as e:  # noqa: BLE001 - raised below
                if err is None:
                    err = e
    if err is not None:
        raise err


def read(fs, path):
    try:
        f = fs.open(path, "rb")
    except OSError:
        return None
    try:
        return f.read()
    except OSError:
        return None
    finally:
        f.close()


def try_remove(fs, path):
    try:
        fs.remove(path)
    except OSError:
        pass
