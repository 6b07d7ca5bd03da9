# Power sharing between the guns of one pile (docs/guns.md, "Power
# sharing"). Every control tick the pile's cap is worked out from what
# limits it now, the cap is divided among the guns that are charging, and
# each gun's power output is commanded to its share before any power flows
# under the new figures:
#
#   cap = min(healthy modules x module_w, rating_w) x 0x52 percentage / 100,
#         and no more than the site cap the bridge pushed (0 = none)
#
# Division: max-min fair over each gun's demand (its BMS's BCL, the
# vehicle's own limit), by priority: the guns of the highest priority share
# first, each getting its demand or an equal share of what is left,
# whichever is smaller (water-filling); what they do not take goes to the
# next priority. Integers in W; the sum of the shares never exceeds the cap
# (a remainder of a few W goes 1 W each to the first guns in gun order).
#
# Outputs (hardware, injected): one per gun, with set_limit(w), the power
# the gun's rectifier modules may deliver. Decreases are commanded before
# increases, so the pile never draws more than the cap while shares move.
# A module fault lowers the cap and so every share; it never ends a session
# (firmware/session.py does not count a gun held at ~0 W by sharing as "no
# current").
from firmware.session import CHARGING

from protocol import const

TICK_MS = const(100)        # the control tick: every change applied within one
_MIN_PCT = const(30)        # YKC 0x52: 30..100 % of rated power
_MAX_PCT = const(100)
_UNKNOWN_W = const(400000)  # no demand and no rating known: assume a lot (as session.py)


def allocate(cap, demands, prios, out):
    """Max-min fair shares of `cap` W over `demands` (W, 0 = not charging)
    by priority (higher first) into `out` (a list as long as demands).
    Returns the sum handed out (<= cap). Allocates nothing on the heap."""
    n = len(demands)
    for i in range(n):
        out[i] = 0
    left = cap if cap > 0 else 0
    done = 0                # bit i: gun i is served (at its demand, or idle)
    for i in range(n):
        if demands[i] <= 0:
            done |= 1 << i
    while left > 0 and done != (1 << n) - 1:
        top = -1            # the highest priority still wanting power
        for i in range(n):
            if not done & (1 << i) and prios[i] > top:
                top = prios[i]
        k = 0
        for i in range(n):
            if not done & (1 << i) and prios[i] == top:
                k += 1
        share = left // k
        sat = False         # someone wants no more than an equal share
        for i in range(n):
            if not done & (1 << i) and prios[i] == top and demands[i] - out[i] <= share:
                left -= demands[i] - out[i]
                out[i] = demands[i]
                done |= 1 << i
                sat = True
        if sat:
            continue        # the rest share what they left
        for i in range(n):
            if not done & (1 << i) and prios[i] == top:
                out[i] += share
                left -= share
        for i in range(n):  # the remainder (< k W): 1 W each, in gun order
            if left <= 0:
                break
            if not done & (1 << i) and prios[i] == top:
                out[i] += 1
                left -= 1
        break               # this priority takes all that is left
    return (cap if cap > 0 else 0) - left


def gun_demand(g):
    """W gun g would take now: the vehicle's (its BMS's BCL) demand, else
    its own limit, within the gun's rating (max_power_w). 0: the BMS asks
    for nothing (full)."""
    v = g.vehicle
    d = getattr(v, "demand", None)
    top = g.max_power_w
    if d is None:               # no BMS demand: as much as the gun may give
        d = v.max_power or top or _UNKNOWN_W
    if top and d > top:
        d = top
    return d


def set_gun_limit(g, w):
    """Gun g's output is commanded to w W: the limit its charge control
    plans with follows. A lower one tightens the prediction; a higher one
    is planned for at once (a sample now, at the new ceiling), so a target
    is not crossed by power that rose between two samples."""
    g.power_limit = w
    tr = g.trade
    if tr is None or g.state != CHARGING:
        return
    top = g.vehicle.max_power
    c = w if not top or w < top else top
    m = c + c // 16
    if m > tr.pmax:
        tr.pmax = m
        tr.pp = m
        tr.rise = True
        g._wait = 0
    else:
        tr.pmax = m
        if tr.pp > m:
            tr.pp = m


