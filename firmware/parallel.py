# Dual-gun parallel charging (YKC V1.6 0xA1..0xA4; docs/guns.md): one
# vehicle on two guns of one pile. Each gun runs its own session (its own
# trade serial, journal records and bill), marked with the group id and its
# role (Gun.group, Gun.role: 1 main, 2 auxiliary); Pile.groups holds the
# running groups (RAM only: a power cut seals both sessions at boot, 0x83).
# Loaded when first used, so a pile that never charges in parallel carries
# none of this code on its heap (as firmware/sharing.py).
from firmware import session as S


def start(p, v):
    """0xA4 for one gun of a group (its own trade serial). Returns the
    0xA3 (result, reason, role): role 1 main for the group's first gun,
    2 auxiliary for its second; a refusal executes nothing."""
    g = p.gun_named(v["gun"])
    grp = v["group"]
    if g is None or len(p.guns) < 2:
        return 0, S.START_FAULT, 0
    rep = g._known(v["serial"])   # the same 0xA4 again: the same answer
    if rep is not None:
        return rep[0], rep[1], g.role if rep[0] and g.group == grp else 0
    if _refusal(p, grp):
        return 0, S.START_GROUP, 0
    if g.faults:
        return 0, S.START_FAULT, 0
    if not g.vehicle.plugged:     # refused, not held for the plug as a 0x34 is
        return 0, S.START_NOT_PLUGGED, 0
    # a busy gun: remote_start's 0x33 reason 2
    res, why = g.remote_start(v["serial"], v["card"], v["logical_card"], v["balance"],
                              pile=v["pile"])
    if not res:
        return 0, why, 0
    return _join(p, g, grp)


def swiped(p, card, guns, vin):
    """A card (or a VIN start) for one vehicle on two guns: 0xA1 for
    each gun, under one group id the pile makes (its clock,
    YYMMDDhhmmss), roles 1 and 2; each gun starts on its 0xA2. Returns
    "asked", or "refused" (offline, a gun missing or not ready)."""
    gs = [p.gun_named(x) for x in guns]
    if not p.link.online or len(p.guns) < 2 or len(gs) != 2 or None in gs \
            or gs[0] is gs[1]:
        return "refused"
    for g in gs:
        if g.state not in (S.PLUGGED, S.FINISHED) or not g.vehicle.plugged or g.faults:
            return "refused"
    grp = "%012d" % p._stamp()
    for i in range(2):
        v = gs[i].request_start(card, vin)
        v["role"] = i + 1
        v["group"] = grp
        p.link.send("parallel_request", v)
    return "asked"


def authorised(p, v):
    """0xA2: the platform's answer to one gun's 0xA1. Returns (result,
    reason, role); the gun starts in the group, or goes back to plugged."""
    g = p.gun_named(v["gun"])
    if g is None:
        return 0, S.START_FAULT, 0
    grp = v["group"]
    ok = v["ok"] == 1
    if ok and g.state == S.AUTHORISING and _refusal(p, grp):
        g.authorised(v["serial"], False, S.START_GROUP)
        return 0, S.START_GROUP, 0
    res, why = g.authorised(v["serial"], ok, v["reason"], v["balance"], v["logical_card"])
    if res and g.group is None:
        return _join(p, g, grp)
    return res, why, g.role


def _refusal(p, grp):
    # True: a start in group grp does not fit (its main no longer
    # charging, two guns in it already, or it ended).
    ms = p.groups.get(grp)
    if ms is None:
        return grp in p._ended
    return len(ms) > 1 or ms[0].state != S.CHARGING


def _join(p, g, grp):
    # g's session, just started, joins group grp: the 0xA3 values.
    ms = p.groups.get(grp)
    g.group = grp
    g.role = 1 if ms is None else 2
    if ms is None:
        p.groups[grp] = [g]
    else:
        ms.append(g)
    p.event("parallel_start", "%s gun %s role %d" % (grp, g.gun, g.role))
    p._send_realtime(g)
    return 1, S.START_NONE, g.role


def sync(p):
    # One vehicle on a group's guns: when one gun's session ends (a
    # platform stop, the vehicle full, a fault), the others stop at once
    # with its stop reason; each gun seals its own bill.
    for grp in list(p.groups):
        ms = p.groups[grp]
        end = None
        for g in ms:
            if g.state != S.CHARGING:
                end = g
        if end is None:
            continue
        why = end.bill["stop_reason"] if end.bill else S.STOP_UNKNOWN
        for g in ms:
            if g.state == S.CHARGING:
                p.event("parallel_stop", "%s gun %s 0x%02X" % (grp, g.gun, why))
                g.abort(why)
            g.group = None
            g.role = 0
        del p.groups[grp]
        p._ended.append(grp)
        if len(p._ended) > 4:
            p._ended.pop(0)
