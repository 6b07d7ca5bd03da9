"""Replay chaos event logs as paths through the custody model.

    python -m tools.model_replay EVENTS.jsonl [BRIDGE.log]
    pile-chaos --piles 20 --sessions 50 --events /tmp/ev.jsonl   # writes both

Each bill's events (its trade serial) are replayed through the transition
table generated from model/custody.pml (sim/model_table.py, one bill,
the fault budgets lifted):

- pile events: its journal records as they land on the flash (session
  open, sealed, host-confirmed, settled), from sim/chaos_fleet.py's TapFlash;
- bridge events: each bill's commit, confirmation and 0xE3, from its
  store (`received_at`, `confirmed_at`, `settled_at`: a SIGKILL can come
  between a step's commit and its log line), and its own log in its order
  (resends, confirmations refused or repeated);
- platform events: each copy it takes (stored new, or a copy of a bill
  held).

Every observed event must be one of the model's steps named for it
(OBSERVED); between two observed events the model may take any number of
silent steps (losses, duplicates, publications, retries, crashes,
compaction: what the logs do not show). Each actor's events keep their own
order; the three streams are merged in the bridge's receive order, as the
timestamps give it, an event of one actor going before an earlier-stamped
one of another only within TOLERANCE_S (the bridge logs a step after doing
it, in another process). A bill whose events no path of the model
explains is refused, naming the first event the model cannot take.
"""
import json
import re
import sys
import time

from sim.model_table import Table

TOLERANCE_S = 1.0
# The bridge's own two streams (its store's stamps and its log's lines) come
# from one process, but a log line's stamp is cut to the millisecond: a
# duplicate confirmation logged in the same millisecond as the first one's
# stamp sorts before it. Between those two streams only that much is unsure.
SAME_PROCESS_S = 0.0011

OBSERVED = {
    ("pile", "opened"): ("T_P_start",),
    ("pile", "sealed"): ("T_P_stop", "T_P_autostop", "T_P_crash_open"),
    ("pile", "confirmed"): ("T_P_ack",),
    ("pile", "settled"): ("T_P_settle",),
    ("bridge", "committed"): ("T_B_take_new",),
    ("bridge", "resent"): ("T_B_take_resend", "T_B_take_settled"),
    ("bridge", "confirmed"): ("T_B_confirm", "T_B_confirm_dup"),
    ("bridge", "confirm_refused"): ("T_B_confirm_refused",),
    ("bridge", "confirm_again"): ("T_B_confirm_again", "T_B_confirm_again_dup"),
    ("bridge", "settled"): ("T_B_settled",),
    ("platform", "stored"): ("T_M_take_new", "T_M_take_replace"),
    ("platform", "copy"): ("T_M_take_dup",),
}
# Steps an intruder takes on the platform's path are observed events too
# (none in a chaos log: its intruders are stopped at the bridge and the
# broker, where the model has no step for them).
NOT_SILENT = {n for v in OBSERVED.values() for n in v} | {
    "T_I_forge", "T_I_confirm", "T_M_take_forged", "T_M_take_forged_dup"}

_PILE_KINDS = {1: "opened", 3: "sealed", 4: "confirmed", 5: "illegal", 6: "settled"}

_BRIDGE_LINES = [
    (re.compile(r"pile \d+: bill (\d{32}) already held \(resend \d+\): 0x40 again"), "resent"),
    (re.compile(r"confirmation of bill (\d{32}) \(pile \d+\) ignored"), "confirm_refused"),
    (re.compile(r"bill (\d{32}) confirmed again \(duplicate confirmation\)"), "confirm_again"),
    (re.compile(r"confirmation of unknown bill (\d{32})"), "confirm_again"),
    (re.compile(r"pile \d+: bill (\d{32}) sent again with different bytes"), "conflict"),
]
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


def pile_kind(record_kind):
    return _PILE_KINDS.get(record_kind)


def bridge_events(lines):
    """(t, "bridge", kind, serial) for the custody lines of a bridge log."""
    out = []
    for line in lines:
        m = _STAMP.match(line)
        if not m:
            continue
        for rx, kind in _BRIDGE_LINES:
            mm = rx.search(line.rstrip("\n"))
            if mm:
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                out.append((t, "bridge", kind, mm.group(1)))
                break
    return out


def load(events_path, bridge_log=None):
    """{serial: [(t, actor, kind)...]} from the harness's JSON lines and the bridge log."""
    by = {}
    with open(events_path, "rb") as f:
        for line in f:
            if line.strip():
                e = json.loads(line)
                by.setdefault(e["serial"], []).append((e["t"], e["actor"], e["kind"]))
    if bridge_log:
        with open(bridge_log, errors="replace") as f:
            for t, actor, kind, serial in bridge_events(f):
                by.setdefault(serial, []).append((t, actor, kind, "log"))
    return by


