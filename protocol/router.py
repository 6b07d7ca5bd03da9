# One router for every end of the link (issue 18): the pile's firmware, the
# bridge's pile connection and the scripted piles. A frame code maps to one
# handler function, handler(ctx, frame), that returns the reply's values (a
# dict), the reply's body as bytes (sent as they are, e.g. a field echoed
# that is not BCD) or None (no reply). The router
#   - screens signed frames: a 0xD2 `signed` envelope is opened and checked
#     (protocol/sign.py) and its inner frame handled as if it came bare; a
#     frame marked "!" in the table arriving bare at an end holding a command
#     key is refused with 0xD1 `signed_reject`, never handled;
#   - picks the reply frame from the frame table's ">REPLY" column
#     (protocol/frames.py): a frame without one is never answered;
#   - echoes the request's sequence in the reply.
# A new frame is one line in the table plus one handler:
#
#     HANDLERS = {}
#
#     @on(HANDLERS, 0x36)          # remote_stop; the table says ">35"
#     def remote_stop(pile, f):
#         return {"pile": ..., "gun": ..., "result": 1, "reason": 0}
#
# Runs on MicroPython: nothing is built per frame beyond the reply tuple, the
# reply column is read from the table string when needed, and protocol/sign.py
# is imported only by an end that holds a key or meets an envelope.
from protocol import const
from protocol.frames import TABLE
from protocol.layout import _FIRST, _POS

_SIGNED = const(0xD2)   # protocol/frames.py `signed` (= sign.CODE_SIGNED)
_REJECT = const(0xD1)   # `signed_reject` (= sign.CODE_REJECT)


def on(handlers, *codes):
    """Decorator: register the function as the handler of frame `codes`."""
    def register(fn):
        for c in codes:
            if c in handlers:
                raise ValueError("frame 0x%02X has a handler already" % c)
            handlers[c] = fn
        return fn
    return register


def route(handlers, ctx, f, default=None, auth=None, pile=None, on_reject=None):
    """Screen, handle and answer frame f. Returns the reply as (code, values
    or body bytes, seq), or None.

    handlers: {code: handler(ctx, frame)}; default(ctx, frame): called for a
    frame no handler takes (a log line; never answered). auth: the
    receiver's command-key check (firmware/auth.CommandAuth: verify(pile,
    counter, code, body, mac) -> (ok, reason)) and pile its code; None for
    a receiver without a key: then no bare frame is refused and every
    envelope is (reason "no key"). on_reject(ctx, code, counter, reason):
    told of each refusal (an event). A function, not an object: a pile
    keeps no router state on its heap."""
    c = f.code
    refused = None
    if c == _SIGNED:
        from protocol.sign import open_signed
        inner = open_signed(f, auth, pile)
        if isinstance(inner, tuple):
            refused = inner
        else:
            f = inner
            c = f.code
    elif auth is not None:
        from protocol.sign import PROTECTED
        if c in PROTECTED:
            refused = (0, 5, c)          # reason 5: unsigned (protocol/sign.py)
    if refused is not None:
        counter, reason, code = refused
        if on_reject is not None:
            on_reject(ctx, code, counter, reason)
        return (_REJECT, {"counter": counter, "reason": reason}, f.seq)
    h = handlers.get(c)
    if h is None:
        if default is not None:
            default(ctx, f)
        return None
    return reply(f, h(ctx, f))


def reply(f, values):
    """(reply code, values, the request's seq) for a handler's result on
    frame f: the reply code is the table's ">REPLY" column. None when there
    is no result or nothing answers f."""
    if values is None or not _FIRST[f.code]:
        return None
    k = _FIRST[f.code] - 1
    t = TABLE[_POS[k] >> 12]
    e = t.find(" ", (_POS[k] & 0xFFF) + 3)     # the end of the frame's name
    if t[e + 1] != ">":
        return None
    return (int(t[e + 2:e + 4], 16), values, f.seq)
