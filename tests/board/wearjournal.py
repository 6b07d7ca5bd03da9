# Long-run flash wear of the journal alone, under the unix port's littlefs
# (the same C library and VfsLfs2 settings as the board: 4 KB blocks,
# block_cycles 100), fast enough for 1,000 sessions: littlefs relocates a
# metadata pair after 100 erases, so a 10-session run on the board
# (tools/board_bench.py wear) sees a folder's pair before it moves.
#   micropython -X heapsize=8M tests/board/wearjournal.py SESSIONS [BLOCKS]
# Each session: open, 300 checkpoints (48 B), seal (180 B), confirm,
# settle; two warm-up sessions first. Prints one "ok k=v ..." line.
import os
import sys

import vfs

sys.path.insert(0, ".")
sys.path.insert(0, "tools")
import board_fsimage  # noqa: E402
from firmware.journal import Journal  # noqa: E402


class Blocks(board_fsimage.Blocks):
    """tools/board_fsimage.py's RAM blocks, counting erases per block."""

    def __init__(self, n):
        super().__init__(n)
        self.wear = [0] * n
        self.erases = 0

    def ioctl(self, op, arg):
        if op == 6:
            self.erases += 1
            self.wear[arg] += 1
        return super().ioctl(op, arg)


def main(sessions, nblocks=256):
    bd = Blocks(nblocks)
    vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), "/w")
    os.mkdir("/w/p")
    j = Journal("/w/p/journal")
    j.recover()

    def session(i):
        s = "%014d01%012d%04d" % (32010200000001, 261207000000 + i, i % 10000)
        j.open_session(s, b"H" * 40)
        for k in range(300):
            j.checkpoint(s, b"%048d" % k)
        j.seal(s, b"B" * 180)
        j.confirm(s)
        j.settle(s)

    for i in range(2):
        session(i)
    bd.wear = [0] * nblocks
    e0 = bd.erases
    for i in range(sessions):
        session(100 + i)
    print("ok sessions=%d erases=%d max_block=%d blocks_erased=%d blocks=%d"
          % (sessions, bd.erases - e0, max(bd.wear), sum(1 for x in bd.wear if x), nblocks))


main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 256)
