"""Logging for stages: one logger per stage, a line per step, a summary line with timings."""

from __future__ import annotations

import logging
import os
import sys


def get_logger(stage: str) -> logging.Logger:
    logger = logging.getLogger(f"mmpipe.{stage}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("MMPIPE_LOG_LEVEL", "INFO"))
        logger.propagate = False
    return logger


def progress_disabled() -> bool:
    """tqdm bars are on for terminals and off in CI logs unless MMPIPE_PROGRESS=1."""
    if os.environ.get("MMPIPE_PROGRESS") == "1":
        return False
    if os.environ.get("MMPIPE_PROGRESS") == "0":
        return True
    return not sys.stderr.isatty()
