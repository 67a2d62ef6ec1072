"""The one rule class names must pass before training: every name must survive every artifact.

A name travels into labels.txt (one line per class, read with Kotlin's `readLines()` and Swift's line
splitting), every runtime's metadata, Swift and Kotlin string literals and the model card. Control characters
(newline, CR, tab, ...) and line/paragraph separators split or shift those lines; leading or trailing spaces
are stripped by readers and editors; a leading dash reads as an option to shell tools; two names equal after
Unicode NFC normalization or case folding are one folder on macOS/Windows file systems. Everything else
(quotes, backslashes, `$(...)`, emoji, long names) is kept exactly and escaped where it is written.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

RULE = (
    "class names (folder names) must have no control characters (newline, CR, tab), no leading or trailing "
    "whitespace, no leading '-', and be distinct after Unicode normalization and ignoring case"
)


class ClassNameError(ValueError):
    """A class folder's name cannot survive labels.txt, the metadata or the generated code."""


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name (None: it can)."""
    if not name.strip():
        return "empty or only whitespace"
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        return f"contains the control character {bad[0]!r}"
    if name != name.strip():
        return "has leading or trailing whitespace"
    if name.startswith("-"):
        return "starts with '-'"
    return None


def fold(name: str) -> str:
    """The key under which two names are the same folder on a case-insensitive, normalizing file system."""
    return unicodedata.normalize("NFC", name).casefold()


def check_class_names(names: Iterable[str], where: Path | str) -> None:
    """Refuse, in one line naming `where` and the rule, any name that cannot survive every artifact."""
    names = list(names)
    problems = [f"{n!r} ({why})" for n in names if (why := name_problem(n))]
    seen: dict[str, str] = {}
    for name in names:
        twin = seen.setdefault(fold(name), name)
        if twin != name:
            problems.append(f"{twin!r} and {name!r} (the same name ignoring case or Unicode form)")
    if problems:
        raise ClassNameError(
            f"class folder(s) in {where} cannot be used: {'; '.join(problems)}. The rule: {RULE}. "
            "Rename the folder(s) and run again."
        )
