"""DL/T 645-2007 meter frames for `pile-frames decode` (issue 12 item 7).

A frame on a pile's RS485 meter line ([FE..] 68 A0..A5 68 C L D.. CS 16) is
recognised by its shape and read with the firmware's own driver
(firmware/dlt645.py: its frame reader checks the checksum and end byte and
undoes the +0x33; its BCD decoding reads the values), so what the dissector
shows is what the pile reads. Only the presentation lives here.
"""
from firmware import dlt645 as M
from firmware.errors import MeterError
from host.schema import dec

# Data identifiers the pile reads (firmware/dlt645.py), and the forward
# energy of each tariff: (name, value bytes, decimals, signed, unit).
DIS = {
    M.DI_ENERGY_COMBINED: ("combined active energy, total", 4, 2, True, "kWh"),
    M.DI_ENERGY_FORWARD: ("forward active energy, total", 4, 2, False, "kWh"),
    0x00010100: ("forward active energy, tariff 1", 4, 2, False, "kWh"),
    0x00010200: ("forward active energy, tariff 2", 4, 2, False, "kWh"),
    0x00010300: ("forward active energy, tariff 3", 4, 2, False, "kWh"),
    0x00010400: ("forward active energy, tariff 4", 4, 2, False, "kWh"),
    M.DI_VOLTAGE_A: ("phase A voltage", 2, 1, False, "V"),
    M.DI_CURRENT_A: ("phase A current", 3, 3, True, "A"),
    M.DI_POWER_TOTAL: ("total active power", 3, 4, True, "kW"),
    M.DI_METER_NUMBER: ("meter number", 6, None, False, ""),
}

FUNCTIONS = {M.CTRL_READ: "read data", M.CTRL_READ_MORE: "read follow-up",
             M.CTRL_READ_ADDRESS: "read address", 0x14: "write data", 0x08: "broadcast time",
             0x15: "write address", 0x16: "freeze", 0x17: "change baud rate",
             0x18: "change password", 0x19: "clear maximum demand", 0x1A: "clear meter",
             0x1B: "clear events"}


def looks_like(data):
    """True when data has a DL/T 645 frame's shape: up to 4 FE, 68, six
    address bytes, 68, control, length L, L data bytes, checksum, 16."""
    i = 0
    while i < len(data) and i < 4 and data[i] == 0xFE:
        i += 1
    d = data[i:]
    return len(d) >= 12 and d[0] == 0x68 and d[7] == 0x68 and d[-1] == 0x16 and len(d) == 12 + d[9]


def decode(data):
    """A dict describing one DL/T 645 frame; MeterError when the driver
    rejects it (a bad checksum or end byte, a cut-off frame)."""
    address, control, payload = M.decode_frame(bytes(data))
    function = control & 0x1F
    reply = bool(control & M.CTRL_REPLY)
    out = {"protocol": "dlt645", "address": address, "control": "0x%02X" % control,
           "function": FUNCTIONS.get(function, "function 0x%02X" % function),
           "direction": "meter -> master" if reply else "master -> meter",
           "error": None, "more_follows": bool(reply and control & M.CTRL_MORE),
           "data": payload.hex().upper()}
    if address == M.BROADCAST:
        out["address_note"] = "broadcast (no reply)"
    elif address == M.WILDCARD:
        out["address_note"] = "wildcard (the one meter on the bus)"
    if reply and control & M.CTRL_ERROR:
        code = payload[0] if payload else 0
        out["error"] = "0x%02X: %s" % (code, M.describe_error(code))
        return out
    if function == M.CTRL_READ_ADDRESS:
        if reply and len(payload) == 6:
            out["meter_address"] = M.address_str(payload)
        return out
    if function in (M.CTRL_READ, M.CTRL_READ_MORE) and len(payload) >= 4:
        di = payload[0] | payload[1] << 8 | payload[2] << 16 | payload[3] << 24
        out["di"] = "%08X" % di
        spec = DIS.get(di)
        out["di_name"] = spec[0] if spec else None
        rest = payload[4:]
        if not reply:
            if function == M.CTRL_READ_MORE and rest:
                out["follow_up"] = rest[0]
            return out
        if function == M.CTRL_READ_MORE and rest:
            out["follow_up"] = rest[-1]      # a follow-up reply ends with its sequence
            rest = rest[:-1]
        out["value_bytes"] = rest.hex().upper()
        if spec is not None and len(rest) == spec[1]:
            name, size, decimals, signed, unit = spec
            if decimals is None:
                out["value"] = M._hex_reversed(rest, 0, size)
            else:
                try:
                    out["value"] = dec(M.bcd_decode(rest, signed), decimals)
                except ValueError as e:
                    out["value_error"] = str(e)
            out["unit"] = unit
    return out


def as_text(d):
    lines = ["DL/T 645 %s (%s) address %s%s" % (
        d["function"], d["direction"], d["address"],
        " (%s)" % d["address_note"] if d.get("address_note") else "")]
    bits = []
    if d["direction"].startswith("meter"):
        bits.append("error reply" if d["error"] else "normal reply")
    if d["more_follows"]:
        bits.append("more frames follow")
    lines.append("  %-12s %s%s" % ("control", d["control"], " (%s)" % ", ".join(bits) if bits else ""))
    if d["error"]:
        lines.append("  %-12s %s" % ("error", d["error"]))
    if "meter_address" in d:
        lines.append("  %-12s %s" % ("meter", d["meter_address"]))
    if "di" in d:
        lines.append("  %-12s %s%s" % ("DI", d["di"], " (%s)" % d["di_name"] if d["di_name"] else ""))
    if "follow_up" in d:
        lines.append("  %-12s %d" % ("follow-up", d["follow_up"]))
    if "value" in d:
        lines.append(("  %-12s %s %s" % ("value", d["value"], d.get("unit", ""))).rstrip())
    elif "value_bytes" in d:
        lines.append("  %-12s %s%s" % ("value bytes", d["value_bytes"] or "(none)",
                                       " (%s)" % d["value_error"] if d.get("value_error") else ""))
    if "di" not in d and "meter_address" not in d and not d["error"]:
        lines.append("  %-12s %s" % ("data", d["data"] or "(none)"))
    return "\n".join(lines)


__all__ = ["DIS", "FUNCTIONS", "MeterError", "as_text", "decode", "looks_like"]
