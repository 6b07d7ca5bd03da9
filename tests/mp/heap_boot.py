# What the pile's code and a booted pile keep on the heap (issue 18: the
# router and firmware/handlers.py may add at most 1 KB). Runs under
# MicroPython (from .mpy, as tools/mp_heapcap.sh builds them) and CPython:
#
#   micropython -m tests.mp.heap_boot        (from the repository's root)
#
# prints "modules N" (gc.mem_alloc after importing the pile and its test
# rig), "boot N" (a Pile built and logged in, beyond the imports) and
# "session N" (one start, stop, bill, confirm and settle, beyond the boot).
import gc


def _alloc():
    gc.collect()
    return gc.mem_alloc() if hasattr(gc, "mem_alloc") else 0


def main():
    base = _alloc()
    from tests.mp import pilekit as K
    from tests.mp.util import tmpdir
    modules = _alloc()
    rig = K.Rig(tmpdir())
    rig.online()
    boot = _alloc()
    rig.start(K.serial(1))
    rig.run(60000)
    rig.stop()
    rig.run(30000, lambda: rig.pile.journal.pending() == [] and rig.platform.named("settled_reply"))
    session = _alloc()
    print("modules", modules - base)
    print("boot", boot - modules)
    print("session", session - boot)


main()
