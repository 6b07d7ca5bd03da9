# GB/T 27930-2015 over CAN (protocol/gbt27930.py): ids, the message table,
# the J1939-21 transport carrying BRM's 49 bytes, BRM and BCL fields, checked
# against the public captures in shared/context/gbt27930.md (both interpreters).
from protocol import gbt27930 as G
from protocol import gbt27930_msgs as M
from tests.mp.util import raises


def test_ids_are_the_captured_ones():
    assert G.id_of("CHM") == 0x1826F456
    assert G.id_of("BHM") == 0x182756F4
    assert G.id_of("BEM") == 0x081E56F4
    assert G.make_id(7, G.TP_CM, G.CHARGER, G.BMS) == 0x1CEC56F4   # the BMS's RTS
    assert G.make_id(7, G.TP_CM, G.BMS, G.CHARGER) == 0x1CECF456   # the charger's CTS
    assert G.make_id(7, G.TP_DT, G.CHARGER, G.BMS) == 0x1CEB56F4
    assert G.split_id(0x1826F456) == (6, 0x2600, 0xF4, 0x56)


def test_the_table_has_every_message_once_with_its_period_and_length():
    assert len(G.BY_NAME) == 19 and len(G.BY_PGN) == 19
    assert (G.BY_NAME["BCL"].period_ms, G.BY_NAME["BCL"].length) == (50, 5)
    assert G.BY_NAME["BRM"].length == 49          # 41 in table 5; 49 on the wire
    assert G.BY_PGN[0x1F00].name == "CEM" and G.BY_NAME["CEM"].prio == 2
    for m in G.BY_NAME.values():
        assert m.sender in ("C", "B") and (m.name[0] == "C") == (m.sender == "C")


def test_current_is_negative_on_the_wire():
    assert G.current_raw(1200) == 2800            # 120 A charging: raw 2800 (CML capture)
    assert G.current_da(2000) == 2000             # raw 2000 = 200 A (BCP capture)
    d = G.decode_bcl(G.encode_bcl(4100, 1500, 2))
    assert d == {"voltage_dv": 4100, "current_da": 1500, "mode": 2}
    assert G.bcl_watts(d) == 61500                # 410.0 V x 150.0 A
    raises(ValueError, G.decode_bcl, b"\x00\x01")


def test_brm_rts_is_the_captured_one_and_the_vin_comes_through_the_transport():
    brm = G.encode_brm(capacity_dah=1500, voltage_dv=3500, maker="CATL", year=2021, month=5,
                       day=7, vin="LSVAU2180N2183294")
    assert len(brm) == 49
    rts = G.tp_rts(0x0200, len(brm))
    assert rts[:4] == bytes((0x10, 0x31, 0x00, 0x07)) and G.tp_pgn(rts) == 0x0200
    rx = G.TpReceiver()
    out = rx.feed("cm", rts, 0)
    assert out == [("send", G.tp_cts(0x0200, 7, 1))]
    pk = G.tp_packets(brm)
    assert len(pk) == 7 and pk[-1][-1] == 0xFF and pk[0][0] == 1
    done = None
    t = 0
    for p in pk:
        t += 10
        for what, v in rx.feed("dt", p, t):
            if what == "done":
                done = v
    assert done == (0x0200, brm)
    d = G.decode_brm(done[1])
    assert d["vin"] == "LSVAU2180N2183294" and d["year"] == 2021 and d["capacity_dah"] == 1500
    assert not rx.busy()


def test_brm_without_a_vin():
    assert G.decode_brm(G.encode_brm())["vin"] == ""                # 17 x 0xFF
    assert G.decode_brm(G.encode_brm(vin="LSVAU2180N2183294")[:24])["vin"] == ""
    zeros = bytearray(G.encode_brm(vin="LSVAU2180N2183294"))
    zeros[24:41] = b"\x00" * 17                                      # not characters: no VIN
    assert G.decode_brm(bytes(zeros))["vin"] == ""
    raises(ValueError, G.decode_brm, b"\x00" * 10)
    raises(ValueError, G.encode_brm, vin="SHORT")


