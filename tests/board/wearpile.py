# Long-run flash wear of the whole pile under the unix port's littlefs:
# tests/board/boardbench.py's `wear` (the pile of tests/mp/pilekit.Rig:
# the real firmware on simulated hardware, a scripted platform; sessions of
# 30 minutes at 60 kW, each billed, confirmed and settled) as the board
# runs it, on the same littlefs C library and VfsLfs2 settings (4 KB
# blocks, block_cycles 100), fast enough for hundreds of sessions.
#   micropython -X heapsize=8M tests/board/wearpile.py SESSIONS [BLOCKS] [--sites]
# Prints boardbench's "ok k=v ..." line, then "block i=n ..." for the ten
# most-erased blocks; with --sites also "site NAME=n ..." (erases per
# firmware call site, the innermost firmware frame of each erase).
import sys

import vfs

sys.path.insert(0, ".")
sys.path.insert(0, "tests/board")
sys.path.insert(0, "tools")
import board_fsimage  # noqa: E402


class Blocks(board_fsimage.Blocks):
    """tools/board_fsimage.py's RAM blocks with the counters boardbench
    reads (n, wear, erases, progs); wear is not capped."""

    def __init__(self, n):
        super().__init__(n)
        self.wear = [0] * n
        self.erases = self.progs = 0
        self.sites = None
        self.where = "other"
        self.us = 0

    def writeblocks(self, block, buf, off=0):
        self.progs += 1
        return super().writeblocks(block, buf, off)

    def ioctl(self, op, arg):
        if op == 6:
            self.erases += 1
            self.wear[arg] += 1
            if self.sites is not None:
                k = self.where
                self.sites[k] = self.sites.get(k, 0) + 1
        return super().ioctl(op, arg)


def _label(bd, fn, name):
    # erases during fn are counted under name (nested calls: outer/inner)
    def w(*a, **k):
        before = bd.where
        bd.where = name if before == "other" else before + "/" + name
        try:
            return fn(*a, **k)
        finally:
            bd.where = before
    return w


def _sites(bd):
    """Erases per call site: the journal's calls, the index and side-file
    slot writes inside them, and every atomic file save (by file name)."""
    from firmware import fsio, journal
    J = journal.Journal
    for m in ("recover", "open_session", "checkpoint", "seal", "confirm", "settle", "refuse",
              "illegal", "compact", "issue_serial", "close_interrupted"):
        setattr(J, m, _label(bd, getattr(J, m), m))
    J._iwrite = _label(bd, J._iwrite, "index")
    J._side_ck = _label(bd, J._side_ck, "side_ck")
    save = fsio.save_atomic

    def save_atomic(fs, path, data):
        return _label(bd, save, "save:" + path.split("/")[-1])(fs, path, data)
    from firmware import auth
    fsio.save_atomic = save_atomic
    auth.save_atomic = save_atomic
    bd.sites = {}


def main(sessions, nblocks, sites):
    import boardbench
    bd = Blocks(nblocks)
    vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), "/w")
    if sites:
        _sites(bd)
    boardbench.wear(bd, sessions, root="/w/p")
    top = sorted(range(nblocks), key=lambda i: -bd.wear[i])[:10]
    print("block " + " ".join("%d=%d" % (i, bd.wear[i]) for i in top))
    if sites:
        print("site " + " ".join("%s=%d" % kv for kv in sorted(bd.sites.items(), key=lambda kv: -kv[1])))


args = [a for a in sys.argv[1:] if not a.startswith("-")]
main(int(args[0]), int(args[1]) if len(args) > 1 else 256, "--sites" in sys.argv)
