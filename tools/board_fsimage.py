# A littlefs image holding a pile's journal with N pending bills, for the
# board's boot heap figures (tools/board_heap.py loads it into the emulated
# board's PSRAM). Runs under the `micropython` unix port, whose vfs.VfsLfs2
# is the same littlefs as the board's:
#
#   micropython -X heapsize=200M tools/board_fsimage.py OUT BLOCKS PENDING [BUILD_BLOCKS]
#
# With BUILD_BLOCKS the sessions are written on a larger scratch partition
# first (the uncompacted journal of 10,000 sessions is 4.4 MB), then the
# compacted journal is copied to the BLOCKS partition and compacted once
# more there: proof that BLOCKS holds the backlog and its compaction.
#
# 4 KB blocks. The journal is /p/journal as firmware.pile.Pile names it,
# written by the journal benchmark's builder (each session: header, three
# checkpoints, bill) and compacted, as a journal is after a boot. Exit
# status 1 when it does not fit (the partition is too small).
import sys
import vfs
import os

sys.path.insert(0, ".")
from sim.journal_bench import build_journal  # noqa: E402

_BLOCK = 4096


class Blocks:
    def __init__(self, n):
        self.n = n
        self.mem = bytearray(b"\xff" * (n * _BLOCK))
        self.mv = memoryview(self.mem)

    def readblocks(self, block, buf, off=0):
        a = block * _BLOCK + off
        buf[:] = self.mv[a:a + len(buf)]

    def writeblocks(self, block, buf, off=0):
        a = block * _BLOCK + off
        self.mv[a:a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return _BLOCK
        if op == 6:
            a = arg * _BLOCK
            for i in range(a, a + _BLOCK, 4096):
                self.mv[i:i + 4096] = b"\xff" * 4096
        return 0


def _fresh(blocks, path):
    bd = Blocks(blocks)
    vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), path)
    os.mkdir(path + "/p")
    return bd


def main(out, blocks, pending, build_blocks=0):
    bd = _fresh(build_blocks or blocks, "/img")
    try:
        used = build_journal("/img/p/journal", pending, True)
    except OSError as e:
        print("does not fit: %d pending bills on %d blocks (%s)" % (pending, blocks, e))
        sys.exit(1)
    if build_blocks:
        from firmware.journal import Journal
        target = _fresh(blocks, "/dst")
        try:
            with open("/img/p/journal", "rb") as src, open("/dst/p/journal", "wb") as dst:
                while True:
                    b = src.read(4096)
                    if not b:
                        break
                    dst.write(b)
            j = Journal("/dst/p/journal", limit_bytes=4 * 1024 * 1024)
            j.recover()
            assert j.count("pending") == pending
            j.compact()
        except OSError as e:
            print("does not fit: %d pending bills on %d blocks (%s)" % (pending, blocks, e))
            sys.exit(1)
        vfs.umount("/img")
        bd = target
        os.chdir("/")
        vfs.umount("/dst")
        vfs.mount(vfs.VfsLfs2(bd), "/img")
    size = os.stat("/img/p/journal")[6]
    vfs.umount("/img")
    with open(out, "wb") as f:
        f.write(bd.mem)
    print("ok pending=%d journal=%d used=%d blocks=%d" % (pending, size, used, blocks))


if __name__ == "__main__":    # tests/board/wearjournal.py imports Blocks
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
