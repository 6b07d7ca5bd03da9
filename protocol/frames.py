# Every frame type, declared once, as data. This table drives the firmware
# codec (protocol/codec.py), the bridge (host/), the dissector (host/dissect.py)
# and docs/protocol.md (tools/gen_protocol_doc.py).
#
# TABLE holds the frames in sections (one string each), one frame per line:
#     CODE NAME [>REPLY[/KEY]] [!] FIELD FIELD ...
#   CODE   two hex digits. The direction follows from it: odd = pile to
#          platform ("P"), even = platform to pile ("S").
#   >REPLY the code of the frame that answers this one (it echoes the
#          sequence); /KEY the reply's field that also names the request, for
#          peers that do not echo the sequence (">33/serial")
#   !      signed: a pile holding a command key acts on this frame only
#          inside a 0xD2 `signed` envelope (protocol/sign.py PROTECTED)
#   FIELD  name=KIND SIZE [:SCALE] [UNIT] [[RECORD,RECORD...]]
#          e.g. "energy=u4:4kWh" (4-byte unsigned, units of 10^-4 kWh) or
#          "gun_temp=u1C-50" (1 byte, degrees C sent with a +50 offset), or a
#          macro from MACROS ("$SPG" = trade serial, pile, gun).
#   kinds: "u" unsigned little-endian int (1..8 bytes)
#          "b" packed BCD, value a str of 2*size digits (left zero-padded)
#          "a" ASCII, zero-padded, value a str
#          "r" ASCII sent in reverse byte order (the VIN in 0x31 / 0xA1)
#          "h" binary blob, value a str of 2*size upper-case hex digits
#          "t" CP56Time2a (7 bytes), value int local seconds since 2000-01-01
#          "v" variable-length bytes, last field only, size = maximum, value
#              bytes; "[...]" declares the record repeated inside it (fields
#              separated by ","): codec.pack_records / unpack_records
#   scale: the value is in units of 10^-scale of UNIT (energy 4 = x10^4 kWh).
#   UNIT "X-N" / "X+N": physical = raw * 10^-scale - N (or + N), e.g. C-50.
# Values in frames are always raw integers in protocol units; scales are for
# display (dissector, MQTT, docs), never applied inside the firmware.
#
# Why strings and not tuples: a pile controller has a few tens of KB of heap.
# Per-field tuples cost ~25 KB under MicroPython, a string per frame ~14 KB,
# these few section strings ~7 KB (and nothing when frozen into flash); a
# section is a string of its own so that no single block is large. The codec
# compiles a frame's layout only when that frame is used. `FRAMES` (at the
# end) still gives the classic tuple form for tools.
#
# The bill 0x3B has three layouts (4 periods, body 158; 5 periods with deep
# valley, body 174; the pre-V1.5 156-byte one with 4-byte meter readings),
# 0x92 two (8 and 11 bytes), and 0xE5 two (56 bytes, and 55 from firmware
# before refusing_starts): a code may appear more than once (adjacent lines);
# the decoder picks the layout by body length, the encoder by the fields
# given (or by the name given). V1.7's bill is 0x3D, a layout of its own.
#
# Extension frames (ours, not in YKC V1.6) use codes 0xD0..0xEF; see
# docs/protocol.md. No standard frame uses that range (V1.6 stops at 0xA4;
# 0xF0/0xF1 belong to a field addition, the QR prefix, and stay outside it).

EXT_FIRST = 0xD0
EXT_LAST = 0xEF

# Frame codes that carry a bill: the bridge keeps any of them with a good
# CRC raw, before decoding (docs/bridge.md "Custody"). 0x3D is V1.7's bill.
BILL_CODES = (0x3B, 0x3D)

