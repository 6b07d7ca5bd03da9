"""pile-qr: payloads, validation, batch files read back, terminal output.

No pure-Python QR *decoder* is installed, so files and terminal output are
read back into a module matrix here (PNG through zlib, SVG from its path,
ANSI from the escape codes) and compared with the matrix segno builds for the
expected payload: a file that matches encodes exactly that payload.
"""
import csv
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import pytest

from host import qr
from tools import qr as qr_cli
from sim.programs import find_program

PREFIX = "https://qr.example.com/c"
OP = "MA4UJLL57"  # the log's operator id; its GB 11714 check character is right


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="pc-qr-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_csv(dirname, rows, name="piles.csv"):
    path = os.path.join(dirname, name)
    with open(path, "w", newline="") as f:
        f.write("\n".join(rows) + "\n")
    return path


def matrix_of(payload):
    return [[bool(v) for v in row] for row in qr.make(payload).matrix]


# --- readers: a file or terminal text -> module matrix (border stripped)

def png_matrix(path, scale, border=4):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = ihdr
    assert interlace == 0 and color in (0, 3) and depth in (1, 8)
    raw = zlib.decompress(idat)
    stride = (width * depth + 7) // 8
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        ftype, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):  # PNG filters, bytes-per-pixel 1
            a = line[x - 1] if x else 0
            b, c = prev[x], prev[x - 1] if x else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 255
            elif ftype == 2:
                line[x] = (line[x] + b) & 255
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line

    def pixel(x, y):
        if depth == 8:
            return rows[y][x]
        return (rows[y][x // 8] >> (7 - x % 8)) & 1

    n = width // scale - 2 * border
    dark_value = pixel(0, 0) ^ (1 if depth == 1 else 255)  # the border is light
    half = scale // 2
    return [[pixel((border + c) * scale + half, (border + r) * scale + half) == dark_value
             for c in range(n)] for r in range(n)]


def svg_matrix(path, border=4):
    with open(path) as f:
        text = f.read()
    size = int(re.search(r'width="(\d+)"', text).group(1))
    scale = int(re.search(r'scale\((\d+)\)', text).group(1)) if "scale(" in text else 1
    n = size // scale - 2 * border
    d = re.search(r' d="([^"]+)"', text).group(1)
    grid = [[False] * n for _ in range(n)]
    x = y = 0.0
    for cmd, args in re.findall(r"([MmHhVv])([-\d. ]+)", d):
        nums = [float(v) for v in args.split()]
        if cmd == "M":
            x, y = nums
        elif cmd == "m":
            x, y = x + nums[0], y + nums[1]
        elif cmd in "hH":
            end = x + nums[0] if cmd == "h" else nums[0]
            for col in range(int(round(x)), int(round(end))):
                grid[int(y) - border][col - border] = True  # line drawn at row + 0.5
            x = end
        else:
            raise AssertionError("unexpected SVG path command " + cmd)
    return grid


def terminal_matrix(text, border=4):
    """segno's ANSI output: each module is two spaces, reverse video = light."""
    rows = []
    for line in text.splitlines():
        if "\x1b[" not in line:
            continue
        row = []
        for code, spaces in re.findall(r"\x1b\[(\d+)m( *)", line):
            if code in ("7", "49"):
                row += [code == "49"] * (len(spaces) // 2)
        rows.append(row)
    return [r[border:-border] for r in rows[border:-border]]


def compact_matrix(text, border=4):
    """segno's compact output: one character holds two rows; light is drawn."""
    upper = {" ": (True, True), "\u2580": (False, True), "\u2584": (True, False),
             "\u2588": (False, False)}
    rows = []
    for line in text.splitlines():
        if line and set(line) <= set(upper):
            rows.append([upper[ch][0] for ch in line])
            rows.append([upper[ch][1] for ch in line])
    return [r[border:-border] for r in rows[border:border + len(rows[border][border:-border])]]


# --- payload format

def test_payload_is_prefix_did_and_op():
    assert qr.payload(PREFIX, "4403040003000003", OP) == \
        "https://qr.example.com/c?did=4403040003000003&op=MA4UJLL57"


def test_payload_appends_to_an_existing_query_with_ampersand():
    assert qr.payload("http://h.example/scan?app=pc", "44200100250000200002", OP) == \
        "http://h.example/scan?app=pc&did=44200100250000200002&op=MA4UJLL57"
    assert qr.payload("https://h.example/scan?", "32010600213533", OP) == \
        "https://h.example/scan?did=32010600213533&op=MA4UJLL57"


@pytest.mark.parametrize("number", ["32010600213533", "4403040003000003", "44200100250000200002"])
def test_pile_numbers_of_14_16_and_20_digits_are_accepted(number):
    assert qr.check_pile(number) == number


def test_operator_check_character_follows_gb11714():
    assert qr.op_check_char("MA4UJLL5") == "7"
    assert qr.check_op("MA4UJLL57") == "MA4UJLL57"


# --- validation errors

@pytest.mark.parametrize("arg, bad, words", [
    ("prefix", "ftp://h.example/c", "http:// or https://"),
    ("prefix", "qr.example.com/c", "http:// or https://"),
    ("prefix", "https:///c", "no host"),
    ("prefix", "https://h.example/c#top", "fragment"),
    ("prefix", "https://h.example/c?did=1", "did="),
    ("prefix", "https://h.example/c d", "without spaces"),
    ("prefix", "", "URL"),
    ("pile", "440304000300000", "15 digits"),
    ("pile", "440304000300000033", "18 digits"),
    ("pile", "4403-0400-0300-0003", "digits only"),
    ("pile", "44O3040003000003", "digits only"),
    ("pile", "", "digits only"),
    ("op", "MA4UJLL5", "9 characters"),
    ("op", "MA4UJLL577", "9 characters"),
    ("op", "ma4ujll57", "use uppercase"),
    ("op", "MA4UJ-L57", "9 characters"),
    ("op", "MA4UJLL58", "check character should be '7'"),
])
def test_a_bad_prefix_pile_number_or_operator_id_is_refused(arg, bad, words):
    # One argument of qr.payload bad, the others good: refused, in words
    # that name the fault.
    args = {"prefix": PREFIX, "pile": "4403040003000003", "op": OP}
    args[arg] = bad
    with pytest.raises(qr.QRError, match=re.escape(words)):
        qr.payload(**args)


def test_operator_check_can_be_skipped_for_ids_outside_gb11714():
    assert qr.payload(PREFIX, "4403040003000003", "MA4UJLL58", verify_op=False).endswith(
        "op=MA4UJLL58")


def test_cli_bad_input_is_one_line_on_stderr_with_nonzero_exit(capsys):
    assert qr_cli.main(["show", "--prefix", PREFIX, "--op", OP, "12345"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("pile-qr: error: pile number '12345'")


def test_cli_without_prefix_says_how_to_give_one(capsys, monkeypatch):
    monkeypatch.delenv("PILE_QR_PREFIX", raising=False)
    assert qr_cli.main(["show", "--op", OP, "4403040003000003"]) == 2
    assert "--prefix" in capsys.readouterr().err


# --- wire code mapping

def test_wire_code_is_the_number_itself_at_14_digits():
    assert qr.wire_code("32010600213533") == ("32010600213533", "same")


def test_wire_code_column_wins_over_derivation():
    assert qr.wire_code("4403040003000003", "32010600213533") == ("32010600213533", "given")


def test_wire_code_without_column_is_last_14_digits():
    assert qr.wire_code("44200100250000200002") == ("00250000200002", "last14")
    assert qr.wire_code("4403040003000003") == ("03040003000003", "last14")


def test_bad_wire_code_is_refused():
    with pytest.raises(qr.QRError, match="must be 14 digits"):
        qr.wire_code("4403040003000003", "123")


# --- batch

@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_batch_from_csv_writes_one_readable_code_per_pile(tmp, fmt, capsys):
    src = write_csv(tmp, ["pile,wire_code", "4403040003000003,32010600213533",
                          "44200100250000200002,", "32010600213534,"])
    out = os.path.join(tmp, "out")
    assert qr_cli.main(["batch", src, "--out", out, "--format", fmt, "--scale", "3",
                    "--prefix", PREFIX, "--op", OP]) == 0
    for number in ("4403040003000003", "44200100250000200002", "32010600213534"):
        path = os.path.join(out, number + "." + fmt)
        expected = matrix_of("%s?did=%s&op=%s" % (PREFIX, number, OP))
        got = png_matrix(path, 3) if fmt == "png" else svg_matrix(path)
        assert got == expected, number
    with open(os.path.join(out, "manifest.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["pile"], r["wire_code"], r["wire_code_source"]) for r in rows] == [
        ("4403040003000003", "32010600213533", "given"),
        ("44200100250000200002", "00250000200002", "last14"),
        ("32010600213534", "32010600213534", "same"),
    ]
    assert rows[0]["payload"] == PREFIX + "?did=4403040003000003&op=" + OP
    err = capsys.readouterr().err
    assert "44200100250000200002: wire code taken as its last 14 digits" in err
    assert "4403040003000003: wire code" not in err


def test_batch_rows_may_carry_their_own_operator_and_prefix(tmp):
    src = write_csv(tmp, ["Pile,Op,Prefix", "4403040003000003,MA4UJLL57,http://b.example/q?x=1"])
    out = os.path.join(tmp, "out")
    assert qr_cli.main(["batch", src, "--out", out, "--format", "svg"]) == 0
    assert svg_matrix(os.path.join(out, "4403040003000003.svg")) == matrix_of(
        "http://b.example/q?x=1&did=4403040003000003&op=MA4UJLL57")


def test_batch_with_a_bad_row_reports_each_by_line_and_writes_nothing(tmp, capsys):
    src = write_csv(tmp, ["pile", "4403040003000003", "12345", "4403040003000003", "abc"])
    out = os.path.join(tmp, "out")
    assert qr_cli.main(["batch", src, "--out", out, "--prefix", PREFIX, "--op", OP]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("pile-qr: error: %s:3: pile number '12345'" % src)
    assert err[1] == "pile-qr: error: %s:4: pile 4403040003000003 already on line 2" % src
    assert err[2].startswith("pile-qr: error: %s:5: pile number 'abc'" % src)
    assert err[3] == "pile-qr: 3 bad row(s), nothing written"
    assert not os.path.exists(out)


def test_batch_refuses_two_piles_mapping_to_one_wire_code(tmp, capsys):
    # Different regions, same last 14 digits: the derivation would collide.
    src = write_csv(tmp, ["pile", "4403040003000003", "4503040003000003"])
    assert qr_cli.main(["batch", src, "--out", os.path.join(tmp, "o"),
                    "--prefix", PREFIX, "--op", OP]) == 2
    assert "wire code 03040003000003 (last14) already used by pile 4403040003000003" in \
        capsys.readouterr().err


def test_batch_csv_without_pile_column_is_refused(tmp, capsys):
    src = write_csv(tmp, ["number", "4403040003000003"])
    assert qr_cli.main(["batch", src, "--out", tmp, "--prefix", PREFIX, "--op", OP]) == 2
    assert "no 'pile' column" in capsys.readouterr().err


def test_batch_missing_csv_is_one_line_error(tmp, capsys):
    assert qr_cli.main(["batch", os.path.join(tmp, "nope.csv"), "--out", tmp,
                    "--prefix", PREFIX, "--op", OP]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.csv" in err


# --- terminal output

def test_show_prints_payload_then_the_code_in_the_terminal(capsys):
    assert qr_cli.main(["show", "--prefix", PREFIX, "--op", OP, "4403040003000003"]) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first == PREFIX + "?did=4403040003000003&op=" + OP
    assert terminal_matrix(rest) == matrix_of(first)


def test_show_compact_prints_half_height_code(capsys):
    assert qr_cli.main(["show", "--compact", "--prefix", PREFIX, "--op", OP,
                    "44200100250000200002", "--wire-code", "32010600213533"]) == 0
    captured = capsys.readouterr()
    first, rest = captured.out.split("\n", 1)
    expected = matrix_of(first)
    assert compact_matrix(rest)[:len(expected)] == expected
    assert captured.err == ""  # an explicit wire code: nothing to warn about


def test_show_no_code_prints_only_the_payload(capsys):
    assert qr_cli.main(["show", "--no-code", "--prefix", PREFIX, "--op", OP, "32010600213533"]) == 0
    assert capsys.readouterr().out == PREFIX + "?did=32010600213533&op=" + OP + "\n"


def test_readers_detect_a_code_for_another_payload(tmp):
    # The readers are what make the batch tests meaningful: prove they can fail.
    path = os.path.join(tmp, "x.svg")
    qr.make(PREFIX + "?did=4403040003000003&op=" + OP).save(path, kind="svg")
    assert svg_matrix(path) != matrix_of(PREFIX + "?did=4403040003000004&op=" + OP)
    buf = io.StringIO()
    qr.make("A").terminal(out=buf)
    assert terminal_matrix(buf.getvalue()) == matrix_of("A")


def test_each_derived_wire_code_is_warned_about_once(tmp):
    # Run as the installed command so the count covers everything that
    # reaches the technician's terminal, not just what qr_cli.main() prints.
    src = write_csv(tmp, ["pile", "44200100250000200002", "32010600213534",
                          "4403040003000003"])
    exe = find_program("pile-qr")
    cmd = [exe] if exe else [sys.executable, "-m", "tools.qr"]
    r = subprocess.run(cmd + ["batch", src, "--out", os.path.join(tmp, "out"),
                              "--prefix", PREFIX, "--op", OP],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, r.stderr
    assert sum("pile 44200100250000200002: wire code" in w for w in warnings) == 1
    assert sum("pile 4403040003000003: wire code" in w for w in warnings) == 1
    r = subprocess.run(cmd + ["show", "44200100250000200002", "--no-code", "--prefix", PREFIX,
                              "--op", OP], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.count("warning") == 1, r.stderr


# --- printable sheets (issue 19 item 7)

def sheet_stickers(path):
    """[(pile, payload, matrix, label texts, rect)] of one sheet SVG."""
    import xml.etree.ElementTree as ET
    ns = "{http://www.w3.org/2000/svg}"
    root = ET.parse(path).getroot()
    assert root.get("width") == "210mm" and root.get("height") == "297mm"
    out = []
    for g in root.iter(ns + "g"):
        cells = [tuple(map(int, m)) for m in
                 re.findall(r"M(\d+) (\d+)h1v1h-1z", g.find(ns + "path").get("d"))]
        n = max(max(c, r) for c, r in cells) - 3          # 4-module quiet zone each side
        m = [[False] * n for _ in range(n)]
        for c, r in cells:
            m[r - 4][c - 4] = True
        rect = g.find(ns + "rect")
        unit = float(re.search(r"scale\(([\d.]+)\)", g.find(ns + "path").get("transform"))
                     .group(1))
        out.append((g.get("data-pile"), g.get("data-payload"), m,
                    [t.text for t in g.iter(ns + "text")], float(rect.get("width")), unit, n))
    return out


def test_sheet_has_each_pile_as_a_labelled_sticker_of_the_given_size(tmp, capsys):
    rows = ["pile,wire_code", "4403040003000003,32010600213533"] + \
        ["320106002135%02d," % i for i in range(13)]
    src = write_csv(tmp, rows)
    out = os.path.join(tmp, "sheet")
    assert qr_cli.main(["sheet", src, "--out", out, "--size", "40", "--prefix", PREFIX,
                    "--op", OP]) == 0
    cols, per_col = qr.sticker_layout(40)
    assert "14 sticker(s) of 40 mm" in capsys.readouterr().out
    pages = sorted(os.listdir(out))
    assert len(pages) == -(-14 // (cols * per_col)) >= 1
    got = []
    for p in pages:
        got += sheet_stickers(os.path.join(out, p))
    assert [s[0] for s in got] == ["4403040003000003"] + ["320106002135%02d" % i for i in range(13)]
    for pile, data, m, labels, width, unit, n in got:
        assert data == "%s?did=%s&op=%s" % (PREFIX, pile, OP)
        assert m == matrix_of(data), pile                   # the code is that payload
        assert labels[0] == pile                            # the label names the pile
        assert width == 40 and abs(unit * (n + 8) - 40) < 1e-3 and unit >= 0.5
    assert got[0][3] == ["4403040003000003", "YKC 32010600213533"]


def test_sheet_too_small_for_a_phone_is_refused(tmp, capsys):
    src = write_csv(tmp, ["pile", "4403040003000003"])
    assert qr_cli.main(["sheet", src, "--out", os.path.join(tmp, "s"), "--size", "10",
                    "--prefix", PREFIX, "--op", OP]) == 2
    assert "--size must be" in capsys.readouterr().err
