# Every frame type, declared once, as data. This table drives the firmware
# codec (protocol/codec.py), the bridge (host/) and the dissector (tools/).
#
# A frame: (code, name, direction, fields). direction "P" = pile to platform
# (odd codes), "S" = platform to pile (even codes).
# A field: (name, kind, size[, scale, unit]).
#   kinds: "u" unsigned little-endian int (1, 2, 4 or 5 bytes)
#          "b" packed BCD, value a str of 2*size digits (left zero-padded)
#          "a" ASCII, zero-padded, value a str
#          "h" binary blob, value a str of 2*size upper-case hex digits
#          "t" CP56Time2a (7 bytes), value int local seconds since 2000-01-01
#          "v" variable-length bytes, last field only, size = maximum, value bytes
#   scale: the value is in units of 10^-scale of `unit` (energy 4 = x10^4 kWh).
#   unit "C-50": a temperature sent with a +50 offset.
# Values in frames are always raw integers in protocol units; scales are for
# display (dissector, MQTT, docs), never applied inside the firmware.
#
# The bill 0x3B has two layouts (4 periods, body 158; 5 periods with deep
# valley, body 174): a code may appear more than once; the decoder picks the
# layout by body length, the encoder by the fields given.
#
# Extension frames (ours, not in YKC V1.6) use codes 0xE1..0xEF; see
# docs/protocol.md. No standard frame uses that range.

EXT_FIRST = 0xE1
EXT_LAST = 0xEF

_PILE = ("pile", "b", 7)
_GUN = ("gun", "b", 1)
_SERIAL = ("serial", "b", 16)

PERIODS = ("sharp", "peak", "flat", "valley")
PERIODS5 = ("sharp", "peak", "flat", "valley", "deep")


def _bill(periods):
    f = [_SERIAL, _PILE, _GUN, ("start_time", "t", 7), ("end_time", "t", 7)]
    for p in periods:
        f.append((p + "_price", "u", 4, 5, "yuan/kWh"))
        f.append((p + "_energy", "u", 4, 4, "kWh"))
        f.append((p + "_loss", "u", 4, 4, "kWh"))
        f.append((p + "_amount", "u", 4, 4, "yuan"))
    f.extend((
        ("meter_start", "u", 5, 4, "kWh"),
        ("meter_stop", "u", 5, 4, "kWh"),
        ("total_energy", "u", 4, 4, "kWh"),
        ("total_loss", "u", 4, 4, "kWh"),
        ("total_amount", "u", 4, 4, "yuan"),
        ("vin", "a", 17),
        ("trade_flag", "u", 1),
        ("trade_time", "t", 7),
        ("stop_reason", "u", 1),
        ("card", "h", 8),
    ))
    return tuple(f)


def _tariff_rates():
    f = []
    for p in PERIODS:
        f.append((p + "_energy_price", "u", 4, 5, "yuan/kWh"))
        f.append((p + "_service_price", "u", 4, 5, "yuan/kWh"))
    f.append(("loss_ratio", "u", 1))
    f.append(("slots", "h", 48))  # 48 half-hour slots, each 0..3 (sharp..valley)
    return tuple(f)


