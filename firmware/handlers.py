# What the pile does with each frame from the platform: one plain function
# per frame, handler(pile, frame) -> the reply's values (or None: no reply).
# protocol/router.py picks the reply frame from the frame table, echoes the
# sequence and screens signed frames before any of these runs, so a handler
# is the same whether its frame came bare or inside a valid 0xD2 envelope.
# One module of functions on purpose: a module per frame would cost a board
# ~4 KB of heap (issue 18); a new frame is a table line and one function here.
from firmware import session as S
from firmware.tariff import Tariff, TariffError
from firmware.remote import valid_vin
from protocol import codec
from protocol.router import on


def unhandled(p, f):
    p.log("frame 0x%02X (%s) not handled" % (f.code, f.name))


def _fw_reply(p, op, result):
    # 0xE9, the answer to 0xE8 and 0xEA (below)
    stage = offset = 0
    up = p.remote.updater
    if up is not None:
        from protocol.image import stage_code
        st = up.status()
        stage = stage_code(st["stage"])
        offset = st["offset"]
    return {"pile": p.pile, "op": op & 0xFF, "result": result, "stage": stage, "offset": offset}


def _handlers():
    # The handlers are this function's locals, not the module's globals: a
    # board loading .mpy keeps a globals dict the size of its names (25
    # handlers: ~0.3 KB of heap), and HANDLERS is the only table anyone
    # reads. Each is still a plain function of (pile, frame).
    # Every frame here that concerns a gun names it ($PG / $SPG):
    # Pile.gun_named gives that Gun, or None for a gun this pile does not have.
    HANDLERS = {}

    @on(HANDLERS, 0x36)
    def remote_stop(p, f):
        # A stop for one gun never touches another: an unknown gun is refused
        # (0x35 reason 3), nothing stops.
        v = f.fields
        gun = p.gun_named(v["gun"])
        res, why = gun.remote_stop(v["pile"]) if gun else (0, S.STOPR_OTHER)
        return {"pile": p.pile, "gun": gun.gun if gun else v["gun"], "result": res, "reason": why}

    @on(HANDLERS, 0x34, 0xE2)
    def remote_start(p, f):
        # 0xE2 is the same start with targets; both are answered with 0x33.
        v = f.fields
        gun = p.gun_named(v["gun"])
        if gun is None:
            # no such gun on this pile: refused, nothing executed
            return {"serial": v["serial"], "pile": p.pile, "gun": v["gun"], "result": 0,
                    "reason": S.START_FAULT}
        if p._reboot_when:
            res, why = 0, S.START_FAULT   # a reboot is on its way
        else:
            kw = {}
            if f.code == 0xE2:
                kw = {"amount": v["target_amount"], "energy": v["target_energy"],
                      "minutes": v["target_minutes"], "soc": v["target_soc"]}
            # a full journal: (0, START_JOURNAL_FULL), from Pile._on_open
            res, why = gun.remote_start(v["serial"], v["card"], v["logical_card"],
                                        v["balance"], pile=v["pile"], **kw)
        if res:
            p._send_realtime(gun)  # YKC: a "charging" realtime frame promptly (next poll)
        return {"serial": v["serial"], "pile": p.pile, "gun": gun.gun, "result": res,
                "reason": why}

    @on(HANDLERS, 0xA4)
    def parallel_start(p, f):
        # One 0xA4 per gun of a parallel group (docs/guns.md), answered 0xA3.
        v = f.fields
        from firmware.parallel import start
        res, why, role = start(p, v)
        return {"serial": v["serial"], "pile": p.pile, "gun": v["gun"], "result": res,
                "reason": why, "role": role, "group": v["group"]}

    @on(HANDLERS, 0xA2)
    def parallel_auth(p, f):
        # The platform's answer to one gun's 0xA1 (Pile.parallel_swiped).
        v = f.fields
        from firmware.parallel import authorised
        res, why, role = authorised(p, v)
        p.log("0xA2 %s gun %s ok=%d -> %d/%d role %d" % (v["serial"], v["gun"], v["ok"], res, why,
                                                          role))
        return None

    @on(HANDLERS, 0x32)
    def start_auth(p, f):
        # The platform's answer to our 0x31 (a card or VIN at the pile).
        v = f.fields
        gun = p.gun_named(v["gun"])
        if gun is None:
            p.log("0x32 %s for unknown gun %s" % (v["serial"], v["gun"]))
            return None
        res, why = gun.authorised(v["serial"], v["ok"] == 1, v["reason"], v["balance"],
                                  v["logical_card"])
        p.log("0x32 %s ok=%d -> %d/%d" % (v["serial"], v["ok"], res, why))
        return None

    @on(HANDLERS, 0x40)
    def bill_confirm(p, f):
        v = f.fields
        r = p.outbox.confirmed(v["serial"], v["result"])
        if v["result"] == 1:
            p.event("illegal_bill", v["serial"])
        p.log("0x40 %s result %d -> %s" % (v["serial"], v["result"], r))
        return None

    @on(HANDLERS, 0xE4)
    def settled(p, f):
        # Result 0 settles the bill (its space may be reclaimed). A non-zero
        # result is the platform refusing it (1: the MAC does not verify, 2:
        # unsigned from a keyed pile; docs/platform.md): kept as refused, never
        # resent, never reclaimed until a technician's 'release'
        # (firmware/console.py). Either way 0xE3 says "done", so the bridge stops
        # sending the 0xE4.
        serial = f.fields["serial"]
        result = f.fields["result"]
        if result == 0:
            r = p.outbox.settled(serial)
        else:
            r = p.outbox.refused(serial, result)
            if r == "full":
                # nothing written (journal_full event): no 0xE3, so the bridge
                # sends this 0xE4 again later
                p.log("0xE4 %s result %d not kept: journal full" % (serial, result))
                return None
            if r == "ok":
                p.event("bill_refused", "%s result %d" % (serial, result))
        p.log("0xE4 %s result %d -> %s" % (serial, result, r))
        return {"serial": serial, "result": 0 if r in ("ok", "duplicate") else 1}

    @on(HANDLERS, 0xEC)
    def bill_extra_ack(p, f):
        p.outbox.extra_acked(f.fields["serial"])
        return None

    @on(HANDLERS, 0xD6)
    def login_challenge(p, f):
        # A keyed pile proves its key at login (the mac in hex); an unkeyed one
        # does not answer.
        v = f.fields
        key = p.cfg.get("cmd_key")
        if not key:
            return None
        import binascii
        from protocol.sign import login_mac
        mac = login_mac(key, p.pile, binascii.unhexlify(v["nonce"]))
        return {"pile": p.pile, "nonce": v["nonce"], "mac": binascii.hexlify(mac).decode().upper()}

    @on(HANDLERS, 0x06)
    def tariff_check_reply(p, f):
        # 1: our model differs from the platform's, ask for it (0x09).
        if f.fields["result"] != 0:
            p.link.send("tariff_request", {"pile": p.pile})
        return None

    @on(HANDLERS, 0x0A, 0x58, 0xD4)
    def tariff_set(p, f):
        # 0x0A answers our 0x09 (nothing answers it); 0x58 and 0xD4 (the
        # deep-valley prices: Tariff.from_frame makes it 5-class) get 0x57.
        ok = 1
        try:
            p.set_tariff(Tariff.from_frame(f.fields))
        except (TariffError, ValueError, KeyError) as e:
            ok = 0
            p.event("tariff_refused", str(e))
        return {"pile": p.pile, "result": ok}

    @on(HANDLERS, 0x12)
    def read_realtime(p, f):
        # Answered by the next poll()'s 0x13, with a sequence of its own.
        p._send_realtime(p.gun_named(f.fields["gun"]))
        return None

    @on(HANDLERS, 0x56)
    def time_sync(p, f):
        p.set_clock(f.fields["time"], "0x56")
        return {"pile": p.pile, "time": p.clock.now()}

    @on(HANDLERS, 0x42)
    def balance_update(p, f):
        # 0x42 names the gun whose running session gets the new balance.
        v = f.fields
        g = p.gun_named(v["gun"])
        ok = g.balance_update(v["balance"]) if g is not None and "balance" in v else False
        out = {}
        for name, kind, _size, _off in codec.layout_named("balance_update_reply").fields:
            if name in v:
                out[name] = v[name]
            elif name == "result":
                out[name] = 0 if ok else 1
            else:
                out[name] = 0 if kind == "u" else ""
        out["pile"] = p.pile
        return out

    @on(HANDLERS, 0xE6)
    def status_query(p, f):
        return p.status_fields()

    @on(HANDLERS, 0x92)
    def reboot(p, f):
        # 0x91 result: 1 accepted, 0 refused. Every request is answered.
        return {"pile": p.pile, "result": 1 if p.request_reboot(f.fields["when"]) else 0}

    @on(HANDLERS, 0xDE)
    def site_cap(p, f):
        ok = p.set_site_cap(f.fields["cap"])
        return {"pile": p.pile, "result": 1 if ok else 0, "cap": p.sharing.site_cap if ok else 0}

    @on(HANDLERS, 0xDC)
    def gun_cap(p, f):
        gun = f.fields["gun"]
        ok = p.set_gun_cap(gun, f.fields["cap"])
        return {"pile": p.pile, "gun": gun, "result": 1 if ok else 0, "cap": f.fields["cap"] if ok else 0}

    @on(HANDLERS, 0x52)
    def work_params(p, f):
        # YKC work parameters: max_power 30..100 % of the rated power, applied at
        # the next control tick. Locking the pile (locked 1) is not supported
        # here: answered 0 (failed), nothing changes. A pile without power
        # sharing does not take them at all.
        if p.sharing is None:
            unhandled(p, f)
            return None
        v = f.fields
        ok = v["locked"] == 0 and p.sharing.set_percent(v["max_power"])
        if ok:
            p.event("power_percent", str(v["max_power"]))
        return {"pile": p.pile, "result": 1 if ok else 0}

    # --- firmware upgrade (firmware/upgrade.py; docs/upgrade.md) -------------

    @on(HANDLERS, 0xE8)
    def fw_control(p, f):
        from protocol import image as I
        v = f.fields
        op = v["op"]
        up = p.remote.updater
        if up is None:
            return _fw_reply(p, op, I.FW_NO_KEY)
        result = 0
        reason = None
        if op == I.FW_BEGIN:
            try:
                up.begin(v["version"], v["size"], v["sha256"], v["mac"])
            except I.UpgradeError as e:
                reason = e.reason
        elif op == I.FW_VERIFY:
            reason = up.verify()[1]
        elif op == I.FW_ACTIVATE:
            if p.reboot_hook is None:
                result = I.FW_NO_REBOOT
            else:
                reason = up.activate(p.idle())[1]
                if reason is None:
                    p.event("firmware_installed", up.status()["version"])
                    p.request_reboot(1, "upgrade", 4)   # pile.BOOT_UPGRADE
        elif op == I.FW_ABORT:
            reason = up.abort()[1]
        elif op == I.FW_STATUS:
            # the reason the current stage was reached with (0 none): why a
            # transfer failed, or "not healthy" after a rollback
            result = I.reason_code(up.status()["reason"])
        else:
            result = I.reason_code(I.R_BAD_REQUEST)
        if reason is not None:
            result = I.reason_code(reason)
            p.event("firmware_refused", "op %d: %s" % (op, reason))
        return _fw_reply(p, op, result)

    @on(HANDLERS, 0xEA)
    def fw_chunk(p, f):
        # Appended only at the offset the pile expects; the reply says which.
        from protocol import image as I
        up = p.remote.updater
        if up is None:
            return _fw_reply(p, I.FW_STATUS, I.FW_NO_KEY)
        v = f.fields
        result = 0
        if v["pile"] != p.pile:
            result = I.reason_code(I.R_BAD_REQUEST)
        else:
            try:
                up.chunk(v["offset"], v["data"])
            except I.UpgradeError as e:
                result = I.reason_code(e.reason)
        return _fw_reply(p, I.FW_STATUS, result)

    # --- the VIN list (firmware/remote.py keeps it and its file) -------------

    @on(HANDLERS, 0xEE)
    def vin_list(p, f):
        r = p.remote
        v = f.fields
        ver = v["version"]
        result = 1
        pairs = r._vin_pairs
        try:
            recs = codec.unpack_records("vin_list", "records", v["records"])
            if len(recs) != v["count"]:
                raise ValueError("count %d, %d records" % (v["count"], len(recs)))
            # A new version replaces the list, the same version adds to it (a
            # list longer than one frame); a VIN listed twice keeps the last
            # department.
            new = [] if ver != r.vin_version else list(pairs)
            for rec in recs:
                vin = valid_vin(rec["vin"])
                if vin is None:
                    raise ValueError("VIN %r" % (rec["vin"],))
                for i in range(len(new)):
                    if new[i][0] == vin:
                        new.pop(i)
                        break
                new.append((vin, rec["department"]))
            if len(new) > r.vin_max:
                raise ValueError("%d VINs, at most %d" % (len(new), r.vin_max))
            r.save_vins(ver, new)
            pairs = new
            result = 0
            p.event("vin_list", "version %d: %d VINs" % (ver, len(new)))
        except (ValueError, OSError) as e:
            p.event("vin_list_refused", "version %d: %s" % (ver, e))
        return {"version": ver, "result": result, "stored": len(pairs)}

    return HANDLERS


HANDLERS = _handlers()
del _handlers   # its own code is needed once
