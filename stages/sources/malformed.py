"""Skip-and-count bookkeeping for malformed records and repaired fields, shared by every raw-format reader."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mmpipe.log import get_logger

log = get_logger("ingest")

MAX_LINES_LISTED = 100  # malformed line numbers kept per file in the stats; all are counted
MAX_LINES_LOGGED = 5  # the first few also go to the log


@dataclass
class Malformed:
    """Skipped lines of one file (how many, the first few with the reason), and what was repaired in the
    lines that were kept (`repairs[kind]`: markup stripped, nan read as missing, legacy bytes decoded)."""

    file: str
    count: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    repairs: Counter = field(default_factory=Counter)

    def add(self, line_no: int, reason: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_LINES_LISTED:
            self.lines.append({"line": line_no, "reason": reason})
        if self.count <= MAX_LINES_LOGGED:
            log.warning("%s: line %d skipped: %s", self.file, line_no, reason)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.lines}

    def first_reasons(self, n: int = 3) -> str:
        """The first skipped lines as `line 3: reason; line 7: reason`, for error messages."""
        return "; ".join(f"line {e['line']}: {e['reason']}" for e in self.lines[:n]) or "none"
