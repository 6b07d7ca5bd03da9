# A pile running the real firmware with a simulated BMS per gun over CAN
# (sim/bms.py BmsGun): the rig of tests/mp/pilekit.py with each gun's
# vehicle being the GB/T 27930 charger side (firmware/bms.py).
from sim.hardware import SimClock, SimOutput
from sim.bms import BmsGun, QueueBus
from tests.mp.pilekit import T0, Rig


class BmsRig(Rig):
    """guns: how many; bus(): a new bus per gun (default QueueBus);
    profiles: SimBms arguments, one dict for every gun or a list per gun;
    sharing: one SimOutput per gun and cfg power_w."""

    def __init__(self, root, guns=1, bus=None, profile=None, power_w=60000, sharing=False,
                 cfg=None, confirm=True, settle=True, charger=None):
        self.root = root
        self.clock = SimClock(T0, step_ms=50)
        self.worlds = []
        for i in range(guns):
            p = profile[i] if isinstance(profile, list) else (profile or {})
            self.worlds.append(BmsGun(self.clock, bus() if bus else QueueBus(),
                                      charger=charger, **p))
        self.world = self.worlds[0]
        self.outputs = [SimOutput(x.bms) for x in self.worlds] if sharing else None
        c = {"power_w": power_w} if sharing else {}
        c.update(cfg or {})
        self.setup(guns, c, confirm, settle)

    def charger(self, i=0):
        return self.worlds[i].vehicle

    def bms(self, i=0):
        return self.worlds[i].bms