MACROS = {
    "$P": "pile=b7",
    "$PG": "pile=b7 gun=b1",
    "$SPG": "serial=b16 pile=b7 gun=b1",
    # The bill's four period blocks (unit price, energy, loss-adjusted
    # energy, amount) and its closing fields, shared by every bill layout.
    "$BP4": "sharp_price=u4:5yuan/kWh sharp_energy=u4:4kWh sharp_loss=u4:4kWh sharp_amount=u4:4yuan "
            "peak_price=u4:5yuan/kWh peak_energy=u4:4kWh peak_loss=u4:4kWh peak_amount=u4:4yuan "
            "flat_price=u4:5yuan/kWh flat_energy=u4:4kWh flat_loss=u4:4kWh flat_amount=u4:4yuan "
            "valley_price=u4:5yuan/kWh valley_energy=u4:4kWh valley_loss=u4:4kWh "
            "valley_amount=u4:4yuan",
    "$BEND": "total_energy=u4:4kWh total_loss=u4:4kWh total_amount=u4:4yuan vin=a17 trade_flag=u1 "
             "trade_time=t7 stop_reason=u1 card=h8",
    # Tariff model body (0x0A, 0x58): 8 rates x10^5 yuan/kWh, loss ratio and
    # 48 half-hour slots, each 0..3 (sharp, peak, flat, valley).
    "$TARIFF": "pile=b7 model=b2 sharp_energy_price=u4:5yuan/kWh sharp_service_price=u4:5yuan/kWh "
               "peak_energy_price=u4:5yuan/kWh peak_service_price=u4:5yuan/kWh "
               "flat_energy_price=u4:5yuan/kWh flat_service_price=u4:5yuan/kWh "
               "valley_energy_price=u4:5yuan/kWh valley_service_price=u4:5yuan/kWh "
               "loss_ratio=u1 slots=h48",
    # The same with the fifth, deep-valley class (0xD4): slots 0..4.
    "$TARIFF5": "pile=b7 model=b2 sharp_energy_price=u4:5yuan/kWh sharp_service_price=u4:5yuan/kWh "
                "peak_energy_price=u4:5yuan/kWh peak_service_price=u4:5yuan/kWh "
                "flat_energy_price=u4:5yuan/kWh flat_service_price=u4:5yuan/kWh "
                "valley_energy_price=u4:5yuan/kWh valley_service_price=u4:5yuan/kWh "
                "deep_energy_price=u4:5yuan/kWh deep_service_price=u4:5yuan/kWh "
                "loss_ratio=u1 slots=h48",
}

