# The frame table's classic form (protocol/frames.py parse / each / FRAMES),
# which the dissector, the docs generator and the MQTT documents' scales
# (host/schema.py) read: every token form exactly, and every frame agreeing
# with the codec's own compiled layout (protocol/layout.py), which reads the
# same table by a separate path.
import pytest

from protocol import codec, frames


@pytest.mark.parametrize("tok, want", [
    ("pile=b7", ("pile", "b", 7)),
    ("energy=u4:4kWh", ("energy", "u", 4, 4, "kWh")),
    ("gun_temp=u1C-50", ("gun_temp", "u", 1, 0, "C-50")),
    ("max_current=u2:1A-400", ("max_current", "u", 2, 1, "A-400")),
    ("proto_version=u1:1", ("proto_version", "u", 1, 1, "")),
    ("soc=u1%", ("soc", "u", 1, 0, "%")),
    ("x=u2:12", ("x", "u", 2, 12, "")),            # a scale of two digits
    ("z=u4:10kWh", ("z", "u", 4, 10, "kWh")),      # a 0 digit in the scale
    ("w=u2:9V", ("w", "u", 2, 9, "V")),             # and a 9
    ("y=u3:25C+7", ("y", "u", 3, 25, "C+7")),
    ("prefix=v242", ("prefix", "v", 242)),          # a size of three digits
    ("slots=h48", ("slots", "h", 48)),
    ("records=v228[vin=a17,department=u2]",
     ("records", "v", 228, 0, "", (("vin", "a", 17), ("department", "u", 2)))),
    ("recs=v90:3kWh[e=u4:4kWh,t=t7]",
     ("recs", "v", 90, 3, "kWh", (("e", "u", 4, 4, "kWh"), ("t", "t", 7)))),
])
def test_each_field_token_parses_to_its_exact_tuple(tok, want):
    assert frames.parse(tok) == (want,)


def test_macros_expand_and_extra_spaces_are_no_fields():
    assert frames.tokens("$SPG  result=u1 ") == ["serial=b16", "pile=b7", "gun=b1", "result=u1"]
    assert frames.parse("$P") == (("pile", "b", 7),)


def test_the_reply_and_signed_columns_are_skipped():
    t = "EE vin_list >ED/version ! version=u4\n"
    assert t[frames.skip_columns(t, 11):] == "version=u4\n"
    t = "02 login_reply $P result=u1\n"
    assert t[frames.skip_columns(t, 14):] == "$P result=u1\n"


def test_direction_follows_the_code():
    assert [frames.direction(c) for c in (0x01, 0x02, 0x3B, 0x40, 0xEB, 0xEC)] == \
        ["P", "S", "P", "S", "P", "S"]


def test_every_line_of_the_table_is_read_first_to_last():
    got = list(frames.lines())
    assert got[0] == (0x01, "login", "$P pile_type=u1 guns=u1 proto_version=u1:1 sw_version=a8 "
                                     "net_type=u1 sim=h10 carrier=u1")
    assert got[-1] == (0xF1, "qr_prefix_reply", "$P result=u1")
    assert (0xEE, "vin_list", "version=u4 count=u1 records=v228[vin=a17,department=u2]") in got
    assert len(got) == sum(t.count("\n") for t in frames.TABLE)


def test_every_frame_agrees_with_the_codecs_compiled_layout():
    n = 0
    seen = set()
    for code, name, d, fields in frames.each():
        assert d == frames.direction(code)
        if name in seen:
            continue    # the second layout of 0x3B / 0xE5: layout_named gives the first
        seen.add(name)
        lay = codec.layout_named(name)
        assert [f[:3] for f in fields] == [f[:3] for f in lay.fields], name
        n += 1
    assert n >= 60


def test_frames_is_built_once_and_no_other_name_is_invented():
    v = frames.FRAMES
    assert v == tuple(frames.each())
    assert frames.FRAMES is v           # kept, not rebuilt
    for other in ("AAA", "ZZZ", "FRAMES_", "frames"):
        with pytest.raises(AttributeError):
            getattr(frames, other)
