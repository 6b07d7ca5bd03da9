"""Flash wear and time per control tick on the emulated board (qemu,
MPS2-AN385, Cortex-M3), the firmware frozen as bytecode, its journal on
real littlefs (4 KB blocks) over a RAM block device that counts erases.

    python3 tools/board_bench.py wear --sessions 10      # 1 MB partition, every bill settled
    python3 tools/board_bench.py wear --backlog 1000     # 1,000 pending bills kept, platform silent
    python3 tools/board_bench.py wear-journal --sessions 1000   # the journal alone, unix port's littlefs
    python3 tools/board_bench.py wear-pile --sessions 1000      # the whole pile, unix port's littlefs
    python3 tools/board_bench.py wear-pile --sessions 50 --sites  # and erases per firmware call site
    python3 tools/board_bench.py ticks                   # qemu -icount shift=0: instructions per poll
    python3 tools/board_bench.py ocmf                    # the same clock: instructions per OCMF signing step

wear: after two warm-up sessions, N sessions of 30 minutes at 60 kW (one
checkpoint every 0.1 kWh, bill, confirm, settle), erases counted per block;
the lifetime is 100,000 erase cycles over the most-erased block's rate at
20 sessions a day. ticks: with -icount shift=0 every instruction takes 1 ns
of emulated time, so time.ticks_us() on the board counts thousands of
instructions; the figure is per pile.poll() while charging.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sim import board as board_test  # noqa: E402
from sim.board import ROOT, Board  # noqa: E402

PSRAM = 0x21000000


def _run(elf, code, icount=None, extra=(), timeout=3600):
    b = Board(elf, icount=icount, extra=extra)
    try:
        out, err = b.raw_exec(code, timeout)
    finally:
        b.close()
    if err.strip() or "ok " not in out:
        raise SystemExit("board failed:\n" + out + err)
    line = [ln for ln in out.splitlines() if ln.startswith("ok ")][-1]
    return dict(kv.split("=") for kv in line.split()[1:])


def wear(elf, sessions, backlog, blocks=256):
    extra = ()
    tmp = None
    if backlog:
        tmp = tempfile.mkdtemp(prefix="pc-board-wear-")
        img = os.path.join(tmp, "j.img")
        mp = shutil.which("micropython") or os.path.join(ROOT, ".venv", "bin", "micropython")
        subprocess.run([mp, "-X", "heapsize=200M", "tools/board_fsimage.py", img, str(blocks),
                        str(backlog)], cwd=ROOT, check=True)
        extra = ("-device", "loader,file=%s,addr=0x%x,force-raw=on" % (img, PSRAM))
        code = ("import boardfs\nbd = boardfs.mount(%d, '/', %d, False)\nimport boardbench\n"
                "boardbench.wear(bd, %d, settle=False, journal_bytes=%d)\n"
                % (blocks, PSRAM, sessions, 512 * 1024))
    else:
        code = ("import boardfs\nbd = boardfs.mount(%d)\nimport boardbench\nboardbench.wear(bd, %d)\n"
                % (blocks, sessions))
    try:
        r = _run(elf, code, extra=extra)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    per = int(r["max_block"]) / float(sessions)
    years = 100000 / (per * 20 * 365) if per else float("inf")
    avg = int(r["erases"]) / float(sessions) / int(r["blocks"])
    print("| %s | %d KB | %s | %s | %.2f | %.3f | %.0f |" % (
        "%d pending kept, platform silent" % backlog if backlog else "every bill settled",
        blocks * 4, sessions, r["erases"], per, avg, years))
    return r


def _unix(script, args, case, sessions, blocks):
    """A wear script under the unix port's littlefs; prints the table row
    (and the script's other lines: most-erased blocks, call sites)."""
    mp = shutil.which("micropython") or os.path.join(ROOT, ".venv", "bin", "micropython")
    out = subprocess.run([mp, "-X", "heapsize=8M", script, str(sessions), str(blocks)] + list(args),
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("ok ")][-1]
    r = dict(kv.split("=") for kv in line.split()[1:])
    per = int(r["max_block"]) / float(sessions)
    years = 100000 / (per * 20 * 365) if per else float("inf")
    avg = int(r["erases"]) / float(sessions) / blocks
    print("| %s | %d KB | %s | %s | %.2f | %.3f | %.0f |" % (
        case, blocks * 4, sessions, r["erases"], per, avg, years))
    for ln in out.splitlines():
        if ln.startswith(("block ", "site ")):
            print(ln)
    return r


def wear_journal(sessions, blocks=256):
    """The journal alone on the unix port's littlefs (tests/board/wearjournal.py):
    long enough for littlefs's metadata-pair relocation (block_cycles 100)."""
    return _unix("tests/board/wearjournal.py", (), "the journal alone, unix port", sessions, blocks)


def wear_pile(sessions, blocks=256, sites=False):
    """The whole pile, as `wear` runs it on the board, on the unix port's
    littlefs (tests/board/wearpile.py): hundreds of sessions in minutes."""
    return _unix("tests/board/wearpile.py", ("--sites",) if sites else (),
                 "the whole pile, every bill settled, unix port", sessions, blocks)


def ticks(elf, minutes):
    code = ("import boardfs\nbd = boardfs.mount(512)\nimport boardbench\nboardbench.ticks(bd, %d)\n" % minutes)
    r = _run(elf, code, icount=0)
    mean = int(r["mean_us"]) * 1000
    worst = int(r["worst_us"]) * 1000
    print("| %s polls over %s simulated minutes | %d | %d | %.1f | %.1f | %d |" % (
        r["polls"], r["sim_minutes"], mean, worst, mean / 168e3, worst / 168e3,
        int(r["fs_driver_us"]) * 1000 // int(r["polls"])))
    return r


def ocmf(elf):
    code = "import boardfs\nbd = boardfs.mount(512)\nimport boardbench\nboardbench.ocmf(bd)\n"
    r = _run(elf, code, icount=0)
    for tag, what in (("key", "the key's public point (first boot)"), ("sign", "one bill's signature")):
        n = int(r[tag + "_steps"])
        worst = int(r[tag + "_worst_us"]) * 1000
        total = int(r[tag + "_total_us"]) * 1000
        print("| %s | %d | %d | %d | %.1f | %.0f |" % (what, n, total // n, worst, worst / 168e3,
                                                     total / 168e3))
    w = int(r["charging_worst_poll_us"]) * 1000
    print("| a poll while charging, worst (for comparison) | | | %d | %.1f | |" % (w, w / 168e3))
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wear")
    w.add_argument("--sessions", type=int, default=10)
    w.add_argument("--backlog", type=int, default=0)
    wj = sub.add_parser("wear-journal")
    wj.add_argument("--sessions", type=int, default=1000)
    wp = sub.add_parser("wear-pile")
    wp.add_argument("--sessions", type=int, default=1000)
    wp.add_argument("--sites", action="store_true", help="erases per firmware call site")
    t = sub.add_parser("ticks")
    t.add_argument("--minutes", type=int, default=10)
    sub.add_parser("ocmf")
    a = p.parse_args(argv)
    head = ("| case | partition | sessions | erases | most-erased block, erases / session "
            "| mean erases / block / session | years at 20 sessions/day, 100k cycles |")
    if a.what in ("wear-journal", "wear-pile"):
        print(head)
        if a.what == "wear-pile":
            wear_pile(a.sessions, sites=a.sites)
        else:
            wear_journal(a.sessions)
        return 0
    elf = board_test.build()
    if a.what == "wear":
        print(head)
        wear(elf, a.sessions, a.backlog)
    elif a.what == "ocmf":
        print("| work | steps (polls) | instructions / step, mean | worst step | worst step, ms at "
              "168 MHz | all steps, ms at 168 MHz |")
        ocmf(elf)
    else:
        print("| run | instructions / poll, mean | worst | ms at 168 MHz, mean | worst "
              "| Python block driver, instructions / poll (left out) |")
        ticks(elf, a.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
