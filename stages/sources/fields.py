"""Cleaning of item text fields: HTML entities and markup, missing values, whitespace, category paths, URLs.

Every repair that changes what the encoders see is counted in the `repairs` Counter a reader passes
(ingest writes the counts to `ingest_stats.json`): `markup_stripped` (HTML tags removed from a field,
e.g. the `<span class="a-size-medium ...` debris that stands for many Amazon 2018 titles),
`nan_as_missing` (a float NaN where text was expected).
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from typing import Any

# An HTML tag (or comment), or an unclosed one running to the end of the text.
_TAG = re.compile(r"<(?:[A-Za-z][A-Za-z0-9]*|/[A-Za-z][A-Za-z0-9]*|!--)(?:[^<>]*>|[^<>]*$)")


def _missing(value: Any, repairs: Counter | None) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        if repairs is not None:
            repairs["nan_as_missing"] += 1
        return True
    return False


def clean_text(value: Any, repairs: Counter | None = None) -> str | None:
    """A clean text field: HTML entities unescaped, tags stripped, whitespace collapsed, empty -> None;
    lists joined; NaN is missing."""
    if _missing(value, repairs):
        return None
    if type(value) is not str:
        if isinstance(value, list | tuple):
            value = " ".join(str(v) for v in value if v and not _missing(v, repairs))
        else:
            value = str(value)
    if "&" in value:
        value = html.unescape(value)
    if "<" in value and _TAG.search(value):
        value = _TAG.sub(" ", value)
        if repairs is not None:
            repairs["markup_stripped"] += 1
    return " ".join(value.split()) or None


def clean_categories(value: Any, repairs: Counter | None = None) -> list[str] | None:
    """Flatten category paths ([['Baby', 'Strollers'], ...]) or a flat list into unique names, in order."""
    if not value or _missing(value, repairs):
        return None
    out: list[str] = []
    for entry in value if isinstance(value, list | tuple) else [value]:
        for name in entry if isinstance(entry, list | tuple) else [entry]:
            name = clean_text(name, repairs)
            if name and name not in out:
                out.append(name)
    return out or None


def _first_url(value: Any) -> str | None:
    """The first non-empty URL of a list (or the value itself when it is one string)."""
    for entry in value if isinstance(value, list | tuple) else [value]:
        url = clean_text(entry) if isinstance(entry, str) else None
        if url:
            return url
    return None
