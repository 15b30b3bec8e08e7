"""Text from task code made safe to print on a terminal or in a log."""

from __future__ import annotations

import unicodedata

#: Unicode categories of characters that act on a terminal or reorder text
#: instead of showing: controls (ESC, BEL, CR), formats (bidirectional
#: overrides) and lone surrogates.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def printable(text: str, *, multiline: bool = False) -> str:
    """Return text with control and format characters written as escapes.

    Error messages, tracebacks and values come from task code, so they may
    contain escape sequences or bidirectional overrides that would act on the
    terminal. With ``multiline``, line feeds and tabs stay as they are, for a
    traceback. Carriage returns are escaped either way, because they let a
    line overwrite what came before it.
    """
    allowed = "\n\t" if multiline else ""
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in HIDDEN_CATEGORIES and char not in allowed
        else char
        for char in text
    )


def printable_json(text: str) -> str:
    """Return JSON text with control and format characters as ``\\uXXXX`` escapes.

    The result decodes to the same value, because JSON reads those escapes
    inside strings and the only such character outside strings is the line
    feed of indentation, which is kept. Characters above U+FFFF are written
    as a surrogate pair, as JSON requires.
    """
    parts: list[str] = []
    for char in text:
        if char == "\n" or unicodedata.category(char) not in HIDDEN_CATEGORIES:
            parts.append(char)
            continue
        code = ord(char)
        if code > 0xFFFF:
            code -= 0x10000
            parts.append(
                f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
            )
        else:
            parts.append(f"\\u{code:04x}")
    return "".join(parts)