class Sharing:
    """guns: the pile's firmware.session.Gun list; outputs: one per gun
    (set_limit(w)); rating_w: the pile's rated output; modules / module_w:
    the rectifier modules (0: the rating alone limits); prios: per gun
    (default all equal)."""

    def __init__(self, guns, outputs, rating_w, modules=0, module_w=0, prios=None,
                 tick_ms=TICK_MS, log=None):
        n = len(guns)
        self.guns = guns
        self.outputs = outputs
        self.rating_w = rating_w
        self.modules = modules
        self.module_w = module_w
        self.faulted = 0            # modules out of service
        self.percent = _MAX_PCT     # the platform's 0x52 max_power
        self.site_cap = 0           # W, pushed by the bridge; 0 = none
        self.gun_cap = [0] * n      # W per gun (0xDC, OCPP per-EVSE profiles); 0 = none
        self.prios = list(prios) if prios else [0] * n
        self.tick_ms = tick_ms
        self._log = log
        self.demand = [0] * n
        self.share = [0] * n        # what each output is commanded now
        self._new = [0] * n
        self.ticks = 0
        self.changes = 0
        for i in range(n):          # nothing flows before the first share
            outputs[i].set_limit(0)

    def cap(self):
        c = self.rating_w
        if self.modules:
            m = (self.modules - self.faulted) * self.module_w
            if m < c:
                c = m
        c = c * self.percent // 100
        if self.site_cap and self.site_cap < c:
            c = self.site_cap
        return c if c > 0 else 0

    def set_percent(self, pct):
        """0x52 max_power (30..100 %). False (nothing changed) outside it."""
        if pct < _MIN_PCT or pct > _MAX_PCT:
            return False
        self.percent = pct
        return True

    def set_site_cap(self, w):
        self.site_cap = w if w > 0 else 0

    def set_gun_cap(self, i, w):
        self.gun_cap[i] = w if w > 0 else 0

    def module_fault(self, faulted):
        """How many modules are out of service now (0..modules)."""
        if faulted < 0:
            faulted = 0
        if faulted > self.modules:
            faulted = self.modules
        if faulted != self.faulted and self._log:
            self._log("power modules: %d of %d out of service" % (faulted, self.modules))
        self.faulted = faulted

    def _most(self, i):
        g = self.guns[i]
        top = g.max_power_w or _UNKNOWN_W
        gc = self.gun_cap[i]
        return gc if gc and gc < top else top

    def _group(self, i):
        # Parallel charging: gun i (main) and its auxiliary feed one vehicle.
        # The group's demand (the vehicle's, on the main gun) is split
        # between the two, each within its own rating and cap; allocate()
        # then shares the cap as for any guns, so never over it.
        guns = self.guns
        dem = self.demand
        g = guns[i]
        for j in range(len(guns)):
            if j != i and guns[j].group == g.group and dem[j]:
                d = getattr(g.vehicle, "demand", None)
                total = dem[i] + dem[j] if d is None else d
                a, b = self._most(i), self._most(j)
                x = total - total // 2
                y = total // 2
                if x > a:
                    y += x - a
                    x = a
                if y > b:
                    x += y - b
                    y = b
                dem[i] = x if x < a else a
                dem[j] = y

    def tick(self):
        """Divide the cap and command every output: decreases first."""
        guns = self.guns
        n = len(guns)
        dem = self.demand
        for i in range(n):
            g = guns[i]
            d = gun_demand(g) if g.state == CHARGING else 0
            gc = self.gun_cap[i]
            dem[i] = gc if gc and d > gc else d
        for i in range(n):
            if guns[i].role == 1 and dem[i]:
                self._group(i)
        new = self._new
        allocate(self.cap(), dem, self.prios, new)
        old = self.share
        for i in range(n):
            if new[i] < old[i]:
                self.outputs[i].set_limit(new[i])
                set_gun_limit(guns[i], new[i])
                old[i] = new[i]
                self.changes += 1
        for i in range(n):
            if new[i] > old[i]:
                set_gun_limit(guns[i], new[i])   # before the power can rise
                self.outputs[i].set_limit(new[i])
                old[i] = new[i]
                self.changes += 1
        self.ticks += 1
