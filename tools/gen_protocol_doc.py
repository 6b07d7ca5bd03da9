"""Regenerates the generated parts of docs/protocol.md from the frame table.

    python3 -m tools.gen_protocol_doc           rewrite docs/protocol.md in place
    python3 -m tools.gen_protocol_doc --check   exit 1 if it is out of date

docs/protocol.md is prose written by hand with generated blocks between
`<!-- BEGIN generated:NAME -->` and `<!-- END generated:NAME -->` markers:
`frames` (every frame as a table of fields, bytes, kind, units and scales,
from protocol/frames.py), `stop-reasons` (host/dissect.STOP_REASONS) and
`samples` (the document's own sample frames, their CRCs recomputed),
`examples` (whole frames built by the codec from the values below, each
with its decoded fields: tests/test_doc_frames.py decodes every one). Only the
blocks are rewritten; tests/test_protocol_doc.py fails when they drift.

The titles and field notes below are presentation: every note must name a
frame and field that exist (checked when generating), so they cannot outlive
a rename.
"""
import argparse
import os
import sys

from protocol import codec
from protocol import frames as T
from protocol.crc import crc16
from host import dissect as D
from host.console import field_pair as field_text  # a field as the examples and pile-console spy show it

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "protocol.md")

# frame name -> (the V1.6 document's name for it, what it is for)
TITLES = {
    "login": ("充电桩登录认证", "The pile logs in after every reset or reconnection; nothing else "
              "is exchanged before a successful login."),
    "login_reply": ("登录认证应答", "Login result."),
    "heartbeat": ("充电桩心跳包", "Every 10 s; three missed replies mean the link is down: log in "
                  "again."),
    "heartbeat_reply": ("心跳包应答", "Heartbeat reply."),
    "tariff_check": ("计费模型验证请求", "After login (and after uploading stored bills) the pile "
                     "asks whether its tariff model is current."),
    "tariff_check_reply": ("计费模型验证请求应答", "Same model or not."),
    "tariff_request": ("充电桩计费模型请求", "The pile asks for the current tariff model; no "
                       "charging without one."),
    "tariff_model": ("计费模型请求应答", "The tariff model: 8 rates and 48 half-hour slots."),
    "read_realtime": ("读取实时监测数据", "The platform asks for a realtime frame now."),
    "realtime": ("上传实时监测数据", "Every 15 s while charging, every 5 min idle, and at once on "
                 "any change of status or plug."),
    "bms_handshake": ("充电握手", "GB/T 27930 handshake (BRM): the vehicle's battery and VIN."),
    "bms_params": ("参数配置", "GB/T 27930 parameter exchange (BCP / CML)."),
    "bms_end": ("充电结束", "GB/T 27930 end of charge statistics (BSD / CSD)."),
    "bms_error": ("错误报文", "GB/T 27930 error messages (BEM / CEM): 2-bit timeout flags."),
    "bms_abort": ("充电阶段BMS中止", "GB/T 27930 BMS stop (BST): 2-bit flags."),
    "charger_abort": ("充电阶段充电机中止", "GB/T 27930 charger stop (CST): 2-bit flags."),
    "bms_demand": ("充电过程BMS需求、充电机输出", "Every 15 s: BMS demand (BCL / BCS) and the "
                   "charger's output (CCS)."),
    "bms_info": ("充电过程BMS信息", "Every 15 s: battery state (BSM)."),
    "start_request": ("充电桩主动申请启动充电", "A card or VIN at the pile asks to start."),
    "start_auth": ("运营平台确认启动充电", "The platform's answer, with the trade serial to use."),
    "remote_start_reply": ("远程启机命令回复", "Answer to 0x34 (and to our 0xE2)."),
    "remote_start": ("运营平台远程控制启机", "Remote start (app)."),
    "remote_stop_reply": ("远程停机命令回复", "Answer to 0x36."),
    "remote_stop": ("运营平台远程停机", "Remote stop: the platform closes the order the moment "
                    "it sends this; the pile must stop."),
    "bill": ("交易记录", "The bill (transaction record), 4 periods: body 158, length byte 0xA2."),
    "bill5": ("交易记录 (5 periods)", "The same bill with a fifth, deep-valley block, as seen in "
              "the field: body 174, length byte 0xB2."),
    "bill156": ("交易记录 (before V1.5)", "The bill of piles from before V1.5: meter readings in 4 "
                "bytes, body 156, length byte 0xA0. Read only: the encoder sends `bill`."),
    "bill17": ("交易记录 (V1.7)", "V1.7's bill: the 0x3B fields with the meter's number, "
               "ciphertext, protocol version and encryption after the times; body 201, length "
               "byte 0xCD. Layout from the V1.7 field table (see \"V1.7's bill\" above). "
               "Answered with 0x40 like 0x3B."),
    "bill_confirm": ("交易记录确认", "The platform received the bill (not: settled it)."),
    "balance_update_reply": ("余额更新应答", "Answer to 0x42."),
    "balance_update": ("远程账户余额更新", "New balance of the user charging now."),
    "card_sync_reply": ("离线卡数据同步应答", "Answer to 0x44."),
    "card_sync": ("离线卡数据同步", "Offline cards to store (insert or overwrite)."),
    "card_clear_reply": ("离线卡数据清除应答", "One result per card; no count field."),
    "card_clear": ("离线卡数据清除", "Offline cards to delete."),
    "card_query_reply": ("离线卡数据查询应答", "One result per card; no count field."),
    "card_query": ("离线卡数据查询", "Which of these offline cards does the pile hold?"),
    "work_params_reply": ("充电桩工作参数设置应答", "Answer to 0x52."),
    "work_params": ("充电桩工作参数设置", "Lock the pile or limit its power."),
    "time_sync_reply": ("对时设置应答", "Answer to 0x56."),
    "time_sync": ("对时设置", "Clock setting, daily."),
    "tariff_set_reply": ("计费模型应答", "Answer to 0x58."),
    "tariff_set": ("计费模型设置", "The platform pushes a tariff model (only while idle)."),
    "lock_status": ("地锁数据上送", "Parking lock state, at once on change, else every 5 min."),
    "lock_command": ("遥控地锁升锁与降锁命令", "Raise or lower the parking lock."),
    "lock_reply": ("充电桩返回数据", "Answer to 0x62."),
    "reboot_reply": ("远程重启应答", "Answer to 0x92."),
    "reboot": ("远程重启", "Reboot now or when idle."),
    "reboot11": ("远程重启 (11 bytes)", "An 11-byte reboot some platforms send: the documented "
                 "8 bytes, then 3 our table cannot name, kept as `reserved` (a best reading, "
                 "see \"What is read leniently\" above)."),
    "update_reply": ("远程更新应答", "Answer to 0x94."),
    "update": ("远程更新", "Upgrade by FTP download (our serial link uses 0xE7/0xE8/0xEA "
               "instead)."),
    "parallel_request": ("充电桩主动申请并充充电", "Parallel (dual-gun) start asked at the pile, "
                         "one frame per gun."),
    "parallel_auth": ("运营平台确认并充启动充电", "The platform's answer per gun; start only if "
                      "every gun is authorised."),
    "parallel_start_reply": ("远程并充启机命令回复", "Answer to 0xA4, per gun."),
    "parallel_start": ("运营平台远程控制并充启机", "Remote parallel start, one frame per gun."),
    "signed_reject": ("ours", "The pile refused a signed envelope (or a protected frame that "
                      "arrived bare): nothing was executed."),
    "signed": ("ours", "A command under the pile's HMAC-SHA256 and a replay counter; the inner "
               "frame is handled as if it had arrived bare (see Signed commands)."),
    "tariff5_set": ("ours", "A 5-class tariff model (deep valley); the pile answers with the "
                    "standard 0x57."),
    "login_challenge": ("ours", "The bridge's challenge to a keyed pile's login, before the "
                        "0x02 answer: prove you hold your key (docs/security.md)."),
    "login_proof": ("ours", "A keyed pile's answer to 0xD6; an unkeyed pile does not answer."),
    "site_cap": ("ours", "The site's power cap on this pile, pushed by the bridge after login; "
                 "the pile's power sharing keeps every gun together under it (docs/guns.md)."),
    "site_cap_reply": ("ours", "Answer to 0xDE."),
    "gun_cap": ("ours", "A power cap on one gun (an OCPP charging profile on that EVSE), "
                        "pushed by the bridge; the pile's own cap still holds (docs/ocpp.md)."),
    "gun_cap_reply": ("ours", "Answer to 0xDC."),
    "pile_key": ("ours", "The pile's OCMF public key (P-256), after each login once it exists "
                 "(docs/ocmf.md); unanswered."),
    "bill_sig": ("ours", "The pile's ECDSA-P256 signature of a bill's OCMF payload, after the "
                 "bill (docs/ocmf.md); unanswered, custody never waits for it."),
    "ext_start": ("ours", "Remote start with targets (amount, energy, time, SOC); the pile "
                  "answers with the standard 0x33."),
    "settled_reply": ("ours", "The pile acknowledges 0xE4."),
    "settled": ("ours", "The platform settled the bill with this serial (0x40 only says "
                "received)."),
    "status_reply": ("ours", "Journal and version status (semantics: firmware/journal.py, "
                     "firmware/pile.py)."),
    "status_reply55": ("ours", "The 0xE5 of piles still on firmware from before "
                       "`refusing_starts`: the same fields without it. The decoder "
                       "picks the form by body length; the bridge reads the missing flag as "
                       "unknown and judges the journal full from `journal_used` >= "
                       "`journal_limit` alone."),
    "status_query": ("ours", "The bridge or a technician asks for 0xE5."),
    "fw_reply": ("ours", "Answer to every 0xE8 and 0xEA: result, stage and the next offset "
                 "(see Firmware upgrade)."),
    "fw_control": ("ours", "Firmware transfer control: begin / verify / activate / abort / "
                   "status (see Firmware upgrade)."),
    "fw_chunk": ("ours", "A firmware data chunk at `offset`; answered with 0xE7 giving the next "
                 "offset."),
    "bill_extra": ("ours", "The fee split and VIN facts a 0x3B cannot carry; same trade "
                   "serial, sent after the bill."),
    "bill_extra_ack": ("ours", "The platform received 0xEB."),
    "vin_list_reply": ("ours", "The pile stored (or refused) the VIN list of `version`."),
    "vin_list": ("ours", "VINs allowed to charge, each with its department id; pushed by the "
                 "platform."),
    "qr_prefix": ("二维码前缀下发", "Not in the V1.6 document: a later platform addition (QR "
                  "code prefix) seen in the field; its sample frame verifies."),
    "qr_prefix_reply": ("桩应答返回下发二维码前缀指令", "Answer to 0xF0."),
}

