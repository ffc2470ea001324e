import pytest
from vragent.sandbox.report_sections import write_section


def test_sections_are_replaced_in_place_and_prose_is_kept(tmp_path):
    doc = tmp_path / "results.md"
    write_section(doc, "a", "# A\n1")
    doc.write_text(doc.read_text() + "\nHand-written prose.\n")
    write_section(doc, "b", "# B\n2")
    write_section(doc, "a", "# A\nupdated")
    text = doc.read_text()
    assert text.count("BEGIN a ") == 1 and "updated" in text and "\n1\n" not in text
    assert text.index("updated") < text.index("Hand-written prose.") < text.index("# B")
    with pytest.raises(ValueError):
        write_section(doc, "bad name", "x")
    doc.write_text("<!-- BEGIN c (generated) -->\nno end")
    with pytest.raises(ValueError, match="no end marker"):
        write_section(doc, "c", "x")
