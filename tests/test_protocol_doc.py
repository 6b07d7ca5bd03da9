"""docs/protocol.md cannot drift from the frame table."""
import re

from protocol.frames import each
from tools import gen_protocol_doc as gen


def _doc():
    with open(gen.DOC, encoding="utf-8") as fh:
        return fh.read()


def test_committed_protocol_doc_equals_the_generated_one():
    doc = _doc()
    assert gen.render(doc) == doc, "run: python3 -m tools.gen_protocol_doc"
    assert gen.main(["--check"]) == 0


def test_every_frame_has_a_section_with_every_field():
    doc = _doc()
    for code, name, direction, fields in each():
        head = "#### 0x%02X %s\n" % (code, name)
        assert head in doc, name
        section = doc.split(head, 1)[1].split("\n#### ", 1)[0]
        for f in fields:
            assert "| `%s` |" % f[0] in section, (name, f[0])


def test_hand_written_sections_are_there():
    doc = _doc()
    for title in ("## Envelope", "## CRC", "## Sequence numbers and the echo rule",
                  "## CP56Time2a", "## BCD, ASCII and binary fields", "## The bill: two forms",
                  "## The extension range, and why", "## Stop reasons",
                  "## Where the document disagrees with itself"):
        assert "\n" + title + "\n" in doc, title


def test_notes_name_only_frames_and_fields_that_exist():
    gen._check_notes()  # raises on a note for a renamed or removed field


def test_a_stale_doc_is_reported(tmp_path):
    stale = tmp_path / "protocol.md"
    stale.write_text(re.sub(r"\| 0x3B \| \[`bill`\].*\n", "", _doc()), encoding="utf-8")
    assert gen.main(["--check", "--doc", str(stale)]) == 1
    assert gen.main(["--doc", str(stale)]) == 0
    assert gen.main(["--check", "--doc", str(stale)]) == 0


def test_doc_and_readme_state_the_extension_range_of_the_frame_table():
    from protocol.frames import EXT_FIRST, EXT_LAST
    rng = "0x%02X..0x%02X" % (EXT_FIRST, EXT_LAST)
    with open(gen.DOC.replace("docs/protocol.md", "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    for text in (_doc().split("\n## ", 1)[0], readme):
        assert rng in text
        assert "0xE1..0xEF" not in text  # the range before it grew down to 0xD0


def test_firmware_auth_envelope_codes_are_the_frame_table_codes():
    from protocol import sign
    from protocol import frames as T
    codes = {name: code for code, name, direction, fields in T.each()}
    assert sign.CODE_SIGNED == codes["signed"]
    assert sign.CODE_REJECT == codes["signed_reject"]