TABLE = (
    # --- login, heartbeat, tariff model -----------------------------------------
    "01 login >02 $P pile_type=u1 guns=u1 proto_version=u1:1 sw_version=a8 net_type=u1 sim=h10 "
    "carrier=u1\n"
    "02 login_reply $P result=u1\n"
    "03 heartbeat >04 $PG gun_status=u1\n"
    "04 heartbeat_reply $PG reply=u1\n"
    "05 tariff_check >06 $P model=b2\n"
    "06 tariff_check_reply $P model=b2 result=u1\n"
    "09 tariff_request >0A $P\n"
    "0A tariff_model ! $TARIFF\n",
    # --- realtime data and the GB/T 27930 BMS reports -----------------------------
    "12 read_realtime >13/gun $PG\n"
    "13 realtime $SPG status=u1 homed=u1 plugged=u1 voltage=u2:1V current=u2:1A gun_temp=u1C-50 "
    "cable_code=h8 soc=u1% battery_temp=u1C-50 minutes=u2min minutes_left=u2min "
    "energy=u4:4kWh loss_energy=u4:4kWh amount=u4:4yuan faults=u2\n"
    "15 bms_handshake $SPG bms_version=u3 battery_type=u1 rated_capacity=u2:1Ah "
    "rated_voltage=u2:1V battery_maker=a4 pack_serial=h4 made_year=u1 made_month=u1 "
    "made_day=u1 charge_count=u3 ownership=u1 reserved=u1 vin=a17 bms_sw=h8\n"
    "17 bms_params $SPG cell_max_voltage=u2:2V max_current=u2:1A-400 nominal_energy=u2:1kWh "
    "max_voltage=u2:1V max_temp=u1C-50 soc=u2:1% battery_voltage=u2:1V pile_max_voltage=u2:1V "
    "pile_min_voltage=u2:1V pile_max_current=u2:1A-400 pile_min_current=u2:1A-400\n"
    "19 bms_end $SPG soc=u1% cell_min_voltage=u2:2V cell_max_voltage=u2:2V min_temp=u1C-50 "
    "max_temp=u1C-50 minutes=u2min energy=u2:1kWh charger_no=u4\n"
    "1B bms_error $SPG bem_crm=u1 bem_cml_cro=u1 bem_ccs_cst=u1 bem_csd=u1 cem_brm=u1 "
    "cem_bcp_bro=u1 cem_bcs_bcl_bst=u1 cem_bsd=u1\n"
    "1D bms_abort $SPG abort_reason=u1 abort_fault=u2 abort_error=u1\n"
    "21 charger_abort $SPG abort_reason=u1 abort_fault=u2 abort_error=u1\n"
    "23 bms_demand $SPG demand_voltage=u2:1V demand_current=u2:1A-400 charge_mode=u1 "
    "measured_voltage=u2:1V measured_current=u2:1A-400 max_cell=u2 soc=u1% minutes_left=u2min "
    "output_voltage=u2:1V output_current=u2:1A-400 minutes=u2min\n"
    "25 bms_info $SPG max_cell_no=u1 max_temp=u1C-50 max_temp_point=u1 min_temp=u1C-50 "
    "min_temp_point=u1 bsm_status1=u1 bsm_status2=u1\n",
    # --- starting, stopping, the bill ---------------------------------------------
    "31 start_request >32 $PG start_type=u1 need_password=u1 card=h8 password=h16 vin=r17\n"
    "32 start_auth ! $SPG logical_card=b8 balance=u4:2yuan ok=u1 reason=u1\n"
    "33 remote_start_reply $SPG result=u1 reason=u1\n"
    "34 remote_start >33/serial ! $SPG logical_card=b8 card=h8 balance=u4:2yuan\n"
    "35 remote_stop_reply $PG result=u1 reason=u1\n"
    "36 remote_stop >35/gun ! $PG\n"
    "3B bill >40 $SPG start_time=t7 end_time=t7 $BP4 meter_start=u5:4kWh meter_stop=u5:4kWh $BEND\n"
    "3B bill5 >40 $SPG start_time=t7 end_time=t7 $BP4 "
    "deep_price=u4:5yuan/kWh deep_energy=u4:4kWh deep_loss=u4:4kWh deep_amount=u4:4yuan "
    "meter_start=u5:4kWh meter_stop=u5:4kWh $BEND\n"
    # Piles from before V1.5: 4-byte meter readings (body 156). Read only:
    # the encoder picks the longest layout whose fields are given, bill.
    "3B bill156 >40 $SPG start_time=t7 end_time=t7 $BP4 meter_start=u4:4kWh meter_stop=u4:4kWh "
    "$BEND\n"
    # V1.7's bill (body 201): the meter's number, ciphertext, protocol
    # version and encryption after the times (docs/protocol.md cites the source).
    "3D bill17 >40 $SPG start_time=t7 end_time=t7 meter_no=b6 meter_cipher=h34 meter_proto=u2 "
    "meter_enc=u1 $BP4 meter_start=u5:4kWh meter_stop=u5:4kWh $BEND\n"
    "40 bill_confirm serial=b16 result=u1\n",
    # --- account balance, offline cards ---------------------------------------------
    "41 balance_update_reply $P card=h8 result=u1\n"
    "42 balance_update >41 ! $PG card=h8 balance=u4:2yuan\n"
    "43 card_sync_reply $P result=u1 reason=u1\n"
    "44 card_sync >43 $P count=u1 cards=v240[logical_card=b8,card=h8]\n"
    "45 card_clear_reply $P results=v240[card=h8,result=u1,reason=u1]\n"
    "46 card_clear >45 $P count=u1 cards=v192[card=h8]\n"
    "47 card_query_reply $P results=v234[card=h8,found=u1]\n"
    "48 card_query >47 $P count=u1 cards=v208[card=h8]\n",
    # --- platform settings --------------------------------------------------------------
    "51 work_params_reply $P result=u1\n"
    "52 work_params >51 $P locked=u1 max_power=u1%\n"
    "55 time_sync_reply $P time=t7\n"
    "56 time_sync >55 ! $P time=t7\n"
    "57 tariff_set_reply $P result=u1\n"
    "58 tariff_set >57 ! $TARIFF\n",
    # --- parking lock (the gun number is binary here, not BCD) ---------------------------
    "61 lock_status $P gun=u1 lock_state=u1 space=u1 lock_battery=u1% alarm=u1 reserved=h4\n"
    "62 lock_command >63 $P gun=u1 action=u1 reserved=h4\n"
    "63 lock_reply $P gun=u1 result=u1 reserved=h4\n",
    # --- remote maintenance ---------------------------------------------------------------
    "91 reboot_reply $P result=u1\n"
    "92 reboot >91 ! $P when=u1\n"
    # An 11-byte reboot seen from some platforms: the documented 8 bytes,
    # then 3 more our table cannot name (kept opaque; docs/protocol.md).
    "92 reboot11 >91 ! $P when=u1 reserved=h3\n"
    "93 update_reply $P status=u1\n"
    "94 update >93 $P pile_model=u1 power=u2kW server=a16 port=u2 user=a16 password=a16 path=a32 "
    "when=u1 timeout=u1min\n",
    # --- dual-gun parallel charging -----------------------------------------------------------
    "A1 parallel_request >A2 $PG start_type=u1 need_password=u1 card=h8 password=h16 vin=r17 "
    "role=u1 group=b6\n"
    "A2 parallel_auth $SPG logical_card=b8 balance=u4:2yuan ok=u1 reason=u1 group=b6\n"
    "A3 parallel_start_reply $SPG result=u1 reason=u1 role=u1 group=b6\n"
    "A4 parallel_start >A3 $SPG logical_card=b8 card=h8 balance=u4:2yuan group=b6\n",
    # --- extension frames (0xD0..0xEF), documented in docs/protocol.md -------------------------
    # Signed command envelope (protocol/sign.py): the inner frame's code and
    # body, exactly as they would travel bare, under an HMAC-SHA256 with the
    # pile's command key and a counter > the last one accepted. body: at most
    # MAX_BODY 251 - 37 header bytes. A pile that holds a command key acts on
    # the protected frames (start, stop, tariffs, reboot, fw_control, VIN
    # list, balance, start_auth) only inside one; the inner frame's reply
    # echoes the envelope's sequence.
    # signed_reject.reason: 1 bad mac, 2 replay, 3 malformed, 4 store (counter
    # record unreadable / unwritable), 5 unsigned (a protected frame arrived
    # bare), 6 no key (this pile holds no command key). counter: the refused
    # envelope's, 0 when there was none.
    "D1 signed_reject counter=u4 reason=u1\n"
    "D2 signed counter=u4 mac=h32 code=u1 body=v214\n"
    # A 5-class (deep valley) tariff model: slots 0..4; answered with 0x57.
    "D4 tariff5_set >57 ! $TARIFF5\n"
    # Login proof (docs/security.md): the bridge challenges a keyed pile's
    # login; mac = HMAC(derive(K_pile, "pc/login"), pile (7 bytes BCD) | nonce).
    "D6 login_challenge >D7 $P nonce=h16\n"
    "D7 login_proof $P nonce=h16 mac=h32\n"
    # OCMF (docs/ocmf.md): the pile's P-256 public key (the uncompressed
    # point 04|X|Y), sent after each login once the key exists; the site
    # config registers it (pile.<code>.ocmf_key). bill_sig: the ECDSA-P256-
    # SHA256 signature (r, s) of a sealed bill's canonical OCMF payload
    # (protocol/ocmf.py), sent after the bill; fw is the firmware version
    # and flags bit 0 "card id in the payload", the two inputs of that text
    # the bill does not hold. Unanswered: a bill's custody never waits for
    # its signature (the pile sends it once per login in which it sends the bill).
    "D9 pile_key $P key=h65\n"
    "DB bill_sig serial=b16 fw=a8 flags=u1 r=h32 s=h32\n"
    # The site's power cap on this pile, W (0 lifts it), pushed by the bridge
    # after each login from its config (pile.<code>.power_cap_kw; docs/guns.md).
    # site_cap_reply: the cap the pile now holds, result 1 applied at its next
    # control tick, 0 the pile does not share power (nothing applied).
    "DE site_cap >DF ! $P cap=u4W\n"
    "DF site_cap_reply $P cap=u4W result=u1\n"
    # A cap on one gun, W (0 lifts it): OCPP's charging profile on that
    # EVSE (docs/ocpp.md). The gun's demand is clamped to it before the
    # pile's power is shared; the pile's own cap still holds. gun_cap_reply:
    # as site_cap_reply (result 0: the pile does not share power, or no
    # such gun).
    "DC gun_cap >DD ! $PG cap=u4W\n"
    "DD gun_cap_reply $PG cap=u4W result=u1\n",
    # --- extension frames, continued ------------------------------------------------------------
    # Remote start with targets; answered with the standard 0x33.
    "E2 ext_start >33/serial ! $SPG logical_card=b8 card=h8 balance=u4:2yuan target_amount=u4:4yuan "
    "target_energy=u4:4kWh target_minutes=u2min target_soc=u1% flags=u1\n"
    # The platform settled a bill (0x40 only says "received").
    "E3 settled_reply serial=b16 result=u1\n"
    "E4 settled >E3/serial serial=b16 result=u1\n"
    # Journal and version status, for the bridge and the technician.
    # refusing_starts: 1 while the journal is too full of unconfirmed bills
    # to take one more session (the pile answers starts with 0x33 reason
    # 0x0A), well before journal_used reaches journal_limit.
    # status_reply55: the same without refusing_starts (body 55), as sent by
    # piles still on firmware from before that field; kept so that a bridge
    # reads both halves of a fleet in mid-upgrade (the decoder picks by body
    # length; a missing refusing_starts means "unknown").
    "E5 status_reply $P pending=u2 unsettled=u2 illegal=u2 journal_used=u4B journal_limit=u4B "
    "oldest_pending=b16 state=u1 boot_reason=u1 fw_version=a8 hmi_version=a8 refusing_starts=u1\n"
    "E5 status_reply55 $P pending=u2 unsettled=u2 illegal=u2 journal_used=u4B journal_limit=u4B "
    "oldest_pending=b16 state=u1 boot_reason=u1 fw_version=a8 hmi_version=a8\n"
    "E6 status_query >E5 $P\n"
    # Chunked firmware transfer (firmware/upgrade.py, firmware/remote.py).
    # fw_control.op: 1 begin (version, size, sha256, mac announce the image;
    # the reply's offset is where to send from: 0, or where an interrupted
    # transfer of the same image stopped), 2 verify, 3 activate (only when
    # the gun is idle; the pile then reboots into the new slot), 4 abort,
    # 5 status (changes nothing; its result is the reason the current stage
    # was reached with). Only begin reads version..mac (zero them otherwise).
    # fw_reply answers every fw_control and every fw_chunk: op (the request's;
    # 5 for a chunk), result (0 ok; 1..14 upgrade.REASONS: 1 bad mac,
    # 2 bad sha256, 3 too big, 4 no space, 5 busy, 6 pending, 7 stage,
    # 8 incomplete, 9 past end, 10 bad image, 11 io, 12 not healthy,
    # 13 bad request, 14 state lost; 0x80 no upgrade key on this pile,
    # 0x81 the pile cannot reboot itself), stage (upgrade.STAGES: 0 idle,
    # 1 downloading, 2 verified, 3 installing, 4 installed, 5 failed,
    # 6 rolled_back) and offset (the next byte the pile expects).
    "E7 fw_reply $P op=u1 result=u1 stage=u1 offset=u4B\n"
    "E8 fw_control >E7 ! $P op=u1 version=a8 size=u4B sha256=h32 mac=h32\n"
    # A data chunk: appended only at the offset the pile expects; any other
    # offset changes nothing and fw_reply says which one to send.
    "EA fw_chunk >E7 $P offset=u4B data=v200\n"
    # The fee split and VIN facts a 0x3B cannot carry (same trade serial), and its ack.
    "EB bill_extra >EC serial=b16 model=b2 sharp_energy_fee=u4:4yuan sharp_service_fee=u4:4yuan "
    "peak_energy_fee=u4:4yuan peak_service_fee=u4:4yuan flat_energy_fee=u4:4yuan "
    "flat_service_fee=u4:4yuan valley_energy_fee=u4:4yuan valley_service_fee=u4:4yuan "
    "deep_energy_fee=u4:4yuan deep_service_fee=u4:4yuan vin_mismatch=u1 nameplate_vin=a17 "
    "mac=h32\n"
    "EC bill_extra_ack serial=b16 result=u1\n"
    # The VINs allowed to charge, each with its department: pushed by the platform.
    # A new version replaces the pile's list, more frames with the same version
    # add to it (at most 12 records a frame bare, 11 inside `signed`);
    # vin_list_reply.stored = VINs the pile now holds.
    "ED vin_list_reply version=u4 result=u1 stored=u2\n"
    "EE vin_list >ED/version ! version=u4 count=u1 records=v228[vin=a17,department=u2]\n",
    # --- a platform addition seen in the field, not in the V1.6 document -----------------------
    "F0 qr_prefix >F1 $P prefix_kind=u1 prefix_len=u1 prefix=v242\n"
    "F1 qr_prefix_reply $P result=u1\n",
)


