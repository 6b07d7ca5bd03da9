"""pile-frames: decode and build YKC V1.6 frames (and our extension frames).

    pile-frames decode 680C000000025503141278230500DA4C
    pile-frames decode --json HEX [HEX ...]
    pile-frames decode -                     hex frames from stdin, one per line
    echo HEX | pile-frames decode            the same: no HEX and stdin not a terminal
    pile-frames decode --file capture.txt    a capture file, one hex frame per line
    pile-frames decode --raw --file dump.bin a raw byte stream (serial capture)
    pile-frames decode 6801000000000068110433333433B316   a DL/T 645 meter frame
    pile-frames encode heartbeat pile=55031412782305 gun=01 gun_status=0
    pile-frames list

Decoding checks each frame with protocol.codec (the code the pile and the
bridge run) and shows it through the construct dissector (host/dissect.py):
every field with its name and scaled value (kWh, yuan, V as numbers with
their units, BCD as digit strings, times as ISO 8601, temperatures with the
50 degree offset removed). A frame from a pile that is not ours that only
the lenient reading takes (protocol/lenient.py: a code that is not BCD, a
blank time, escaped ASCII, extra bytes) is shown with the codec's values and
its problems. A DL/T 645 meter frame (the pile's RS485 meter line) is
recognised and read with the firmware's own driver (firmware/dlt645.py):
address, control, DI and value. A bad frame prints a one-line reason on
stderr and the exit status is 1.

Encoding takes raw protocol values (integers, digit strings, hex, text); a
number written with the field's unit ("energy=12.5kWh", "gun_temp=25C",
"sharp_price=1.3yuan/kWh") is scaled for you; times take ISO 8601 or
seconds since 2000-01-01; a field of records takes a JSON list of objects.
Fields left out are zero (named on stderr).
"""
import argparse
import json
import sys

from protocol import codec
from protocol.errors import FrameError
from host import dissect as D
from sim import dlt645_frames as DLT
from host import cli
from host.frame_text import (UsageError, _as_json, _as_text, _frames_in, _hex_bytes, _lenient_json,
                             _lenient_text, _parse_value, _zero)


def _stdin_is_piped():
    """True when stdin is a pipe or file (`echo HEX | pile-frames decode`), not a terminal."""
    try:
        return sys.stdin is not None and not sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):  # closed or detached stdin
        return False


def _decode_inputs(args):
    """Yields byte strings to decode, one per frame line (or one raw stream)."""
    if args.file:
        with open(args.file, "rb") as fh:
            data = fh.read()
        if args.raw:
            yield data
            return
        text = data.decode("ascii", "replace")
    elif args.hex == ["-"] or (not args.hex and _stdin_is_piped()):
        if args.raw:
            yield sys.stdin.buffer.read()
            return
        text = sys.stdin.read()
    elif args.hex:
        text = "\n".join(args.hex)
    else:
        raise UsageError("decode: give HEX, '-' (stdin), --file F, or pipe frames in")
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        if line.strip():
            try:
                yield _hex_bytes(line)
            except FrameError as e:
                yield e


def cmd_decode(args, out, err):
    bad = 0
    count = 0
    for data in _decode_inputs(args):
        if not isinstance(data, FrameError) and not args.raw and DLT.looks_like(data):
            # A DL/T 645 meter frame (firmware/dlt645.py reads it).
            try:
                d = DLT.decode(data)
            except DLT.MeterError as e:
                bad += 1
                err.write("error: DL/T 645: %s\n" % e)
                continue
            count += 1
            out.write((json.dumps(d, ensure_ascii=False) if args.json else DLT.as_text(d)) + "\n")
            continue
        items = [data] if isinstance(data, FrameError) else _frames_in(data, args.tolerant)
        for item in items:
            if isinstance(item, FrameError):
                bad += 1
                err.write("error: %s\n" % item)
                continue
            if isinstance(item, codec.Frame):      # read leniently
                count += 1
                out.write((_lenient_json(item) if args.json else _lenient_text(item)) + "\n")
                continue
            raw, swapped = item
            try:
                c = D.parse(raw, check_crc=not swapped)
            except D.DissectError as e:  # codec accepted it: a dissector bug, say so
                bad += 1
                err.write("error: dissector: %s\n" % e)
                continue
            count += 1
            out.write((_as_json(c, swapped) if args.json else _as_text(c, swapped)) + "\n")
    if not count and not bad:
        err.write("error: nothing to decode\n")
        return 1
    return 1 if bad else 0


def cmd_encode(args, out, err):
    name = args.name
    if name not in D.FIELDS:
        raise UsageError("unknown frame %r (pile-frames list shows them)" % name)
    fields = dict((f[0], f) for f in D.FIELDS[name])
    values = {}
    for kv in args.values:
        if "=" not in kv:
            raise UsageError("%r: write key=value" % kv)
        k, v = kv.split("=", 1)
        if k not in fields:
            raise UsageError("%s has no field %r (fields: %s)" % (name, k, " ".join(fields)))
        try:
            values[k] = _parse_value(fields[k], v)
        except ValueError as e:
            raise UsageError("%s: %s" % (k, e))
    missing = [k for k in fields if k not in values]
    for k in missing:
        values[k] = _zero(fields[k])
    for k, f in fields.items():  # records travel as bytes in protocol.codec
        if f[1] == "v" and len(f) > 5 and isinstance(values[k], list):
            values[k] = codec.pack_records(name, k, values[k])
    if missing:
        err.write("note: zero for %s\n" % ", ".join(missing))
    try:
        raw = codec.encode(name, values, seq=args.seq, enc=args.enc)
    except FrameError as e:
        err.write("error: %s\n" % e)
        return 1
    out.write(raw.hex().upper() + "\n")
    return 0


def cmd_list(args, out, err):
    for name, flds in D.FIELDS.items():
        code = D.CODES[name]
        size = sum(f[2] for f in flds if f[1] != "v")
        var = [f for f in flds if f[1] == "v"]
        out.write("0x%02X %-22s %s %s bytes\n" % (code, name, "P->S" if code & 1 else "S->P",
                                                 "%d+0..%d" % (size, var[0][2]) if var else size))
    return 0


def _parser():
    p = argparse.ArgumentParser(prog="pile-frames", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decode", help="decode frames")
    d.add_argument("hex", nargs="*", help="frame(s) in hex, or - for stdin (the default when stdin is not a terminal)")
    d.add_argument("--json", action="store_true", help="one JSON object per frame")
    d.add_argument("--file", help="capture file: one hex frame per line (or --raw bytes)")
    d.add_argument("--raw", action="store_true", help="input is a raw byte stream")
    d.add_argument("--tolerant", action="store_true", help="accept byte-swapped CRCs")
    e = sub.add_parser("encode", help="build a frame")
    e.add_argument("name", help="frame name (pile-frames list)")
    e.add_argument("values", nargs="*", help="field=value ...")
    e.add_argument("--seq", type=lambda s: int(s, 0), default=0, help="sequence number")
    e.add_argument("--enc", type=int, default=0, help="encryption flag (0 plain)")
    sub.add_parser("list", help="list every frame type")
    cli.common(p, log_level="warning")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    cli.setup_logging(args)
    out, err = sys.stdout, sys.stderr
    try:
        return {"decode": cmd_decode, "encode": cmd_encode, "list": cmd_list}[args.cmd](
            args, out, err)
    except UsageError as e:
        err.write("error: %s\n" % e)
        return 2
    except BrokenPipeError:  # `pile-frames list | head`: the reader has had enough
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        err.write("error: %s\n" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
