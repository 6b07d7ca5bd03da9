# The one router (protocol/router.py) as the pile and the bridge use it: the
# reply frame always comes from the table's reply column, each end handles
# the frames that travel towards it, and the pile handles every signed
# command it screens. (tests/mp/test_router.py: the router itself, on both
# interpreters.)
import asyncio

from firmware import handlers as FH
from host import piles
from protocol import codec, sign
from protocol.extras import columns
from protocol.router import reply


class _F:
    def __init__(self, code, seq=0x0102):
        self.code = code
        self.seq = seq


def test_the_reply_is_the_frame_the_tables_reply_column_names_for_every_frame():
    n = 0
    for code, name, answer, _key, _signed in columns():
        out = reply(_F(code), {"x": 1})
        if answer is None:
            assert out is None, name
        else:
            assert out == (answer, {"x": 1}, 0x0102), name
            n += 1
    assert n >= 30


def test_the_pile_handles_only_platform_frames_and_every_signed_command():
    assert FH.HANDLERS and all(c % 2 == 0 for c in FH.HANDLERS)
    # a signed command the router let through must reach a handler
    assert [c for c in sign.PROTECTED if c not in FH.HANDLERS] == []


def test_the_bridge_handles_only_pile_frames_and_every_bill_layout():
    assert piles.HANDLERS and all(c % 2 == 1 for c in piles.HANDLERS)
    for code in (0x3B, 0x3D):
        assert piles.HANDLERS[code] is piles.HANDLERS[0x3B]


def test_the_bridge_answers_by_the_reply_frames_name_or_with_the_raw_body():
    sent = []

    class Conn:
        async def send(self, name, values, seq):
            sent.append(("send", name, values, seq))

        async def send_raw(self, code, body, seq):
            sent.append(("raw", code, body, seq))

    hb = codec.decode(codec.encode("heartbeat", {"pile": "55031412782305", "gun": "01",
                                                 "gun_status": 0}, 0x0203))
    tr = codec.decode(codec.encode("tariff_request", {"pile": "55031412782305"}, 0x0304))

    async def go():
        await piles.PileConn.answer(Conn(), reply(hb, {"reply": 0}))
        await piles.PileConn.answer(Conn(), reply(hb, b"\x01"))
        await piles.PileConn.answer(Conn(), reply(tr, {"model": "0100"}))
        await piles.PileConn.answer(Conn(), None)

    asyncio.run(go())
    assert sent == [("send", "heartbeat_reply", {"reply": 0}, 0x0203),
                    ("raw", 0x04, b"\x01", 0x0203),
                    # 0x0A: sent by name, so PileConn.send signs it for a keyed pile
                    ("send", "tariff_model", {"model": "0100"}, 0x0304)]
