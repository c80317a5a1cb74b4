"""Text from files pyquant did not write, made safe to print.

Tensor names and metadata come from the file: they may hold escape
sequences, newlines or bidi overrides that rewrite a terminal, and they may
be megabytes long. Everything printed from a file goes through :func:`shown`.
"""

from __future__ import annotations


def shown(text: str, limit: int | None = None, *, backslashes: bool = True) -> str:
    """``text`` with every non-printable character (controls, escape
    sequences, newlines, bidi and other format characters, lone surrogates)
    written as a Python escape (``\\x1b``, ``\\n``, ``\\u202e``) and
    backslashes doubled (unless ``backslashes=False``, for messages that
    already hold escapes), so what is printed is unambiguous and inert.
    ``limit`` shortens it to about that many characters (for error lines)."""
    out = "".join(c if c.isprintable() and (c != "\\" or not backslashes) else repr(c)[1:-1] for c in text)
    if limit is not None and len(out) > limit:
        out = out[:limit] + f"...[{len(out) - limit} more]"
    return out


def quoted(text: str, limit: int = 200) -> str:
    """:func:`shown` in single quotes, for a name inside an error message."""
    return "'" + shown(text, limit) + "'"