def test_transport_aborts_on_a_timeout_and_on_a_skipped_packet():
    rx = G.TpReceiver()
    rx.feed("cm", G.tp_rts(0x0200, 49), 1000)
    assert rx.poll(1000 + G.T2) == []
    out = rx.poll(1001 + G.T2)
    assert out[0] == ("send", G.tp_abort(0x0200, G.ABORT_TIMEOUT)) and out[1][0] == "abort"
    rx.feed("cm", G.tp_rts(0x0200, 49), 0)
    pk = G.tp_packets(b"\x01" * 49)
    rx.feed("dt", pk[0], 5)
    out = rx.feed("dt", pk[2], 10)                # packet 2 skipped
    assert out[-1] == ("abort", G.ABORT_TIMEOUT) and not rx.busy()
    # an RTS that does not add up is refused
    bad = bytearray(G.tp_rts(0x0200, 49))
    bad[3] = 9
    assert rx.feed("cm", bytes(bad), 0) == [("send", G.tp_abort(0x0200, G.ABORT_RESOURCES))]


def test_flag_messages_are_the_captured_bytes():
    # BEM "CRM 0xAA timeout" as captured: F4 F0 F0 FC (undefined bits 1)
    assert M.encode_flags("BEM", ("CRMAA",)) == bytes((0xF4, 0xF0, 0xF0, 0xFC))
    assert M.decode_flags("BEM", bytes((0xF4, 0xF0, 0xF0, 0xFC))) == ["CRMAA"]
    assert M.decode_flags("CEM", M.encode_flags("CEM", ("BCL",))) == ["BCL"]
    assert M.decode_flags("BST", M.encode_flags("BST", ("soc", "insulation"))) == ["soc",
                                                                                  "insulation"]
    # BSM byte 7 "D0": charging permitted, nothing else set
    bsm = M.encode_bsm(cell_no=1, max_temp_c=30, max_probe=1, min_temp_c=20, min_probe=2)
    assert bsm[6] == 0xD0 and len(bsm) == 7
    d = M.decode("BSM", bsm)
    assert M.bsm_permit(d) and M.bsm_alarms(d) == [] and d["max_temp_c"] == 30
    d = M.decode("BSM", M.encode_bsm(("overtemp",), False, cell_no=1))
    assert not M.bsm_permit(d) and M.bsm_alarms(d) == ["overtemp"]


def test_fixed_layouts_round_trip_with_the_standards_scales():
    bcp = M.encode("BCP", cell_max_cv=420, max_da=2000, energy_dkwh=600, max_dv=4500,
                   max_temp_c=60, soc_dpct=200, voltage_dv=3800)
    assert len(bcp) == 13 and bcp[2:4] == bytes((0xD0, 0x07))   # 200 A: raw 2000
    assert M.decode("BCP", bcp)["max_temp_c"] == 60 and bcp[8] == 110
    cml = M.encode("CML", max_dv=7500, min_dv=2000, max_da=1200, min_da=0)
    assert cml[4:6] == bytes((0xF0, 0x0A))                      # 120 A: raw 2800 (capture)
    for name, n in (("CHM", 3), ("BHM", 2), ("CRM", 8), ("BCS", 9), ("CCS", 8), ("BSD", 7),
                    ("CSD", 8)):
        assert len(M.encode(name)) == n                         # all "not available"
    ccs = M.encode("CCS", voltage_dv=4000, current_da=1500, minutes=3, permit=0xFD)
    assert M.decode("CCS", ccs[:7])["current_da"] == 1500       # 7 bytes seen on the wire
    assert M.encode("CRM", result=M.READY, charger_no=1) == bytes((0xAA, 1, 0, 0, 0, 0xFF, 0xFF,
                                                                   0xFF))
    assert M.encode_cts(2026, 12, 7, 18, 5, 9) == bytes((0x09, 0x05, 0x18, 0x07, 0x12, 0x26,
                                                         0x20))
    raises(ValueError, M.decode, "BCS", b"\x00" * 5)