def direction(code):
    """'P' (pile to platform) for odd codes, 'S' (platform to pile) for even."""
    return "P" if code & 1 else "S"


def tokens(spec):
    """The field tokens of a spec (macros expanded)."""
    out = []
    for tok in spec.split(" "):
        if tok[:1] == "$":
            out.extend(MACROS[tok].split(" "))
        elif tok:
            out.append(tok)
    return out


def skip_columns(t, k):
    """Where the fields of the line whose name ends at t[k] start: past the
    reply and signed columns (">..." and "!")."""
    k += 1
    while t[k] == ">" or t[k] == "!":
        k = t.find(" ", k) + 1
    return k


def lines():
    """Yield (code, name, spec) for every frame, in table order."""
    for t in TABLE:
        i = 0
        while i < len(t):
            j = t.find("\n", i)
            k = t.find(" ", i + 3)
            yield int(t[i:i + 2], 16), t[i + 3:k], t[skip_columns(t, k):j]
            i = j + 1


def parse(spec):
    """The fields of a spec as tuples (name, kind, size[, scale, unit[, records]]):
    the classic form, for tools. A "v" field with records gets a sixth item,
    the records' fields in the same form."""
    return tuple([_field(tok) for tok in tokens(spec)])


def _field(tok):
    eq = tok.find("=")
    name = tok[:eq]
    kind = tok[eq + 1]
    j = eq + 2
    n = len(tok)
    size = 0
    while j < n and "0" <= tok[j] <= "9":
        size = size * 10 + ord(tok[j]) - 48
        j += 1
    scale = 0
    if j < n and tok[j] == ":":
        j += 1
        while j < n and "0" <= tok[j] <= "9":
            scale = scale * 10 + ord(tok[j]) - 48
            j += 1
    rec = tok.find("[", j)
    if rec >= 0:
        records = tuple([_field(t) for t in tok[rec + 1:-1].split(",")])
        return (name, kind, size, scale, tok[j:rec], records)
    unit = tok[j:]
    if scale or unit:
        return (name, kind, size, scale, unit)
    return (name, kind, size)


def each():
    """Yield (code, name, direction, fields) for every frame, one at a time
    (no table-sized allocation: fine on a small heap)."""
    for code, name, spec in lines():
        yield (code, name, direction(code), parse(spec))


def __getattr__(name):
    # FRAMES, the classic tuple form ((code, name, direction, fields), ...),
    # built on first use and kept (tools on CPython).
    if name == "FRAMES":
        v = tuple(each())
        globals()["FRAMES"] = v
        return v
    raise AttributeError(name)