FRAMES = (
    (0x01, "login", "P", (
        _PILE, ("pile_type", "u", 1), ("guns", "u", 1), ("proto_version", "u", 1, 1, ""),
        ("sw_version", "a", 8), ("net_type", "u", 1), ("sim", "b", 10), ("carrier", "u", 1))),
    (0x02, "login_reply", "S", (_PILE, ("result", "u", 1))),
    (0x03, "heartbeat", "P", (_PILE, _GUN, ("gun_status", "u", 1))),
    (0x04, "heartbeat_reply", "S", (_PILE, _GUN, ("reply", "u", 1))),
    (0x05, "tariff_check", "P", (_PILE, ("model", "b", 2))),
    (0x06, "tariff_check_reply", "S", (_PILE, ("model", "b", 2), ("result", "u", 1))),
    (0x09, "tariff_request", "P", (_PILE,)),
    (0x0A, "tariff_model", "S", (_PILE, ("model", "b", 2)) + _tariff_rates()),
    (0x12, "read_realtime", "S", (_PILE, _GUN)),
    (0x13, "realtime", "P", (
        _SERIAL, _PILE, _GUN, ("status", "u", 1), ("homed", "u", 1), ("plugged", "u", 1),
        ("voltage", "u", 2, 1, "V"), ("current", "u", 2, 1, "A"), ("gun_temp", "u", 1, 0, "C-50"),
        ("cable_code", "h", 8), ("soc", "u", 1, 0, "%"), ("battery_temp", "u", 1, 0, "C-50"),
        ("minutes", "u", 2, 0, "min"), ("minutes_left", "u", 2, 0, "min"),
        ("energy", "u", 4, 4, "kWh"), ("loss_energy", "u", 4, 4, "kWh"),
        ("amount", "u", 4, 4, "yuan"), ("faults", "u", 2))),
    (0x31, "start_request", "P", (
        _PILE, _GUN, ("start_type", "u", 1), ("need_password", "u", 1), ("card", "h", 8),
        ("password", "h", 16), ("vin", "a", 17))),
    (0x32, "start_auth", "S", (
        _SERIAL, _PILE, _GUN, ("logical_card", "b", 8), ("balance", "u", 4, 2, "yuan"),
        ("ok", "u", 1), ("reason", "u", 1))),
    (0x33, "remote_start_reply", "P", (_SERIAL, _PILE, _GUN, ("result", "u", 1), ("reason", "u", 1))),
    (0x34, "remote_start", "S", (
        _SERIAL, _PILE, _GUN, ("logical_card", "b", 8), ("card", "h", 8),
        ("balance", "u", 4, 2, "yuan"))),
    (0x35, "remote_stop_reply", "P", (_PILE, _GUN, ("result", "u", 1), ("reason", "u", 1))),
    (0x36, "remote_stop", "S", (_PILE, _GUN)),
    (0x3B, "bill", "P", _bill(PERIODS)),
    (0x3B, "bill5", "P", _bill(PERIODS5)),
    (0x40, "bill_confirm", "S", (_SERIAL, ("result", "u", 1))),
    (0x55, "time_sync_reply", "P", (_PILE, ("time", "t", 7))),
    (0x56, "time_sync", "S", (_PILE, ("time", "t", 7))),
    (0x57, "tariff_set_reply", "P", (_PILE, ("result", "u", 1))),
    (0x58, "tariff_set", "S", (_PILE, ("model", "b", 2)) + _tariff_rates()),
    (0x91, "reboot_reply", "P", (_PILE, ("result", "u", 1))),
    (0x92, "reboot", "S", (_PILE, ("when", "u", 1))),

    # --- extension frames (0xE1..0xEF), documented in docs/protocol.md ----------
    # Remote start with targets; answered with the standard 0x33.
    (0xE2, "ext_start", "S", (
        _SERIAL, _PILE, _GUN, ("logical_card", "b", 8), ("card", "h", 8),
        ("balance", "u", 4, 2, "yuan"), ("target_amount", "u", 4, 4, "yuan"),
        ("target_energy", "u", 4, 4, "kWh"), ("target_minutes", "u", 2, 0, "min"),
        ("target_soc", "u", 1, 0, "%"), ("flags", "u", 1))),
    # The platform settled a bill (0x40 only says "received").
    (0xE3, "settled_reply", "P", (_SERIAL, ("result", "u", 1))),
    (0xE4, "settled", "S", (_SERIAL, ("result", "u", 1))),
    # Journal and version status, for the bridge and the technician.
    (0xE5, "status_reply", "P", (
        _PILE, ("pending", "u", 2), ("unsettled", "u", 2), ("illegal", "u", 2),
        ("journal_used", "u", 4, 0, "B"), ("journal_limit", "u", 4, 0, "B"),
        ("oldest_pending", "b", 16), ("state", "u", 1), ("boot_reason", "u", 1),
        ("fw_version", "a", 8), ("hmi_version", "a", 8))),
    (0xE6, "status_query", "S", (_PILE,)),
    # Chunked firmware transfer: control (begin / verify / activate / abort) ...
    (0xE7, "fw_reply", "P", (
        _PILE, ("op", "u", 1), ("result", "u", 1), ("stage", "u", 1), ("offset", "u", 4, 0, "B"))),
    (0xE8, "fw_control", "S", (
        _PILE, ("op", "u", 1), ("version", "a", 8), ("size", "u", 4, 0, "B"),
        ("sha256", "h", 32), ("mac", "h", 32))),
    # ... and data chunks, each answered with fw_reply (op 5) giving the next offset.
    (0xEA, "fw_chunk", "S", (_PILE, ("offset", "u", 4, 0, "B"), ("data", "v", 200))),
    # The fee split and VIN facts a 0x3B cannot carry; same trade serial.
    (0xEB, "bill_extra", "P", (
        _SERIAL, ("model", "b", 2),
        ("sharp_energy_fee", "u", 4, 4, "yuan"), ("sharp_service_fee", "u", 4, 4, "yuan"),
        ("peak_energy_fee", "u", 4, 4, "yuan"), ("peak_service_fee", "u", 4, 4, "yuan"),
        ("flat_energy_fee", "u", 4, 4, "yuan"), ("flat_service_fee", "u", 4, 4, "yuan"),
        ("valley_energy_fee", "u", 4, 4, "yuan"), ("valley_service_fee", "u", 4, 4, "yuan"),
        ("deep_energy_fee", "u", 4, 4, "yuan"), ("deep_service_fee", "u", 4, 4, "yuan"),
        ("vin_mismatch", "u", 1), ("nameplate_vin", "a", 17), ("mac", "h", 32))),
)
