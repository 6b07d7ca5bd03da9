# The board lane's flash: littlefs (vfs.VfsLfs2, the C library a board
# runs) on a RAM block device outside the Python heap, so that heap figures
# taken on the emulated board are the firmware's alone. MPS2-AN385 has
# 4 MB of SSRAM at 0x20000000 that the qemu port's image does not use.
import array
import time
import uctypes
import vfs

_BASE = 0x20000000
_BLOCK = 4096


class RamBlocks:
    """A NOR-flash-like block device: erase to 0xFF, program, read. Counts
    every operation and every erase per block (wear)."""

    def __init__(self, nblocks, base=_BASE):
        self.n = nblocks
        self.mem = memoryview(uctypes.bytearray_at(base, nblocks * _BLOCK))
        self.reads = self.progs = self.erases = 0
        self.us = 0     # emulated time spent in this Python driver (a board's is C)
        self.wear = array.array("H", bytes(2 * nblocks))   # erases per block (to 65,535)

    def readblocks(self, block, buf, off=0):
        t = time.ticks_us()
        a = block * _BLOCK + off
        buf[:] = self.mem[a:a + len(buf)]
        self.reads += 1
        self.us += time.ticks_diff(time.ticks_us(), t)

    def writeblocks(self, block, buf, off=None):
        t = time.ticks_us()
        if off is None:     # simple interface: whole blocks, erase included
            for i in range(len(buf) // _BLOCK):
                self._erase(block + i)
            off = 0
        a = block * _BLOCK + off
        self.mem[a:a + len(buf)] = buf
        self.progs += 1
        self.us += time.ticks_diff(time.ticks_us(), t)

    def ioctl(self, op, arg):
        if op == 6:
            t = time.ticks_us()
            self._erase(arg)
            self.us += time.ticks_diff(time.ticks_us(), t)
            return 0
        return self._info(op)

    def _info(self, op):
        if op == 4:
            return self.n
        if op == 5:
            return _BLOCK
        return 0

    def _erase(self, block):
        a = block * _BLOCK
        m = self.mem
        for i in range(a, a + _BLOCK, 256):
            m[i:i + 256] = _FF
        self.erases += 1
        if self.wear[block] < 65535:
            self.wear[block] += 1


_FF = b"\xff" * 256
bdev = None


def mount(nblocks=512, path="/", base=_BASE, fresh=True):
    """Mount littlefs at path, formatted first when fresh (else the image
    qemu loaded at base); /tmp is created for the suites' temporary
    folders. Returns the block device."""
    global bdev
    import os
    bdev = RamBlocks(nblocks, base)
    if fresh:
        vfs.VfsLfs2.mkfs(bdev)
    vfs.mount(vfs.VfsLfs2(bdev), path)
    os.chdir(path)
    try:
        os.mkdir("/tmp")
    except OSError:
        pass
    return bdev