_RESULT01 = "0 failed, 1 ok"
_ROLE = "0 main gun, 1 auxiliary gun"
_GROUP = "parallel-charge number YYMMDDhhmmss, the same for every gun of one parallel charge"
_AUTH_REASON = ("1 no such account, 2 account frozen, 3 balance too low, 4 unsettled record on "
                "the card, 5 pile disabled, 6 account may not charge here, 7 wrong password, "
                "8 station capacity too low, 9 VIN unknown, 0x0A unsettled record on the pile, "
                "0x0B pile takes no cards")
_START_REASON = ("0 none, 1 pile number mismatch, 2 gun already charging, 3 fault, 4 offline, "
                 "5 not plugged in (a success follows if plugged within 60 s)")
_TWO_BIT = "2-bit fields, 00 normal, 01 timeout, 10 untrusted: "

# "frame.field" (or "*.field" for every frame that has it) -> note
NOTES = {
    "*.pile": "pile number (桩编码), 14 digits",
    "*.gun": "gun number, BCD: 01 = gun 1",
    "*.serial": "trade serial (交易流水号): pile 7 + gun 1 + YYMMDDhhmmss 6 + counter 2 bytes",
    "*.card": "physical card number (物理卡号), left zero-padded",
    "*.logical_card": "card number printed on the card (逻辑卡号), shown on the screen",
    "*.reserved": "zero",
    "*.model": "tariff model number",
    "*.slots": "48 half-hour slots from 00:00, each 0 sharp, 1 peak, 2 flat, 3 valley",
    "*.loss_ratio": "loss ratio (计损比例); the platform does not use it: 0",
    "*.time": "the platform's clock",
    "login.pile_type": "0 DC, 1 AC",
    "login.guns": "number of guns",
    "login.proto_version": "protocol version x10: 0x10 = V1.6",
    "login.sw_version": ("program version, zero-padded; ours: the running board firmware "
                         "(see Versions)"),
    "login.net_type": "0 SIM, 1 LAN, 2 WAN, 3 other",
    "login.sim": "SIM card number, zero when unknown",
    "login.carrier": "0 China Mobile, 2 China Telecom, 3 China Unicom, 4 other",
    "login_reply.result": "0 ok, 1 refused (the platform then closes the connection)",
    "heartbeat.gun_status": "0 normal, 1 fault",
    "heartbeat_reply.reply": "0",
    "tariff_check.model": "0000 on the first connection",
    "tariff_check_reply.result": "0 same as the platform's, 1 different: ask with 0x09",
    "tariff_model.model": "the document says fixed 0100",
    "realtime.serial": "the running trade serial; zero when idle",
    "realtime.status": "0 offline, 1 fault, 2 idle, 3 charging; sent at once on change",
    "realtime.homed": "gun back in its holder: 0 no, 1 yes, 2 unknown",
    "realtime.plugged": "0 no, 1 yes; sent at once on change",
    "realtime.cable_code": "zero when none",
    "realtime.soc": "zero when idle and on AC piles",
    "realtime.battery_temp": "zero (raw) when idle and on AC piles",
    "realtime.minutes": "minutes charged",
    "realtime.minutes_left": "zero on AC piles",
    "realtime.loss_energy": "equals `energy` without a loss ratio",
    "realtime.amount": "(energy + service price) x loss energy",
    "realtime.faults": ("bits from 0: emergency stop, no rectifier module, air outlet hot, AC "
                        "surge protector, DC20 comms, FC08 comms, meter comms, card reader "
                        "comms, RC10 comms, fan board, DC fuse, HV contactor, door open"),
    "bms_handshake.bms_version": "V1.1 = 00 01 01 (byte 3..1)",
    "bms_handshake.battery_type": ("1 lead-acid, 2 NiMH, 3 LiFePO4, 4 LiMn2O4, 5 LiCoO2, "
                                   "6 ternary, 7 polymer Li-ion, 8 Li-titanate, 0xFF other"),
    "bms_handshake.battery_maker": "ASCII",
    "bms_handshake.pack_serial": "maker-defined",
    "bms_handshake.made_year": "year - 1985",
    "bms_handshake.charge_count": "charge cycles (BMS count)",
    "bms_handshake.ownership": "0 leased, 1 owned by the vehicle owner",
    "bms_handshake.vin": "the VIN the vehicle sends (BRM)",
    "bms_handshake.bms_sw": "bytes 8..6 reserved (FFFFFF), 5..2 build date, 1 build number",
    "bms_params.battery_voltage": "present battery voltage (unit not stated; GB/T: 0.1 V)",
    "bms_end.soc": "SOC at the end",
    "bms_end.minutes": "minutes charged",
    "bms_end.charger_no": "charger number",
    "bms_error.bem_crm": _TWO_BIT + "bits 0-1 CRM 0x00 timeout, 2-3 CRM 0xAA timeout",
    "bms_error.bem_cml_cro": _TWO_BIT + "bits 0-1 CTS/CML timeout, 2-3 CRO timeout",
    "bms_error.bem_ccs_cst": _TWO_BIT + "bits 0-1 CCS timeout, 2-3 CST timeout",
    "bms_error.bem_csd": _TWO_BIT + "bits 0-1 CSD timeout, 2-7 BMS other",
    "bms_error.cem_brm": _TWO_BIT + "bits 0-1 BRM timeout",
    "bms_error.cem_bcp_bro": _TWO_BIT + "bits 0-1 BCP timeout, 2-3 BRO timeout",
    "bms_error.cem_bcs_bcl_bst": _TWO_BIT + "bits 0-1 BCS, 2-3 BCL, 4-5 BST timeout",
    "bms_error.cem_bsd": _TWO_BIT + "bits 0-1 BSD timeout, 2-7 charger other",
    "bms_abort.abort_reason": ("2-bit fields: SOC target, total voltage set point, cell voltage "
                               "set point, stopped by the charger"),
    "bms_abort.abort_fault": ("2-bit fields: insulation, output connector hot, BMS component / "
                              "connector hot, charging connector, battery hot, HV relay, check "
                              "point 2 voltage, other"),
    "bms_abort.abort_error": "2-bit fields: over current, voltage abnormal",
    "charger_abort.abort_reason": ("2-bit fields: charger's condition reached, stopped by hand, "
                                   "abnormal stop, stopped by the BMS"),
    "charger_abort.abort_fault": ("2-bit fields: charger hot, charging connector, charger "
                                  "internal hot, energy cannot be delivered, emergency stop, "
                                  "other"),
    "charger_abort.abort_error": "2-bit fields: current mismatch, voltage abnormal",
    "bms_demand.charge_mode": "1 constant voltage, 2 constant current",
    "bms_demand.max_cell": "bits 0-11 highest cell voltage (0.01 V), bits 12-15 its group",
    "bms_demand.minutes_left": "the BMS's estimate",
    "bms_demand.minutes": "minutes charged",
    "bms_info.max_cell_no": "number of the highest cell (offset 1)",
    "bms_info.max_temp_point": "probe number (offset 1)",
    "bms_info.min_temp_point": "probe number (offset 1)",
    "bms_info.bsm_status1": ("2-bit fields: cell voltage (01 high, 10 low), SOC (01 high, "
                             "10 low), over current, over temperature"),
    "bms_info.bsm_status2": ("2-bit fields: insulation, output connector, charging allowed "
                             "(00 no, 01 yes), reserved"),
    "start_request.start_type": "1 card, 2 account (not supported), 3 VIN",
    "start_request.need_password": "0 no, 1 yes",
    "start_request.card": "account or physical card number",
    "start_request.password": "MD5 of the password entered",
    "start_request.vin": ("sent back to front (需反序上送); the value is in natural order; "
                          "zero unless start_type is 3"),
    "start_auth.balance": "account balance",
    "start_auth.ok": "0 refused, 1 authorised",
    "start_auth.reason": _AUTH_REASON,
    "remote_start.balance": "account balance",
    "remote_start_reply.result": _RESULT01,
    "remote_start_reply.reason": _START_REASON + (
        "; ours: 0x0A journal full of unconfirmed bills (0x32's \"unsettled record on the "
        "pile\"): nothing started, refused until bills are confirmed (0xE5 refusing_starts); "
        "0x0C trade serial already used on this pile, or stamped no later than the newest "
        "serial its journal forgot (a repeated start): nothing started, no second bill"),
    "remote_stop_reply.result": _RESULT01,
    "remote_stop_reply.reason": "0 none, 1 pile number mismatch, 2 gun not charging, 3 other",
    "bill_confirm.result": "0 received, 1 illegal bill; neither means settled",
    "balance_update_reply.card": "zero: the user charging now",
    "balance_update_reply.result": "0 ok, 1 wrong pile number, 2 wrong card",
    "balance_update.card": "if not zero, the pile checks that this card is charging",
    "balance_update.balance": "new balance",
    "card_sync_reply.result": _RESULT01,
    "card_sync_reply.reason": "1 card number format, 2 storage full",
    "card_sync.count": "number of records, at most 15",
    "card_clear.count": "number of records, at most 24",
    "card_query.count": "number of records, at most 26",
    "card_clear_reply.results": "result: 0 failed, 1 cleared; reason: 0 none, 1 card format",
    "card_query_reply.results": "found: 0 no, 1 yes",
    "work_params.locked": "0 may work, 1 stopped (pile locked)",
    "work_params.max_power": "30..100 % of rated power",
    "work_params_reply.result": _RESULT01,
    "tariff_set_reply.result": _RESULT01,
    "lock_status.gun": "gun number, binary here",
    "lock_status.lock_state": "0x00 moving, 0x55 up, 0xFF down",
    "lock_status.space": "0x00 empty, 0xFF car parked",
    "lock_status.lock_battery": "lock battery 0..100 %",
    "lock_status.alarm": "0x00 none, 0xFF arm damaged while idle, 0x55 arm did not reach position",
    "lock_command.gun": "gun number, binary here",
    "lock_command.action": "0x55 raise, 0xFF lower",
    "lock_reply.gun": "gun number, binary here",
    "lock_reply.result": "1 done, 0 refused",
    "reboot.when": "1 now, 2 when idle",
    "reboot11.reserved": "not in the document: kept opaque",
    "bill17.meter_no": "the meter's number (电表表号)",
    "bill17.meter_cipher": "the meter's ciphertext (电表密文), kept as sent",
    "bill17.meter_proto": "the meter's protocol version (电表协议版本号)",
    "bill17.meter_enc": "encryption method (加密方式)",
    "bill156.meter_start": "meter reading, 4 bytes (before V1.5)",
    "bill156.meter_stop": "meter reading, 4 bytes (before V1.5)",
    "reboot_reply.result": _RESULT01,
    "update.pile_model": "1 DC, 2 AC",
    "update.power": "rated power",
    "update.server": "FTP server address",
    "update.port": "FTP port",
    "update.path": "file path, defined by the platform",
    "update.when": "1 now, 2 when idle",
    "update.timeout": "download timeout",
    "update_reply.status": ("0 ok, 1 wrong pile number, 2 program does not fit the pile model, "
                            "3 download timed out"),
    "parallel_request.start_type": "1 card, 2 account (not supported), 3 VIN",
    "parallel_request.vin": "sent back to front, as in 0x31",
    "parallel_request.role": _ROLE,
    "parallel_request.group": _GROUP + "; made by the pile",
    "parallel_auth.ok": "0 refused, 1 authorised",
    "parallel_auth.reason": _AUTH_REASON,
    "parallel_auth.group": "as sent in 0xA1",
    "parallel_start_reply.result": _RESULT01,
    "parallel_start_reply.reason": _START_REASON,
    "parallel_start_reply.role": _ROLE,
    "parallel_start_reply.group": "as sent in 0xA4",
    "parallel_start.group": _GROUP + "; made by the platform",
    "bill.sharp_price": "energy + service price of the period (so for every period)",
    "bill.meter_start": "meter reading, 5 bytes",
    "bill.meter_stop": "meter reading, 5 bytes",
    "bill.total_loss": "energy with the loss ratio applied",
    "bill.total_amount": "energy + service fees",
    "bill.vin": "natural order here (not reversed), zero-padded",
    "bill.trade_flag": "1 app, 2 card, 4 offline card, 5 VIN",
    "bill.trade_time": "when the bill was made",
    "bill.stop_reason": "see Stop reasons",
    "ext_start.target_amount": "0 = no amount target",
    "ext_start.target_energy": "0 = no energy target",
    "ext_start.target_minutes": "0 = no time target",
    "ext_start.target_soc": "0 = no SOC target",
    "settled.result": "see firmware/journal.py",
    "signed_reject.counter": "the refused envelope's counter; 0 when there was none",
    "signed_reject.reason": ("1 bad mac, 2 replay, 3 malformed, 4 store, 5 unsigned, 6 no key "
                             "(see Signed commands)"),
    "signed.counter": "greater than the last counter the pile accepted",
    "login_challenge.nonce": "16 random bytes, new for every login",
    "login_proof.nonce": "the challenge's nonce, echoed",
    "site_cap.cap": "W; 0 lifts the cap",
    "pile_key.key": "the uncompressed P-256 point 04 | X | Y (65 bytes)",
    "bill_sig.fw": "the firmware version in the signed payload (GV, MF)",
    "bill_sig.flags": "bit 0: the card id is in the payload (IS/IT/ID)",
    "bill_sig.r": "ECDSA r, 32 bytes big-endian",
    "bill_sig.s": "ECDSA s, 32 bytes big-endian",
    "site_cap_reply.cap": "the cap the pile holds now, W (0: none)",
    "site_cap_reply.result": "1 applied at the next control tick, 0 the pile does not share power",
    "gun_cap.cap": "W; 0 lifts the gun's cap",
    "gun_cap_reply.cap": "the cap the gun holds now, W (0: none)",
    "gun_cap_reply.result": "1 applied at the next control tick, 0 the pile does not share power "
                            "or has no such gun",
    "login_proof.mac": "HMAC-SHA256(derive(K_pile, \"pc/login\"), pile (7 bytes BCD) | nonce)",
    "signed.mac": "HMAC-SHA256 (see Signed commands)",
    "signed.code": "the inner frame's type (0x34, 0x92, ...)",
    "signed.body": "the inner frame's body, exactly as it would travel bare",
    "tariff5_set.slots": ("48 half-hour slots from 00:00, each 0 sharp, 1 peak, 2 flat, "
                          "3 valley, 4 deep valley"),
    "tariff5_set.deep_energy_price": "deep-valley energy price",
    "tariff5_set.deep_service_price": "deep-valley service price",
    "status_reply.state": ("gun state: 0 idle, 1 plugged, 2 authorising, 3 charging, "
                           "4 stopping, 5 finished"),
    "status_reply.boot_reason": ("why this boot: 0 power-on, 1 reboot now, 2 reboot when idle, "
                                 "3 rollback (a new firmware never became healthy), "
                                 "4 upgrade (booted into a newly activated firmware)"),
    "status_reply.fw_version": "board firmware of the running slot (see Versions)",
    "status_reply.hmi_version": "screen (HMI) firmware (see Versions)",
    "status_reply.refusing_starts": ("1: the journal is too full of unconfirmed bills to take "
                                     "one more session, so starts are refused (0x33 reason "
                                     "0x0A); it refuses well before journal_used reaches "
                                     "journal_limit (room is kept for the open sessions' "
                                     "checkpoints and bills)"),
    "fw_reply.op": "the request's op; 5 for a chunk",
    "fw_reply.stage": ("0 idle, 1 downloading, 2 verified, 3 installing, 4 installed, "
                       "5 failed, 6 rolled_back"),
    "fw_reply.result": "0 ok, else see Firmware upgrade",
    "fw_reply.offset": "the next byte the pile expects (send from here)",
    "fw_control.op": "1 begin, 2 verify, 3 activate, 4 abort, 5 status",
    "fw_control.version": "begin only: the image's version (at most 8 characters)",
    "fw_control.size": "begin only: image bytes",
    "fw_control.sha256": "begin only: SHA-256 of the image",
    "fw_control.mac": "begin only: HMAC-SHA256 over the announcement (docs/upgrade.md)",
    "fw_chunk.data": "up to 200 bytes at `offset`",
    "bill_extra.vin_mismatch": "1 if the vehicle's VIN differs from the nameplate VIN",
    "bill_extra.mac": ("HMAC-SHA256 of the 0x3B body (see Bill MAC); zero when the pile has no "
                       "bill key"),
    "vin_list.version": "list version: a new one replaces the list, the same one adds to it",
    "vin_list.count": "number of records, at most 12 per frame (11 inside 0xD2)",
    "vin_list_reply.result": "0 stored, 1 refused (nothing of the frame stored)",
    "vin_list_reply.stored": "records the pile now holds",
    "qr_prefix.prefix_kind": "0 prefix + pile number, 1 prefix + organisation + pile number",
    "qr_prefix.prefix_len": "length of `prefix`",
    "qr_prefix.prefix": "ASCII URL prefix",
    "qr_prefix_reply.result": _RESULT01,
}

