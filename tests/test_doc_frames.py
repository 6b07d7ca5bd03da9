# Every example frame in the docs decodes (issue 19 item 7): the generated
# examples in docs/protocol.md, read back by the stream reader (not by the
# generator) field for field, and every other whole frame quoted in the
# docs and the README: a YKC frame with a good CRC, or a DL/T 645 meter
# frame. A quoted frame abbreviated with "..." is not a frame and is skipped.
import glob
import os
import re

from protocol import codec
from protocol import reconcile
from sim import dlt645_frames as DLT
from tools import gen_protocol_doc as gen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _one_frame(raw, tolerant=False):
    items = codec.FrameReader(tolerant=tolerant).push(raw)
    assert len(items) == 1 and isinstance(items[0], codec.Frame), (raw.hex(), items)
    return items[0]


def examples(doc):
    """[(title, bytes, "k=v ..." line)] from the examples block."""
    block = doc.split("<!-- BEGIN generated:examples -->", 1)[1].split(
        "<!-- END generated:examples -->", 1)[0]
    out = []
    for m in re.finditer(r"\*\*(0x[0-9A-F]{2} \w+)\*\*[^\n]*\n\n((?:    [0-9A-F ]+\n)+)\n    (.+)\n",
                         block):
        raw = bytes.fromhex(m.group(2).replace("\n", " "))
        out.append((m.group(1), raw, m.group(3)))
    return out


def test_every_example_in_protocol_md_decodes_to_the_fields_beside_it():
    ex = examples(_read(gen.DOC))
    assert len(ex) == len(gen.EXAMPLES) >= 10
    for title, raw, line in ex:
        f = _one_frame(raw)                                    # strict: the CRC is right
        assert "0x%02X %s" % (f.code, f.name) == title
        shown = dict(kv.split("=", 1) for kv in line.split(" "))
        decoded = dict(gen.field_text(k, v).split("=", 1) for k, v in f.fields.items())
        assert shown and set(shown) <= set(decoded), title
        for k, v in shown.items():
            assert decoded[k] == v, (title, k)
        if f.name == "bill":
            assert reconcile.reconcile(f.fields) == [], "the example bill adds up"


def _quoted_frames():
    """(where, bytes) of every whole frame quoted in docs/*.md and README.md."""
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [
            os.path.join(ROOT, "README.md")]:
        rel = os.path.relpath(path, ROOT)
        text = _read(path)
        if rel == os.path.join("docs", "protocol.md"):
            text = re.sub(r"<!-- BEGIN generated:examples -->.*<!-- END generated:examples -->",
                          "", text, flags=re.S)
        for n, line in enumerate(text.splitlines(), 1):
            for m in re.finditer(r"(?<![0-9A-Fa-f])68(?: [0-9A-F]{2}){7,}(?: \.\.\.)?", line):
                if not m.group(0).endswith("..."):
                    yield "%s:%d" % (rel, n), bytes.fromhex(m.group(0))
            for tok in re.findall(r"[^\s`\"']*68[0-9A-Fa-f]{14,}[^\s`\"']*", line):
                if "..." in tok or not re.fullmatch(r"68[0-9A-Fa-f]+", tok):
                    continue
                yield "%s:%d" % (rel, n), bytes.fromhex(tok)


def test_every_frame_quoted_in_the_docs_decodes():
    seen = 0
    for where, raw in _quoted_frames():
        seen += 1
        if DLT.looks_like(raw):
            DLT.decode(raw)                     # raises on a bad meter frame
            continue
        _one_frame(raw, tolerant=True)
    assert seen >= 3          # the README's two and the console spy sample at least


def test_a_wrong_byte_in_an_example_is_caught():
    title, raw, line = examples(_read(gen.DOC))[2]
    bad = bytearray(raw)
    bad[-3] ^= 0x01
    items = codec.FrameReader().push(bytes(bad))
    assert not any(isinstance(i, codec.Frame) for i in items)
