# A pile running the real firmware on simulated hardware, wired to the
# scripted platform end (sim/platform.py) over an in-memory UART. Shared by
# dual-interpreter tests.
from sim.loopuart import LoopUart
from firmware.pile import Pile
from sim.hardware import SimOutput, SimWorld
from sim.platform import ScriptedPlatform
from firmware.tariff import Tariff
from protocol import fields as F
from tests.mp.util import rmtree

PILE = "55031412782305"
T0 = F.to_secs(2026, 11, 24, 10, 0, 0)


def tariff4():
    # sharp 10-12, peak 8-10 and 12-18, flat 18-22, valley otherwise.
    slots = []
    for i in range(48):
        h = i // 2
        slots.append(0 if 10 <= h < 12 else 1 if 8 <= h < 18 else 2 if 18 <= h < 22 else 3)
    return Tariff("0100", [(120000, 40000), (100000, 40000), (70000, 40000), (30000, 40000)], slots)


class Rig:
    """One pile + world + platform; reboot() keeps the flash folder."""

    def __init__(self, root, power_w=60000, soc=20, confirm=True, settle=True, vin=None, cfg=None,
                 ticks=0, wrap=0, guns=1, sharing=False):
        self.root = root
        self.world = SimWorld(now=T0, pile_max_w=power_w, soc=soc, vin=vin, ticks=ticks, wrap=wrap)
        # guns > 1: one world (contactor, vehicle, meter) per gun on one clock
        self.worlds = [self.world]
        for _ in range(guns - 1):
            self.worlds.append(SimWorld(pile_max_w=power_w, soc=soc, vin=vin,
                                        clock=self.world.clock))
        # sharing: one power output per gun (firmware/sharing.py), cfg power_w
        self.outputs = [SimOutput(x.vehicle) for x in self.worlds] if sharing else None
        self.setup(guns, cfg, confirm, settle)

    # `with _rig() as r:` removes the pile's flash folder however the test ends.
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        rmtree(self.root)

    def setup(self, guns, cfg, confirm, settle):
        """The pile's cfg (guns, extra cfg) and its first boot."""
        self.cfg = {"pile": PILE, "gun": "01", "tariff": tariff4(), "hmi_version": "103"}
        if guns > 1:
            self.cfg["guns"] = guns
        if cfg:
            self.cfg.update(cfg)
        self.confirm = confirm
        self.settle = settle
        self.reboots = 0
        self.boot()

    def boot(self):
        a, b = LoopUart.pair()
        w = self.world
        old = getattr(self, "platform", None)
        if old is not None:
            old.pump()  # what the pile wrote before the reset still arrives
        if len(self.worlds) == 1:
            hw = (w.meter, w.contactor, w.vehicle)
        else:
            ws = self.worlds
            hw = ([x.meter for x in ws], [x.contactor for x in ws], [x.vehicle for x in ws])
        self.pile = Pile(self.cfg, self.root, w.clock, a, hw[0], hw[1], hw[2],
                         reboot=self._reboot, outputs=self.outputs)
        self.platform = ScriptedPlatform(b, self.confirm, self.settle, ack_extra=True, strict=True)
        if old is not None:  # one platform history across the pile's boots
            self.platform.frames = old.frames
            self.platform.confirm = old.confirm
            self.platform.settle_result = old.settle_result

    def _reboot(self):
        self.reboots += 1
        self.power_cut()

    def power_cut(self):
        """Every contactor drops out and the pile boots again on its flash."""
        for x in self.worlds:
            x.contactor.open()
        self.boot()

    def run(self, ms, until=None):
        clock = self.world.clock
        t0 = clock.ticks_ms()
        while clock.ticks_diff(clock.ticks_ms(), t0) < ms:
            d = self.pile.poll()
            self.platform.pump()
            if until is not None and until():
                return True
            left = ms - clock.ticks_diff(clock.ticks_ms(), t0)
            clock.sleep_ms(max(1, min(d, left, 1000)))
        return until is None

    def online(self):
        self.run(30000, lambda: self.pile.link.online)
        assert self.pile.link.online

    def start(self, serial, balance=100000, gun="01", **targets):
        if targets:
            v = {"serial": serial, "pile": PILE, "gun": gun, "logical_card": "1000000573",
                 "card": "D14B0A54", "balance": balance, "target_amount": targets.get("amount", 0),
                 "target_energy": targets.get("energy", 0), "target_minutes": targets.get("minutes", 0),
                 "target_soc": targets.get("soc", 0), "flags": 0}
            self.platform.send("ext_start", v)
        else:
            self.platform.send("remote_start", {"serial": serial, "pile": PILE, "gun": gun,
                                                "logical_card": "1000000573", "card": "D14B0A54",
                                                "balance": balance})

    def stop(self, gun="01"):
        self.platform.send("remote_stop", {"pile": PILE, "gun": gun})

    def charge(self, serial, ms, after_ms):
        """A session on gun 01: started, `ms` of charging, stopped, then
        `after_ms` more (its bill's round trip)."""
        self.start(serial)
        self.run(ms)
        self.stop()
        self.run(after_ms)

    def status(self):
        """The fields of the pile's answer to a status_query."""
        k = len(self.platform.named("status_reply"))
        self.platform.send("status_query", {"pile": self.pile.pile})
        self.run(2000, lambda: len(self.platform.named("status_reply")) > k)
        return self.platform.named("status_reply")[-1].fields


def serial(n, gun="01"):
    return PILE + gun + "261124100000" + "%04d" % n
