"""User text (class names, export.author, export.license) written into generated Swift, Kotlin and Markdown.

Nothing the user typed is interpolated raw: a quote, a backslash, `$` or `<script>` in a class name must
stay text in the app developer's file, never become code, a heading or HTML. Swift and Kotlin get string
literals (also in comments, where a literal cannot end the comment since it holds no line break); Markdown
gets every character that could start markup backslash-escaped, and HTML's `<>&` as entities.
"""

from __future__ import annotations

import re

_SWIFT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
_KOTLIN_ESCAPES = {"\\": "\\\\", '"': '\\"', "$": "\\$", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _printable(char: str) -> bool:
    return char.isprintable() or char == " "


def swift_string(text: str) -> str:
    """`text` as a Swift string literal, quotes included; other non-printables as `\\u{hex}`."""
    body = "".join(_SWIFT_ESCAPES.get(c, c if _printable(c) else f"\\u{{{ord(c):x}}}") for c in text)
    return f'"{body}"'


def kotlin_string(text: str) -> str:
    """`text` as a Kotlin string literal, quotes included (`$` escaped: no string templates)."""
    body = "".join(_KOTLIN_ESCAPES.get(c, c if _printable(c) else "".join(_kotlin_unicode(c))) for c in text)
    return f'"{body}"'


def _kotlin_unicode(char: str) -> list[str]:
    """Kotlin's `\\uXXXX` takes one UTF-16 unit: a character above U+FFFF is its surrogate pair."""
    units = char.encode("utf-16-be")
    return [f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)]


def markdown_text(text: str) -> str:
    """`text` shown literally in Markdown (and any HTML it is rendered to), on one line."""
    escaped = "".join(_HTML_ENTITIES.get(c, c) for c in _MARKDOWN_SPECIAL.sub(r"\\\1", text))
    return " ".join(escaped.splitlines())
