# Dual-gun parallel charging through the bridge (YKC V1.6 0xA1..0xA4;
# docs/guns.md): one vehicle on two guns of one pile. Each gun runs its own
# session with its own trade serial and bill (as the wire gives each 0xA4
# its own serial), the two joined by a 12-digit group id.
#
# - MQTT `parallel_start` -> one 0xA4 per gun, the main (role 1) first; the
#   auxiliary only once the main is charging in the group.
# - 0xA1 from the pile (a card or VIN for two guns) -> a `parallel_request`
#   event per gun; the platform answers each with `authorize` carrying the
#   request's `group` (-> 0xA2, the 0xA1's sequence echoed:
#   host/commands.py auth_frame).
from host import schema
from host.commands import local_stamp


async def start(bridge, pile, conn, req_id, a):
    """The `parallel_start` command: the result document."""
    code = pile.code
    group = a["group"] or local_stamp()   # as our firmware makes one
    serials = a["serials"] or [None, None]
    replies = []
    for gun, serial in zip(a["guns"], serials):
        serial = serial or bridge._new_serial(code, gun)
        r = (await conn.request("parallel_start", {
            "serial": serial, "pile": code, "gun": gun, "logical_card": a["logical_card"],
            "card": a["card"], "balance": a["balance"], "group": group})).fields
        replies.append({"gun": gun, "serial": r["serial"], "result": r["result"],
                        "reason": r["reason"], "role": r["role"]})
        if r["result"] != 1:
            break
    reply = {"group": group, "guns": replies}
    serials = [x["serial"] for x in replies]
    if len(replies) == 2 and replies[1]["result"] == 1:
        return bridge._ok(code, req_id, "parallel_start", "guns %s and %s charging in group %s "
                          "(trade serials %s, %s; one bill per gun)"
                          % (a["guns"][0], a["guns"][1], group, serials[0], serials[1]),
                          reply, serials=serials)
    last = replies[-1]
    why = "%s (reason %d)" % (schema.start_refusal(last["reason"]), last["reason"])
    if len(replies) == 1:
        return bridge._fail(code, req_id, "parallel_start", "refused",
                            "pile refused the main gun %s: %s; nothing started"
                            % (last["gun"], why), reply, serials=serials)
    # The main charges alone: said plainly; the platform decides (a stop
    # for the main ends it with its bill).
    return bridge._fail(code, req_id, "parallel_start", "partial",
                        "gun %s charging alone in group %s (trade serial %s); the pile refused "
                        "gun %s: %s" % (replies[0]["gun"], group, serials[0], last["gun"], why),
                        reply, serials=serials)


def request_event(bridge, pile, f):
    """0xA1: kept for the 0xA2 (its sequence) and told to the platform."""
    v = f.fields
    pile.parallel_requests[v["gun"]] = f.seq
    bridge.event(pile.code, "parallel_request",
                 "pile asks to start gun %s in parallel group %s (role %d, card or VIN); "
                 "answer with the 'authorize' command and that group" % (v["gun"], v["group"],
                                                                          v["role"]),
                 request=dict(v), seq=f.seq)
