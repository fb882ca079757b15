"""mmpipe's shared core: what the pipeline stages and the models both need, and nothing else.

`stages/` (the DVC stages) and `models/` (the recommenders) import from here; this package imports
neither. It holds the data contracts between stages (`schemas`, `paths`), the atomic and
deterministic readers and writers of their files (`io`, `lmdb_store`), typed params blocks
(`config`), devices and threads (`devices`), sparse helpers (`sparse`) and logging (`log`).
"""
