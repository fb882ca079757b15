"""One line of a raw file to a record: strict JSON, or the Python-literal dicts of the Amazon 2014 files.

Used by the review readers' per-line fallback and by the meta reader; see `formats.py` for the rules.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from typing import Any

try:  # a dependency of dvc-data, so normally present; json gives the same values, slower
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

_NOTHING = object()


def _json_loads(text: str) -> Any:
    """Strict JSON (orjson when installed, else json)."""
    if orjson is not None:
        return orjson.loads(text)
    return json.loads(text)


# A Python string literal without prefix, escape-aware, on one line: group 1 single-, group 2 double-quoted.
_PY_STRING = re.compile(r"""'([^'\\\n]*(?:\\.[^'\\\n]*)*)'|"([^"\\\n]*(?:\\.[^"\\\n]*)*)\"""")
_PY_ESCAPE = re.compile(r'\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)|"')
_BARE_WORD = re.compile(r"\b(?:True|False|None|nan)\b")
# Python's repr writes a missing float as `nan`, which neither JSON nor ast.literal_eval reads: null.
_BARE_JSON = {"True": "true", "False": "false", "None": "null", "nan": "null"}


class _Untranslatable(Exception):
    pass


def _escape_to_json(match: re.Match) -> str:
    code = match.group(1)
    if code is None:  # a bare '"' inside a single-quoted string
        return '\\"'
    head = code[0]
    if head in '\\"nrtbf':
        return match.group(0)  # the same character in JSON
    if head == "'":
        return "'"
    if head == "x" and len(code) == 3:
        return "\\u00" + code[1:]
    if head == "u" and len(code) == 5 and not 0xD800 <= int(code[1:], 16) <= 0xDFFF:
        return match.group(0)  # surrogates differ (JSON pairs them, Python does not): literal_eval decides
    raise _Untranslatable  # \a \v \0 \N{} \U, octal, unknown escapes: literal_eval decides


def literal_to_json(line: str) -> str | None:
    """Translate a one-line Python literal into JSON text with the same value, or None when unsure.

    Exact whenever the result parses as JSON: strings keep their content (the escapes both languages
    share are kept, `\\'` and `\\xHH` are rewritten, any other escape gives None); True/False/None
    outside strings become true/false/null; everything else must already be JSON (numbers, brackets),
    so a tuple, a set, a prefix (u'', b''), a comment or a stray quote makes invalid JSON, and the
    caller falls back to `ast.literal_eval`.
    """
    line = line.strip()
    if "'''" in line or '"""' in line or "\x00" in line:
        return None
    if '"' not in line and "\\" not in line:
        if line.count("'") % 2:
            return None  # an unbalanced quote
        if not ("True" in line or "False" in line or "None" in line or "nan" in line) or not _BARE_WORD.search(line):
            return line.replace("'", '"')
        parts = line.split("'")
        outside, bodies = parts[0::2], parts[1::2]
    else:
        parts = _PY_STRING.split(line)
        outside = parts[0::3]
        bodies = []
        try:
            for single, double in zip(parts[1::3], parts[2::3], strict=True):
                body = single if single is not None else double
                if "\\" in body or (single is not None and '"' in body):
                    body = _PY_ESCAPE.sub(_escape_to_json, body)
                bodies.append(body)
        except _Untranslatable:
            return None
    joined = "\x00".join(outside)
    if "'" in joined or '"' in joined:
        return None  # a quote no string literal took: not a literal we can translate
    if "True" in joined or "False" in joined or "None" in joined or "nan" in joined:
        outside = _BARE_WORD.sub(lambda m: _BARE_JSON[m.group(0)], joined).split("\x00")
    pieces: list[str] = [""] * (len(outside) + len(bodies))
    pieces[0::2] = outside
    pieces[1::2] = bodies
    return '"'.join(pieces)


_NAN_WORD = re.compile(r"\bnan\b")


def parse_record(line: str, repairs: Counter | None = None) -> dict[str, Any]:
    """One JSON object, or one Python-literal dict as the Amazon 2014 meta files contain.

    Tried in turn: strict JSON; the Python literal translated to JSON (`literal_to_json`, which reads
    Python's `nan` as null, counted as `nan_as_missing` in `repairs`); lenient JSON (`json.loads`: NaN,
    huge integers, lone surrogates); `ast.literal_eval`. JSON wins where a line is both (as before).
    """
    try:
        if line.startswith("{'"):  # a Python literal for sure: not JSON
            raise ValueError
        obj = _json_loads(line)
    except ValueError:
        obj = _NOTHING
        text = literal_to_json(line)
        if text is not None:
            try:
                obj = _json_loads(text)
            except ValueError:
                obj = _NOTHING
            if obj is not _NOTHING and repairs is not None and "nan" in line:
                nans = len(_NAN_WORD.findall(line)) - len(_NAN_WORD.findall(text))  # those outside strings
                if nans:
                    repairs["nan_as_missing"] += nans
        if obj is _NOTHING and orjson is not None:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = _NOTHING
        if obj is _NOTHING:
            try:
                obj = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
                raise ValueError(f"neither JSON nor a Python literal ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    return obj
