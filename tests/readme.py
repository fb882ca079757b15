"""The README's command blocks and who runs them.

Every ```bash block of README.md is preceded by a tag saying where its commands are run:
`<!-- run by: .ci/run -->` (CI runs each line as written), `<!-- run by: make test-dag -->` (the DAG tests
run each line as written in a demo project: tests/test_pipeline_edits.py), or `<!-- not run: <why> -->`
(and the README's own text says so beside it). tests/test_readme.py holds every block to its tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = re.compile(r"<!-- (run by|not run): (.+?) -->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    language: str
    tag: tuple[str, str] | None  # ("run by", ".ci/run"), ("not run", why); None when untagged
    lines: list[str]
    line_no: int  # the opening fence's line in README.md (1-based)

    @property
    def commands(self) -> list[str]:
        """The command lines, as a user would paste them (comment-only and blank lines dropped)."""
        return [line.strip() for line in self.lines if line.strip() and not line.strip().startswith("#")]


def readme_blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README, with the tag on the nearest non-blank line above it."""
    lines = (text if text is not None else (ROOT / "README.md").read_text(encoding="utf-8")).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        tag = TAG.search(above)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append(Block(opening.group(1), tag.groups() if tag else None, lines[i + 1 : end], i + 1))
        i = end + 1
    return blocks


def shell_blocks(tag: tuple[str, str] | None = None, text: str | None = None) -> list[Block]:
    """The ```bash blocks, all or those with one tag."""
    found = [b for b in readme_blocks(text) if b.language == "bash"]
    return found if tag is None else [b for b in found if b.tag == tag]


def without_comment(command: str) -> str:
    """`make demo    # creates .venv` -> `make demo`."""
    return re.sub(r"\s+#.*$", "", command).strip()
