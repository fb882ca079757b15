"""Stage `pretrain_input`: record what pre-training reads of one source dataset.

`python -m stages.pretrain_input --source <ds>` writes `runs/pretrain/inputs/<ds>.json`: the sha256 of
the source's interactions.parquet, items.parquet and images.lmdb, and its sequence counts (users kept,
users with fewer than 3 items dropped, items). Why a stage: pre-training reads several sources
(`pipeline.pretrain_sources`), and DVC cannot expand a params list into one stage's deps; so each source
gets this small stage, and the pretrain stage depends on the folder of their outputs and checks, before
it trains, that every file it reads still has the hash recorded here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mmpipe.io import write_json
from mmpipe.log import get_logger
from mmpipe.paths import PROCESSED, RUNS, DatasetDir, pretrain_input
from models.seq.data import load_sequences, sequence_input_hashes
from stages.common.params import run_stage

log = get_logger("pretrain_input")


def param_keys(source: str) -> list[str]:
    return []


def run(source: str, params: dict[str, Any], processed: Path = PROCESSED, runs: Path = RUNS) -> dict[str, Any]:
    ds = DatasetDir.of(source, processed)
    hashes = sequence_input_hashes(ds)
    seqs = load_sequences(ds, max_seq_len=1)  # the counts do not depend on the window length
    record = {
        "source": source,
        "sha256": hashes,
        "users": len(seqs),
        "users_dropped_short": seqs.dropped_short,
        "items": seqs.n_items,
    }
    write_json(pretrain_input(source, runs), record)
    log.info("%s: %d sequences (%d users dropped), %d items recorded", source, len(seqs), seqs.dropped_short,
             seqs.n_items)  # fmt: skip
    return record


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__, run, ("source",), argv, param_keys=param_keys)


if __name__ == "__main__":
    sys.exit(main())
