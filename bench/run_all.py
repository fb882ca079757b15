"""Run every benchmark in bench/, one after the other (`make bench`)."""

from __future__ import annotations

import sys

from bench import pipeline_timing


def main() -> int:
    print("== pipeline_timing: per-stage wall time of `dvc repro` on the default demo ==")
    return pipeline_timing.main([])


if __name__ == "__main__":
    sys.exit(main())