class Replayer:
    def __init__(self, table=None):
        self.t = table or Table(nb=1)
        g = self.t.graph()
        self.states = list(g)
        idx = {s: k for k, s in enumerate(self.states)}
        self.index = idx
        n = len(self.states)
        silent = [[] for _ in range(n)]
        self.obs = {}          # step name -> [(from, to)]
        for s, outs in g.items():
            a = idx[s]
            for name, i, s2 in outs:
                if name in NOT_SILENT:
                    self.obs.setdefault(name, []).append((a, idx[s2]))
                else:
                    silent[a].append(idx[s2])
        # graph() runs every step's assertions: a failing one raises there
        self.closure = self._closures(silent)
        self.init = self.closure[idx[self.t.initial()]]

    def _closures(self, succ):
        # silent reachability as bitmasks, by iterating to a fixpoint over
        # strongly connected parts (Tarjan, iterative)
        n = len(succ)
        index = [None] * n
        low = [0] * n
        on = [False] * n
        stack, comps = [], []
        counter = 0
        for root in range(n):
            if index[root] is not None:
                continue
            work = [(root, 0)]
            while work:
                v, pi = work.pop()
                if pi == 0:
                    index[v] = low[v] = counter
                    counter += 1
                    stack.append(v)
                    on[v] = True
                recurse = False
                for k in range(pi, len(succ[v])):
                    w = succ[v][k]
                    if index[w] is None:
                        work.append((v, k + 1))
                        work.append((w, 0))
                        recurse = True
                        break
                    elif on[w]:
                        low[v] = min(low[v], index[w])
                if recurse:
                    continue
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on[w] = False
                        comp.append(w)
                        if w == v:
                            break
                    comps.append(comp)
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
        # Tarjan emits components in reverse topological order: successors first
        comp_of = [0] * n
        for c, comp in enumerate(comps):
            for v in comp:
                comp_of[v] = c
        reach = [0] * len(comps)
        for c, comp in enumerate(comps):
            m = 0
            for v in comp:
                m |= 1 << v
            for v in comp:
                for w in succ[v]:
                    if comp_of[w] != c:
                        m |= reach[comp_of[w]]
            reach[c] = m
        return [reach[comp_of[v]] for v in range(n)]

    def _image(self, mask, names):
        out = 0
        for name in names:
            for a, b in self.obs.get(name, ()):
                if mask >> a & 1:
                    out |= self.closure[b]
        return out

    def replay(self, events):
        """events: [(t, actor, kind[, source])] of one bill, each stream (an
        actor, or the bridge's log beside its store) in its own order. None
        when the model takes them all; else (n, event, reason): the first
        event no path of the model explains."""
        streams = {}
        for e in events:
            streams.setdefault(e[1] + "/" + (e[3] if len(e) > 3 else ""), []).append(e)
        actors = sorted(streams)
        tol = [[SAME_PROCESS_S if a.split("/")[0] == b.split("/")[0] else TOLERANCE_S
                for b in actors] for a in actors]
        total = sum(len(v) for v in streams.values())
        front = {tuple(0 for _ in actors): self.init}
        best = (0, None)
        for step in range(total):
            nxt = {}
            for pos, mask in front.items():
                heads = [streams[a][p] if p < len(streams[a]) else None
                         for a, p in zip(actors, pos)]
                for k, e in enumerate(heads):
                    if e is None:
                        continue
                    if any(h is not None and h[0] + tol[k][j] < e[0]
                           for j, h in enumerate(heads) if j != k):
                        continue          # another actor's event is well before it
                    names = OBSERVED.get((e[1], e[2]))
                    if names is None:
                        best = max(best, (step, e), key=lambda b: b[0])
                        continue
                    m2 = self._image(mask, names)
                    if not m2:
                        if step >= best[0]:
                            best = (step, e)
                        continue
                    p2 = pos[:k] + (pos[k] + 1,) + pos[k + 1:]
                    nxt[p2] = nxt.get(p2, 0) | m2
            if not nxt:
                n, e = best
                why = ("no step of the model is named for it" if e is not None and
                       (e[1], e[2]) not in OBSERVED else
                       "the model allows none of %s here" % "/".join(OBSERVED.get((e[1], e[2]), ()))
                       if e is not None else "?")
                return (n, e, why)
            front = nxt
        return None


def replay_all(by_serial, replayer=None, only=None):
    """{'bills': n, 'events': n, 'refused': [(serial, n, event, reason)]}."""
    r = replayer or Replayer()
    refused = []
    events = 0
    for serial, evs in sorted(by_serial.items()):
        if only is not None and not only(serial, evs):
            continue
        events += len(evs)
        # each actor's events in its own order (file order; stable by time)
        res = r.replay(sorted(evs, key=lambda e: e[0]))
        if res is not None:
            refused.append((serial,) + res)
    return {"bills": len(by_serial) if only is None else
            sum(1 for s, e in by_serial.items() if only(s, e)),
            "events": events, "refused": refused}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    by = load(argv[0], argv[1] if len(argv) > 1 else None)
    t0 = time.monotonic()
    res = replay_all(by)
    print(json.dumps({"bills": res["bills"], "events": res["events"],
                      "refused": len(res["refused"]), "seconds": round(time.monotonic() - t0, 1),
                      "first_refused": [list(x) for x in res["refused"][:10]]}, indent=1))
    return 1 if res["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
