"""pile-qr: interconnection QR codes for charging piles.

A roaming user scans the pile's sticker in the home operator's app; the code
holds `<prefix>?did=<pile number>&op=<operator id>` (field cases §6):

    pile-qr show --prefix https://qr.example.com/c --op MA4UJLL57 4403040003000003
    pile-qr batch piles.csv --out stickers --format svg \\
        --prefix https://qr.example.com/c --op MA4UJLL57
    pile-qr sheet piles.csv --out sheet --size 50 \\
        --prefix https://qr.example.com/c --op MA4UJLL57   # A4 pages of labelled stickers

`did` is the operator's own pile numbering (14, 16 or 20 digits), never
rewritten: it is what the apps look the pile up by. Each pile also gets its
14-digit YKC wire pile code (the BCD code in every frame), from a CSV column
`wire_code` when given, the number itself when it already has 14 digits,
else its last 14 digits with a warning; the batch manifest records which.
Rules and reasons: docs/qr.md.
"""
import argparse
import os
import sys

from host import cli
from host.qr import (QRError, _MANIFEST, make, payload, read_piles, sticker_layout, wire_code,
                     write_batch, write_sheets)


def _parser():
    ap = argparse.ArgumentParser(prog="pile-qr", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--prefix", default=os.environ.get("PILE_QR_PREFIX"),
                       help="home operator's URL prefix (or $PILE_QR_PREFIX)")
        p.add_argument("--op", default=os.environ.get("PILE_QR_OP"),
                       help="operator id, 9 characters, e.g. MA4UJLL57 (or $PILE_QR_OP)")
        p.add_argument("--no-op-check", action="store_true",
                       help="accept an operator id whose GB 11714 check character is wrong")

    s = sub.add_parser("show", help="print one pile's payload and QR code in the terminal")
    s.add_argument("pile", help="pile number: 14, 16 or 20 digits")
    s.add_argument("--wire-code", help="the pile's 14-digit YKC code, if it differs")
    s.add_argument("--compact", action="store_true", help="half-height code (Unicode blocks)")
    s.add_argument("--no-code", action="store_true", help="print the payload only")
    common(s)

    b = sub.add_parser("batch", help="write one PNG or SVG per pile of a CSV")
    b.add_argument("csv", help="CSV with a header: pile[,wire_code][,op][,prefix]")
    b.add_argument("--out", required=True, help="output directory (created)")
    b.add_argument("--format", choices=("svg", "png"), default="svg")
    b.add_argument("--scale", type=int, default=10,
                   help="pixels (PNG) or units (SVG) per module (default 10: about 400 px)")
    common(b)

    h = sub.add_parser("sheet", help="printable A4 SVG pages of labelled stickers for a CSV")
    h.add_argument("csv", help="CSV with a header: pile[,wire_code][,op][,prefix]")
    h.add_argument("--out", required=True, help="output directory (created): sheet-N.svg")
    h.add_argument("--size", type=float, default=50.0,
                   help="sticker code size in mm, quiet zone included (default 50)")
    common(h)
    cli.common(ap, log_level="warning")
    return ap


def main(argv=None):
    args = _parser().parse_args(argv)
    cli.setup_logging(args)
    verify = not args.no_op_check
    try:
        if args.cmd == "show":
            if not args.prefix:
                raise QRError("no prefix: give --prefix URL (or set PILE_QR_PREFIX)")
            if not args.op:
                raise QRError("no operator id: give --op ID (or set PILE_QR_OP)")
            data = payload(args.prefix, args.pile, args.op, verify)
            wire, source = wire_code(args.pile, args.wire_code)
            print(data)
            if source == "last14":
                _warn("pile %s: wire code taken as its last 14 digits, %s "
                      "(give --wire-code if the pile reports another)" % (args.pile, wire))
            if not args.no_code:
                make(data).terminal(out=sys.stdout, compact=args.compact)
            return 0
        if args.cmd == "batch" and args.scale < 1:
            raise QRError("--scale must be at least 1")
        piles, errors = read_piles(args.csv, args.prefix, args.op, verify)
        if errors:
            for e in errors:
                print("pile-qr: error: " + e, file=sys.stderr)
            print("pile-qr: %d bad row(s), nothing written" % len(errors), file=sys.stderr)
            return 2
        derived = [p for p in piles if p.wire_source == "last14"]
        for p in derived:
            _warn("%s:%d: pile %s: wire code taken as its last 14 digits, %s "
                  "(add a wire_code column if the pile reports another)"
                  % (args.csv, p.line, p.pile, p.wire))
        if args.cmd == "sheet":
            paths = write_sheets(piles, args.out, args.size)
            cols, rows = sticker_layout(args.size)
            print("wrote %d sticker(s) of %g mm on %d A4 page(s) (%d x %d a page) to %s"
                  % (len(piles), args.size, len(paths), cols, rows, args.out))
            return 0
        paths = write_batch(piles, args.out, args.format, args.scale)
        print("wrote %d %s file(s) and %s to %s"
              % (len(paths), args.format.upper(), _MANIFEST, args.out))
        return 0
    except QRError as e:
        print("pile-qr: error: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:
        print("pile-qr: error: %s: %s" % (getattr(e, "filename", "") or "", e.strerror or e),
              file=sys.stderr)
        return 1


def _warn(msg):
    print("pile-qr: warning: " + msg, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
