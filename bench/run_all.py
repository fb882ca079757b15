"""Run every benchmark in bench/, one after the other (`make bench`)."""

from __future__ import annotations

import sys

from bench import features_speed, pipeline_timing


def main() -> int:
    print("== pipeline_timing: per-stage wall time of `dvc repro` on the default demo ==", flush=True)
    pipeline_timing.main([])
    print("\n== features_speed: items/s per encoder, batched vs naive; cache counters ==", flush=True)
    return features_speed.main([])


if __name__ == "__main__":
    sys.exit(main())