# The V1.6 document's own sample frames, as printed (hex grouped as there; the
# 48 zero tariff slots and zero BMS fields written out), for the CRC table.
SAMPLES = [
    ('0x01 login',
     '68 22 0000 00 01 55031412782305 00 02 0F 56342E312E353000 01 '
     '01010101010101010101 04 675A'),
    ('0x02 login_reply',
     '68 0C 0000 00 02 55031412782305 00 DA4C'),
    ('0x03 heartbeat',
     '68 0D 0001 00 03 32010200000001 01 00 6890'),
    ('0x04 heartbeat_reply',
     '68 0D 3600 00 04 55031412782305 01 00 65B2'),
    ('0x05 tariff_check',
     '68 0D 0002 00 05 32010200000001 0001 9C00'),
    ('0x06 tariff_check_reply',
     '68 0E CE04 00 06 55031412782305 0000 00 8E2F'),
    ('0x09 tariff_request',
     '68 0B 0200 00 09 55031412782305 DD25'),
    ('0x12 read_realtime',
     '68 0C 0000 00 12 32010200000001 01 0069'),
    ('0x15 bms_handshake',
     '68 4D 0015 00 15 32010200000000111511161555350026 32010200000001 01 000000 '
     '00 0000 0000 00000000 00000000 00 00 00 000000 00 00 '
     '0000000000000000000000000000000000 0000000000000000 FED2'),
    ('0x17 bms_params',
     '68 31 0016 00 17 32010200000000111511161555350026 32010200000001 01 0000 '
     '0000 0000 0000 00 0000 0000 0000 0000 0000 0000 D18A'),
    ('0x19 bms_end',
     '68 2B 0016 00 19 32010200000000111511161555350026 32010200000001 01 00 0000 '
     '0000 00 00 0000 0000 00000000 AE36'),
    ('0x1B bms_error',
     '68 24 0017 00 1B 32010200000000111511161555350026 32010200000001 01 00 00 00 '
     '00 00 00 00 00 A2F3'),
    ('0x1D bms_abort',
     '68 20 0018 00 1D 32010200000000111511161555350026 32010200000001 01 00 0000 '
     '00 8445'),
    ('0x21 charger_abort',
     '68 20 0018 00 21 32010200000000111511161555350026 32010200000001 01 00 0000 '
     '00 8445'),
    ('0x23 bms_demand',
     '68 30 0019 00 23 32010200000000111511161555350026 32010200000001 01 0000 '
     '0000 00 0000 0000 0000 00 0000 0000 0000 0000 1D57'),
    ('0x25 bms_info',
     '68 23 0021 00 25 32010200000000111511161555350026 32010200000001 01 00 00 00 '
     '00 00 00 00 72B9'),
    ('0x34 remote_start',
     '68 30 007C 00 34 55031412782305012018061914444680 55031412782305 01 '
     '0000001000000573 00000000D14B0A54 A0860100 4622'),
    ('0x35 remote_stop_reply',
     '68 0E 0003 00 35 32010200000001 01 01 00 907E'),
    ('0x36 remote_stop',
     '68 0C 0003 00 36 32010200000001 01 C1A9'),
    ('0x40 bill_confirm',
     '68 15 0002 00 40 55031412782305012018061910262392 00 48B1'),
    ('0x41 balance_update_reply',
     '68 13 0006 00 41 32010200000001 00000000D14B0A54 01 4AC4'),
    ('0x42 balance_update',
     '68 18 0006 00 42 32010200000001 01 00000000D14B0A54 00000000 72EA'),
    ('0x43 card_sync_reply',
     '68 0D 0007 00 43 32010200000001 01 00 6890'),
    ('0x51 work_params_reply',
     '68 0C 0008 00 51 32010200000001 01 C1A9'),
    ('0x52 work_params',
     '68 0D 0008 00 52 32010200000001 01 00 6890'),
    ('0x55 time_sync_reply',
     '68 12 A101 00 55 55031412782305 98B70E11100314 0E9B'),
    ('0x56 time_sync',
     '68 12 00DF 00 56 55031412782305 98B70E11100314 8A13'),
    ('0x57 tariff_set_reply',
     '68 0C 0009 00 57 32010200000001 01 C1A9'),
    ('0x58 tariff_set',
     '68 5E 0025 00 58 55031412782305 0100 400D0300 9C400000 E0930400 9C400000 '
     '801A0600 9C400000 20A10700 9C400000 00 '
     '000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000 '
     '0E60'),
    ('0x0A tariff_model',
     '68 5E 0200 00 0A 55031412782305 0100 400D0300 9C400000 E0930400 9C400000 '
     '801A0600 9C400000 20A10700 9C400000 00 '
     '000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000 '
     '5E60'),
    ('0x61 lock_status',
     '68 14 0001 00 61 32010200000001 01 00 00 00 00 00000000 6890'),
    ('0x62 lock_command',
     '68 0D 0001 00 62 32010200000001 01 55 00000000 6890'),
    ('0x63 lock_reply',
     '68 0D 0001 00 63 32010200000001 01 00 00000000 6890'),
    ('0x91 reboot_reply',
     '68 0C 0011 00 91 32010200000001 01 C1A9'),
    ('0x92 reboot',
     '68 0C 0011 00 92 32010200000001 01 C1A9'),
    ('0x93 update_reply',
     '68 0C 0012 00 93 32010200000001 01 C1A9'),
    ('0xF0 qr_prefix',
     '68 5E 0006 00 F0 36100095124032 01 51 '
     '68747470733a2f2f6368617267696e672e667a63736e792e636f6d2f636f64652f67756e44657461696c3f6f72674e6f3d4d4133383631375938266964 '
     '3d313836302663617253636f70653d31266e6f3d d8c9'),
    ('0xF1 qr_prefix_reply',
     '68 0C 0006 00 F1 36100095124032 01 fc30'),
]


