"""Fuzzing (tools/fuzz.py, docs/fuzzing.md): bounded runs of each target, and
the regressions for what the fuzzer found in the bridge."""
import json

import pytest

from host import commands as C


# --- regressions: what the fuzzer found ---------------------------------------------------

def test_a_deeply_nested_command_is_a_bad_request_not_a_lost_result():
    # json.loads raises RecursionError past ~1000 levels; it escaped parse()
    # and the command got no result at all.
    for nest in ("[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000):
        payload = ('{"id": "deep", "cmd": "status", "x": %s}' % nest).encode()
        with pytest.raises(C.CommandError) as e:
            C.parse(payload, 65536)
        assert e.value.code == "bad_request"


@pytest.mark.parametrize("field,value", [
    ("gun", "\u0661"), ("gun", "\u00b2"), ("serial", "\u0661" * 4), ("logical_card", "\u0663"),
    ("card", "0x1F"), ("card", " 1F"), ("card", "1_F"), ("card", "\u0661"),
])
def test_digits_and_hex_outside_ascii_are_bad_requests(field, value):
    # str.isdigit() and int(v, 16) accept these; the frame encoder does not,
    # so they reached the pile's link and came back as code "error".
    doc = {"id": "r1", "cmd": "start", "gun": "01", field: value}
    with pytest.raises(C.CommandError) as e:
        C.parse(json.dumps(doc).encode(), 65536)
    assert e.value.code == "bad_request" and e.value.req_id == "r1"
