# QR codes for pile stickers (pile-qr, docs/qr.md): the payload (platform
# prefix, pile number, operator code with its GB 11714 check character), the
# pile code on the wire, batch files and A4 sticker sheets. The command line
# is tools/qr.py.
import csv
import os
import re
from urllib.parse import urlsplit

import segno


PILE_LENGTHS = (14, 16, 20)  # YKC wire code; platform numberings seen in the field
WIRE_LENGTH = 14  # YKC V1.6 pile code: 7 bytes BCD
OP_LENGTH = 9  # business-licence code fragment (GB 11714 organisation code)
ERROR_LEVEL = "m"  # at least 15 % recovery (segno raises it when the size allows)
_DIGITS = re.compile(r"[0-9]+\Z")
_OP = re.compile(r"[0-9A-Z]{9}\Z")
# GB 11714 check character: weights for the 8 body characters, mod 11.
_OP_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_MANIFEST = "manifest.csv"


class QRError(ValueError):
    """Bad input; str() is the one-line message shown to the user."""


def check_prefix(prefix):
    """The URL prefix, validated: http(s), a host, no fragment, no did/op yet."""
    if not prefix or any(c.isspace() for c in prefix):
        raise QRError("prefix %r: must be a URL without spaces" % (prefix or ""))
    parts = urlsplit(prefix)
    if parts.scheme not in ("http", "https"):
        raise QRError("prefix %r: must start with http:// or https://" % prefix)
    if not parts.hostname:
        raise QRError("prefix %r: has no host name" % prefix)
    if parts.fragment or "#" in prefix:
        raise QRError("prefix %r: must not contain a #fragment" % prefix)
    for pair in parts.query.split("&"):
        if pair.split("=", 1)[0] in ("did", "op"):
            raise QRError("prefix %r: already has a %s= parameter" % (prefix, pair.split("=", 1)[0]))
    return prefix


def check_pile(number):
    """A pile number in the operator's numbering: 14, 16 or 20 digits."""
    number = (number or "").strip()
    if not _DIGITS.match(number):
        raise QRError("pile number %r: digits only" % number)
    if len(number) not in PILE_LENGTHS:
        raise QRError("pile number %r: %d digits, must be 14 (YKC wire code), 16 or 20 "
                      "(platform numbering)" % (number, len(number)))
    return number


def op_check_char(body):
    """GB 11714 check character for the first 8 characters of an operator id."""
    total = 0
    for ch, w in zip(body, _OP_WEIGHTS):
        total += w * (int(ch) if ch.isdigit() else ord(ch) - ord("A") + 10)
    c = 11 - total % 11
    return "X" if c == 10 else "0" if c == 11 else str(c)


def check_op(op, verify=True):
    """A 9-character operator id (uppercase letters and digits).

    verify: also require the GB 11714 check character (the 9th), which
    catches a mistyped id before it is printed on a sticker.
    """
    op = (op or "").strip()
    if not _OP.match(op):
        hint = " (use uppercase)" if _OP.match(op.upper()) else ""
        raise QRError("operator id %r: must be %d characters, uppercase letters and digits%s"
                      % (op, OP_LENGTH, hint))
    if verify and op_check_char(op[:8]) != op[8]:
        raise QRError("operator id %r: check character should be %r (mistyped? "
                      "--no-op-check skips this)" % (op, op_check_char(op[:8])))
    return op


def payload(prefix, pile, op, verify_op=True):
    """The QR payload URL for one pile (inputs validated)."""
    prefix = check_prefix(prefix)
    pile = check_pile(pile)
    op = check_op(op, verify_op)
    if prefix.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&" if urlsplit(prefix).query else "?"
    return "%s%sdid=%s&op=%s" % (prefix, sep, pile, op)


def wire_code(pile, given=None):
    """(14-digit YKC wire code, source) for a pile number.

    source is "given" (an explicit code), "same" (the number is 14 digits)
    or "last14" (derived: the platform's 16/20-digit numbers keep the site
    and pile sequence in their last digits; the leading region digits are
    dropped). A derived code should be checked against what the pile sends.
    """
    pile = check_pile(pile)
    if given:
        given = given.strip()
        if not _DIGITS.match(given) or len(given) != WIRE_LENGTH:
            raise QRError("wire code %r: must be %d digits" % (given, WIRE_LENGTH))
        return given, "given"
    if len(pile) == WIRE_LENGTH:
        return pile, "same"
    return pile[-WIRE_LENGTH:], "last14"


def make(data):
    """The segno QR code for a payload (level M or better, never micro QR)."""
    return segno.make(data, error=ERROR_LEVEL, micro=False)


class Pile:
    __slots__ = ("pile", "wire", "wire_source", "op", "prefix", "payload", "line")

    def __init__(self, pile, wire, wire_source, op, prefix, data, line):
        self.pile = pile
        self.wire = wire
        self.wire_source = wire_source
        self.op = op
        self.prefix = prefix
        self.payload = data
        self.line = line


