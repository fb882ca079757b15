"""Cleaning of item text fields: HTML entities, whitespace, category paths, image URLs."""

from __future__ import annotations

import html
from typing import Any


def clean_text(value: Any) -> str | None:
    """A clean text field: HTML entities unescaped, whitespace collapsed, empty -> None; lists joined."""
    if value is None:
        return None
    if type(value) is not str:
        value = " ".join(str(v) for v in value if v) if isinstance(value, list | tuple) else str(value)
    if "&" in value:
        value = html.unescape(value)
    return " ".join(value.split()) or None


def clean_categories(value: Any) -> list[str] | None:
    """Flatten category paths ([['Baby', 'Strollers'], ...]) or a flat list into unique names, in order."""
    if not value:
        return None
    out: list[str] = []
    for entry in value if isinstance(value, list | tuple) else [value]:
        for name in entry if isinstance(entry, list | tuple) else [entry]:
            name = clean_text(name)
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
