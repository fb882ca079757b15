"""Skip-and-count bookkeeping for malformed records, shared by every raw-format reader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmpipe.log import get_logger

log = get_logger("ingest")

MAX_LINES_LISTED = 100  # malformed line numbers kept per file in the stats; all are counted
MAX_LINES_LOGGED = 5  # the first few also go to the log


@dataclass
class Malformed:
    """Skipped lines of one file: how many, and the first few with the reason."""

    file: str
    count: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line_no: int, reason: str) -> None:
        self.count += 1
        if len(self.lines) < MAX_LINES_LISTED:
            self.lines.append({"line": line_no, "reason": reason})
        if self.count <= MAX_LINES_LOGGED:
            log.warning("%s: line %d skipped: %s", self.file, line_no, reason)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first": self.lines}
