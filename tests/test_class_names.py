"""Class names that cannot survive labels.txt and the generated code are refused before training; the rest
are escaped wherever they are written (Swift, Kotlin, Markdown)."""

from __future__ import annotations

import pytest
from conftest import make_class_folder

from trainer.data.class_names import ClassNameError
from trainer.data.sources.folder import index_folder
from trainer.export.handoff.escape import kotlin_string, markdown_text, swift_string
from trainer.export.handoff.updatable_swift import swift_updatable

ACCEPTED = [
    'say "hi"',
    "back\\slash",
    "$(rm -rf x)",
    "${x}",
    "🐱 cat",
    "x" * 200,
    "_background",
    "# <i>x & y",
]
REFUSED = {
    "new\nline": "'\\n'",
    "carriage\rreturn": "'\\r'",
    "tab\there": "'\\t'",
    " ": "only whitespace",
    "trailing ": "leading or trailing whitespace",
    "-rf": "starts with '-'",
}


def test_newline_cr_tab_space_and_dash_names_are_refused_with_folder_and_rule(tmp_path):
    """Defect: a newline in a class name gave labels.txt one line too many, shifting every later label."""
    for bad, why in REFUSED.items():
        root = tmp_path / str(len(why)) / "photos"
        make_class_folder(root, {"ok": 2, bad: 2})
        with pytest.raises(ClassNameError) as error:
            index_folder(root)
        message = str(error.value)
        assert str(root) in message and why in message and "no control characters" in message
        assert "\n" not in message


def test_case_and_unicode_twins_are_refused(tmp_path):
    """Two folders that are one folder on macOS/Windows (case, NFC vs NFD) would merge there."""
    make_class_folder(tmp_path / "case", {"Cat": 2, "cat": 2})
    with pytest.raises(ClassNameError, match="'Cat' and 'cat'"):
        index_folder(tmp_path / "case")
    make_class_folder(tmp_path / "nfc", {"caf\u00e9": 2, "cafe\u0301": 2})
    with pytest.raises(ClassNameError, match="ignoring case or Unicode form"):
        index_folder(tmp_path / "nfc")


def test_underscore_folders_are_classes(tmp_path):
    """Defect: `_background` was dropped without a word, giving a 2-class model from 3 folders."""
    make_class_folder(tmp_path, {"_background": 2, "cat": 2, "dog": 2})
    assert index_folder(tmp_path).classes == ["_background", "cat", "dog"]


def test_hostile_names_are_accepted_and_kept_exactly(tmp_path):
    make_class_folder(tmp_path, dict.fromkeys(ACCEPTED, 2))
    assert index_folder(tmp_path).classes == sorted(ACCEPTED)


def _swift_literal_value(literal: str) -> str:
    """Parse a Swift string literal back (the escapes swift_string writes)."""
    assert literal[0] == literal[-1] == '"'
    out, body, i = [], literal[1:-1], 0
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            if nxt == "u":
                end = body.index("}", i)
                out.append(chr(int(body[i + 3 : end], 16)))
                i = end + 1
                continue
            out.append({"n": "\n", "r": "\r", "t": "\t", "0": "\0"}.get(nxt, nxt))
            i += 2
            continue
        assert body[i] != '"', f"unescaped quote in {literal}"
        out.append(body[i])
        i += 1
    return "".join(out)


@pytest.mark.parametrize("name", [*ACCEPTED, "new\nline", "a\u2028b"])
def test_swift_and_kotlin_literals_parse_back(name):
    assert _swift_literal_value(swift_string(name)) == name
    kotlin = kotlin_string(name)
    assert "\n" not in kotlin and "${" not in kotlin.replace("\\$", "")
    decoded = kotlin[1:-1].replace("\\$", "$").encode("latin-1", "backslashreplace").decode("unicode_escape")
    assert decoded.encode("utf-16", "surrogatepass").decode("utf-16") == name


def test_updatable_swift_usage_comment_cannot_become_code():
    """Defect: a newline in the first or last class name broke out of the `//` comment into Swift code."""
    source = swift_updatable("knn", 64, ("a\nlet pwned = 1", 'b" + evil'))
    assert "\nlet pwned" not in source
    usage = next(line for line in source.splitlines() if "classifier.update" in line)
    assert usage.startswith("//") and '"a\\nlet pwned = 1"' in usage and '"b\\" + evil"' in usage


def test_markdown_text_shows_markup_as_text():
    assert markdown_text("<script>alert(1)</script>") == "&lt;script&gt;alert\\(1\\)&lt;/script&gt;"
    assert markdown_text("# heading\n- item") == "\\# heading \\- item"
    assert markdown_text("plain name") == "plain name"