def read_piles(path, prefix=None, op=None, verify_op=True):
    """Piles from a CSV with a header row.

    Columns: `pile` (required), optional `wire_code`, `op` and `prefix` (a
    row's value wins over the command-line default). Returns (piles, errors)
    with one "file:line: message" per bad row; duplicates are errors too.
    """
    piles, errors = [], []
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise QRError("%s: %s" % (path, e.strerror or e)) from None
    with f:
        reader = csv.DictReader(f)
        fields = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
        if "pile" not in fields:
            raise QRError("%s: no 'pile' column in the header (columns: pile, "
                          "wire_code, op, prefix)" % path)
        reader.fieldnames = fields
        seen_pile, seen_wire = {}, {}
        for row in reader:
            where = "%s:%d" % (path, reader.line_num)
            get = lambda k: (row.get(k) or "").strip()  # noqa: E731
            if not any(get(k) for k in fields):
                continue  # blank line
            try:
                row_prefix = get("prefix") or prefix
                row_op = get("op") or op
                if not row_prefix:
                    raise QRError("no prefix (give --prefix or a 'prefix' column)")
                if not row_op:
                    raise QRError("no operator id (give --op or an 'op' column)")
                number = check_pile(get("pile"))
                data = payload(row_prefix, number, row_op, verify_op)
                wire, source = wire_code(number, get("wire_code"))
                if number in seen_pile:
                    raise QRError("pile %s already on line %d" % (number, seen_pile[number]))
                if wire in seen_wire:
                    raise QRError("wire code %s (%s) already used by pile %s"
                                  % (wire, source, seen_wire[wire]))
            except QRError as e:
                errors.append("%s: %s" % (where, e))
                continue
            seen_pile[number] = reader.line_num
            seen_wire[wire] = number
            piles.append(Pile(number, wire, source, row_op, row_prefix, data, reader.line_num))
    if not piles and not errors:
        errors.append("%s: no piles" % path)
    return piles, errors


def write_batch(piles, out, fmt, scale=4, border=None):
    """One <pile>.<fmt> per pile, plus manifest.csv; returns the file paths."""
    os.makedirs(out, exist_ok=True)
    paths = []
    for p in piles:
        path = os.path.join(out, "%s.%s" % (p.pile, fmt))
        make(p.payload).save(path, kind=fmt, scale=scale, border=border)
        paths.append(path)
    with open(os.path.join(out, _MANIFEST), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pile", "wire_code", "wire_code_source", "op", "payload", "file"])
        for p, path in zip(piles, paths):
            w.writerow([p.pile, p.wire, p.wire_source, p.op, p.payload, os.path.basename(path)])
    return paths


# Printable sheets: A4 pages of stickers, each a QR code `size` mm wide
# (quiet zone included) over a label with the pile number and its wire
# code, laid out in mm so that a browser or `rsvg-convert` prints them at
# size. Below _MIN_MODULE_MM a phone camera at arm's length misses modules.
_PAGE_MM = (210, 297)        # A4 portrait
_MARGIN_MM = 10
_GAP_MM = 5
_LABEL_MM = 12               # the label under each code
_MIN_MODULE_MM = 0.5
_MIN_SIZE_MM, _MAX_SIZE_MM = 20, 180


def _esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def sticker_layout(size):
    """(columns, rows) of stickers of `size` mm on a page."""
    w = _PAGE_MM[0] - 2 * _MARGIN_MM
    h = _PAGE_MM[1] - 2 * _MARGIN_MM
    return max(1, int((w + _GAP_MM) // (size + _GAP_MM))), \
        max(1, int((h + _GAP_MM) // (size + _LABEL_MM + _GAP_MM)))


def sticker_svg(p, x, y, size):
    """One sticker at (x, y) mm: the code as one path of unit squares,
    scaled to `size` mm with a 4-module quiet zone, and its label."""
    m = make(p.payload).matrix
    n = len(m) + 8
    unit = size / float(n)
    if unit < _MIN_MODULE_MM:
        raise QRError("pile %s: %d modules in %g mm is %.2f mm a module, under %.1f mm: "
                      "use a larger --size" % (p.pile, len(m), size, unit, _MIN_MODULE_MM))
    d = "".join("M%d %dh1v1h-1z" % (c + 4, r + 4)
                for r, row in enumerate(m) for c, v in enumerate(row) if v)
    label = [p.pile] + (["YKC " + p.wire] if p.wire != p.pile else [])
    out = ['<g class="sticker" data-pile="%s" data-payload="%s">' % (p.pile, _esc(p.payload)),
           '<rect x="%g" y="%g" width="%g" height="%g" fill="#fff" stroke="#bbb" '
           'stroke-width="0.2" stroke-dasharray="1 1"/>' % (x, y, size, size + _LABEL_MM),
           '<path class="qr" transform="translate(%g %g) scale(%.6f)" d="%s" fill="#000"/>'
           % (x, y, unit, d)]
    for i, text in enumerate(label):
        out.append('<text x="%g" y="%g" font-family="DejaVu Sans Mono, monospace" '
                   'font-size="%g" text-anchor="middle">%s</text>'
                   % (x + size / 2.0, y + size + 5 + 4.5 * i, 4.2 if i == 0 else 3.2, _esc(text)))
    out.append("</g>")
    return "\n".join(out)


def write_sheets(piles, out, size=50):
    """A4 SVG pages of stickers (sheet-1.svg, ...); returns their paths."""
    if not _MIN_SIZE_MM <= size <= _MAX_SIZE_MM:
        raise QRError("--size must be %d..%d mm, got %g" % (_MIN_SIZE_MM, _MAX_SIZE_MM, size))
    cols, rows = sticker_layout(size)
    per = cols * rows
    os.makedirs(out, exist_ok=True)
    paths = []
    for k in range(0, len(piles), per):
        body = []
        for j, p in enumerate(piles[k:k + per]):
            c, r = j % cols, j // cols
            body.append(sticker_svg(p, _MARGIN_MM + c * (size + _GAP_MM),
                                    _MARGIN_MM + r * (size + _LABEL_MM + _GAP_MM), size))
        path = os.path.join(out, "sheet-%d.svg" % (len(paths) + 1))
        with open(path, "w", encoding="utf-8") as f:
            f.write('<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<svg xmlns="http://www.w3.org/2000/svg" width="%dmm" height="%dmm" '
                    'viewBox="0 0 %d %d">\n%s\n</svg>\n'
                    % (_PAGE_MM + _PAGE_MM + ("\n".join(body),)))
        paths.append(path)
    return paths