def _check_notes():
    names = dict((n, set(f[0] for f in D.FIELDS[n])) for n in D.FIELDS)
    for key in NOTES:
        frame, field = key.split(".", 1)
        if frame == "*":
            if not any(field in s for s in names.values()):
                raise ValueError("note for unknown field %r" % key)
        elif frame not in names or field not in names[frame]:
            raise ValueError("note for unknown frame or field %r" % key)
    for n in names:
        if n not in TITLES:
            raise ValueError("frame %s has no title" % n)
    for n in TITLES:
        if n not in names:
            raise ValueError("title for unknown frame %s" % n)


# An older form of a frame shares its notes with the current one.
NOTES_OF = {"status_reply55": "status_reply", "bill156": "bill", "bill17": "bill",
            "reboot11": "reboot"}


def _note(frame, field):
    return (NOTES.get(frame + "." + field) or NOTES.get(NOTES_OF.get(frame, "") + "." + field)
            or NOTES.get("*." + field, ""))


def _kind(f):
    kind, size = f[1], f[2]
    if kind == "u":
        return "u%d" % (size * 8) if size in (1, 2, 4, 8) else "u%d (%d bytes)" % (size * 8, size)
    if kind == "b":
        return "BCD"
    if kind == "a":
        return "ASCII"
    if kind == "r":
        return "ASCII, reversed"
    if kind == "h":
        return "binary (hex)"
    if kind == "t":
        return "CP56Time2a"
    if kind == "v":
        if len(f) > 5:
            rec = sum(r[2] for r in f[5])
            return "0..%d records of %d bytes" % (size // rec, rec)
        return "bytes, 0..%d" % size
    return kind


def _unit(f):
    if f[1] != "u":
        return ""
    scale, unit, offset = D._unit(f)
    if not scale and not unit:
        return ""
    step = "1" if not scale else "0." + "0" * (scale - 1) + "1"
    text = "%s %s" % (step, unit) if unit else "x%s" % (10 ** scale)
    if offset:
        text += ", offset %+d %s" % (offset, unit)
    return text.strip()


def _cell(s):
    return str(s).replace("|", "\\|")


def _frame_table(code, name, fields):
    out = ["| # | field | bytes | offset | kind | unit / scale | notes |",
           "|---|---|---|---|---|---|---|"]
    off = 0
    for i, f in enumerate(fields, 1):
        note = _note(name, f[0])
        size = "0..%d" % f[2] if f[1] == "v" else str(f[2])
        out.append("| %d | `%s` | %s | %d | %s | %s | %s |" % (
            i, f[0], size, off, _kind(f), _unit(f), _cell(note)))
        if f[1] != "v":
            off += f[2]
        if len(f) > 5:
            roff = 0
            for r in f[5]:
                out.append("| | &nbsp;&nbsp;`%s` (each record) | %d | +%d | %s | %s | %s |" % (
                    r[0], r[2], roff, _kind(r), _unit(r), _cell(_note(name, r[0]))))
                roff += r[2]
    return out


def frames_block():
    _check_notes()
    rows = ["| code | frame | direction | body bytes | 文档名称 |", "|---|---|---|---|---|"]
    for code, name, direction, fields in T.each():
        l = codec.layout_named(name)
        size = "%d + 0..%d" % (l.size, fields[-1][2]) if l.variable else str(l.size)
        zh = TITLES[name][0]
        rows.append("| 0x%02X | [`%s`](#0x%02x-%s) | %s | %s | %s |" % (
            code, name, code, name.replace("_", "_"), "P→S" if direction == "P" else "S→P",
            size, zh if zh != "ours" else "(extension)"))
    out = ["### Every frame at a glance", ""] + rows + [""]
    for code, name, direction, fields in T.each():
        zh, what = TITLES[name]
        l = codec.layout_named(name)
        arrow = "pile → platform" if direction == "P" else "platform → pile"
        size = ("%d bytes + up to %d" % (l.size, fields[-1][2]) if l.variable
                else "%d bytes" % l.size)
        label = "our extension" if zh == "ours" else zh
        out += ["#### 0x%02X %s" % (code, name), "",
                "%s, %s, body %s (length byte 0x%02X%s). %s" % (
                    label, arrow, size, l.size + 4, " + n" if l.variable else "", what), ""]
        out += _frame_table(code, name, fields) + [""]
    return "\n".join(out).rstrip() + "\n"


def stop_reasons_block():
    out = ["| code | meaning |", "|---|---|"]
    for code in sorted(D.STOP_REASONS):
        out.append("| 0x%02X | %s |" % (code, D.STOP_REASONS[code]))
    out.append("| 0x46..0x49, 0x58, 0x65..0x69, 0x78, 0x8A..0x8F | reserved |")
    return "\n".join(out) + "\n"


def samples_block():
    out = ["| sample | length byte | body bytes | CRC printed | CRC computed | verdict |",
           "|---|---|---|---|---|---|"]
    for label, hx in SAMPLES:
        raw = bytes.fromhex(hx.replace(" ", ""))
        got = raw[-2] | raw[-1] << 8
        want = crc16(raw[2:-2])
        if got == want:
            verdict = "verifies"
        elif got == (want >> 8 | (want & 0xFF) << 8):
            verdict = "byte-swapped"
        else:
            verdict = "does not verify"
        if raw[1] + 4 != len(raw):
            verdict += "; length byte wrong for %d bytes" % len(raw)
        out.append("| %s | 0x%02X | %d | %02X %02X | %02X %02X | %s |" % (
            label, raw[1], len(raw) - 8, raw[-2], raw[-1], want & 0xFF, want >> 8, verdict))
    return "\n".join(out) + "\n"


# Example frames: (name, seq, values). One pile, one trade: a valley-only
# bill of 10 kWh at 0.75 yuan/kWh = 7.50 yuan, so its totals reconcile.
_PILE = "55031412782305"
_SERIAL = _PILE + "01" + "261124080000" + "0007"
_T0 = 848304000          # 2026-11-24T08:00:00, seconds since 2000-01-01
EXAMPLES = (
    ("login", 1, {"pile": _PILE, "pile_type": 0, "guns": 1, "proto_version": 0x10,
                  "sw_version": "pc0.1.0", "net_type": 3, "sim": "", "carrier": 4}),
    ("login_reply", 1, {"pile": _PILE, "result": 0}),
    ("heartbeat", 7, {"pile": _PILE, "gun": "01", "gun_status": 0}),
    ("heartbeat_reply", 7, {"pile": _PILE, "gun": "01", "reply": 0}),
    ("remote_start", 12, {"serial": _SERIAL, "pile": _PILE, "gun": "01",
                          "logical_card": "1000000573", "card": "D14B0A54", "balance": 10000}),
    ("remote_start_reply", 12, {"serial": _SERIAL, "pile": _PILE, "gun": "01", "result": 1,
                                "reason": 0}),
    ("remote_stop", 13, {"pile": _PILE, "gun": "01"}),
    ("remote_stop_reply", 13, {"pile": _PILE, "gun": "01", "result": 1, "reason": 0}),
    ("bill", 21, dict({"serial": _SERIAL, "pile": _PILE, "gun": "01", "start_time": _T0,
                       "end_time": _T0 + 1800, "meter_start": 1007000, "meter_stop": 1107000,
                       "total_energy": 100000, "total_loss": 0, "total_amount": 75000,
                       "vin": "", "trade_flag": 1, "trade_time": _T0 + 1805, "stop_reason": 0x40,
                       "card": "D14B0A54", "valley_price": 75000, "valley_energy": 100000,
                       "valley_loss": 0, "valley_amount": 75000},
                      **{p + "_" + k: 0 for p in ("sharp", "peak", "flat")
                         for k in ("price", "energy", "loss", "amount")})),
    ("bill_confirm", 21, {"serial": _SERIAL, "result": 0}),
)


def examples_block():
    out = ["Whole frames as they go on the wire, built by the codec from the frame",
           "table; below each, its fields as `pile-frames decode` and `pile-console spy`",
           "read them (times in ISO 8601). tests/test_doc_frames.py decodes every",
           "one, and every other frame quoted in the docs.", ""]
    for name, seq, values in EXAMPLES:
        spec = codec.BY_NAME[name]
        raw = codec.encode(name, values, seq)
        out.append("**0x%02X %s**, seq %d, %d bytes:" % (spec.code, name, seq, len(raw)))
        out.append("")
        hx = raw.hex(" ").upper()
        # 24 bytes a line, so a bill stays readable
        step = 24 * 3
        for i in range(0, len(hx), step):
            out.append("    " + hx[i:i + step].strip())
        fields = codec.decode(raw).fields
        out.append("")
        out.append("    " + " ".join(field_text(k, v) for k, v in fields.items()
                                     if not (name == "bill" and v == 0 and "_" in k
                                             and k.split("_")[0] in ("sharp", "peak", "flat"))))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


BLOCKS = {"frames": frames_block, "stop-reasons": stop_reasons_block, "samples": samples_block,
          "examples": examples_block}


def render(text):
    """`text` with every generated block replaced by its current content."""
    for name, fn in BLOCKS.items():
        begin = "<!-- BEGIN generated:%s -->" % name
        end = "<!-- END generated:%s -->" % name
        i = text.find(begin)
        j = text.find(end)
        if i < 0 or j < i:
            raise ValueError("docs/protocol.md lacks the %s markers" % name)
        text = text[:i + len(begin)] + "\n" + fn() + text[j:]
    return text


def main(argv=None):
    p = argparse.ArgumentParser(prog="gen_protocol_doc", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/protocol.md is stale")
    p.add_argument("--doc", default=DOC)
    args = p.parse_args(argv)
    with open(args.doc, encoding="utf-8") as fh:
        text = fh.read()
    new = render(text)
    if args.check:
        if new != text:
            sys.stderr.write("%s is out of date: run python3 -m tools.gen_protocol_doc\n"
                             % args.doc)
            return 1
        return 0
    if new != text:
        with open(args.doc, "w", encoding="utf-8") as fh:
            fh.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
