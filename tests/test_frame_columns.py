# The frame table's reply and signed columns (protocol/frames.py): what
# answers each frame and which frames are signed commands, declared once and
# used by the pile (sign.PROTECTED) and the bridge (host.piles.REPLIES).
from host import piles
from protocol import codec, sign
from protocol.extras import columns
from protocol.frames import lines


def test_every_reply_is_a_frame_going_the_other_way_with_its_key_field():
    names = {}
    for code, name, _spec in lines():
        names.setdefault(code, []).append(name)
    n = 0
    for code, name, reply, key, _signed in columns():
        if reply is None:
            assert key is None, name
            continue
        n += 1
        assert reply in names, "%s: reply 0x%02X is not in the table" % (name, reply)
        assert (code ^ reply) & 1, "%s and its reply travel the same way" % name
        if key is not None:
            fields = [f[0] for f in codec.layout_named(names[reply][0]).fields]
            assert key in fields, (name, key)
    assert n >= 30


def test_signed_commands_travel_platform_to_pile_and_are_the_piles_protected_list():
    signed = []
    for code, _n, _r, _k, s in columns():
        if s and code not in signed:     # a code with two layouts (0x92) counts once
            signed.append(code)
    assert signed and all(c % 2 == 0 for c in signed)
    assert tuple(signed) == sign.PROTECTED
    # every layout of a signed code is signed (the 11-byte 0x92 too)
    assert all(s for code, _n, _r, _k, s in columns() if code in signed)
    assert 0xEA not in signed           # fw_chunk: the image carries its own MAC


def test_the_bridge_waits_for_the_reply_the_table_names():
    # The requests the bridge sent before the columns existed, unchanged.
    assert piles.REPLIES["remote_start"] == ("remote_start_reply", "serial")
    assert piles.REPLIES["ext_start"] == ("remote_start_reply", "serial")
    assert piles.REPLIES["remote_stop"] == ("remote_stop_reply", "gun")
    assert piles.REPLIES["read_realtime"] == ("realtime", "gun")
    assert piles.REPLIES["status_query"] == ("status_reply", None)
    assert piles.REPLIES["settled"] == ("settled_reply", "serial")
    assert piles.REPLIES["vin_list"] == ("vin_list_reply", "version")
    for name in ("reboot", "tariff_set", "time_sync", "fw_control", "fw_chunk"):
        assert piles.REPLIES[name][1] is None
    # Requests that share a reply tell their answers apart the same way.
    by_reply = {}
    for req, (rep, key) in piles.REPLIES.items():
        assert by_reply.setdefault(rep, key) == key, (req, rep)
