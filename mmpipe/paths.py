"""Where every artefact lives: one home for the layout that dvc.yaml, the stages and the models share.

`raw/<ds>/` holds a dataset's files as published; `processed/<ds>/` everything derived from them;
`runs/<ds>/<model>/<run>/` what a model's training and evaluation wrote. dvc.yaml spells the same
paths (a test checks that every stage's outputs are the ones named here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RAW = Path("raw")
ENCODERS = RAW / "encoders"  # local model weights: the demo encoders, and real weights placed by hand
PROCESSED = Path("processed")
RUNS = Path("runs")
REPORTS = Path("reports")
MANIFEST = "MANIFEST.json"
# raw/<ds>/images/<item_id><ext>: the suffixes an item's image file may have (download writes them,
# the images stage looks for them in this order).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
# The split files models train on, per setting (warm: ingest's split; cold: the MICRO cold-start split).
SETTING_FILES = {"warm": "interactions.parquet", "cold": "coldstart.parquet"}


@dataclass(frozen=True)
class DatasetDir:
    """The processed files of one dataset (`processed/<ds>/`)."""

    root: Path

    @classmethod
    def of(cls, dataset: str, processed: Path = PROCESSED) -> DatasetDir:
        return cls(Path(processed) / dataset)

    @property
    def name(self) -> str:
        return self.root.name

    # ingest
    @property
    def interactions(self) -> Path:
        return self.root / "interactions.parquet"

    @property
    def items(self) -> Path:
        return self.root / "items.parquet"

    @property
    def users(self) -> Path:
        return self.root / "users.parquet"

    @property
    def ingest_stats(self) -> Path:
        return self.root / "ingest_stats.json"

    @property
    def shipped(self) -> Path:
        """Features a source ships with its files (MMRec/LATTICE .npy, Amazon 2014 CNN), one Parquet per role."""
        return self.root / "shipped"

    def split(self, setting: str) -> Path:
        if setting not in SETTING_FILES:
            raise ValueError(f"unknown setting {setting!r}; settings: {sorted(SETTING_FILES)}")
        return self.root / SETTING_FILES[setting]

    # images
    @property
    def images(self) -> Path:
        return self.root / "images.lmdb"

    @property
    def images_report(self) -> Path:
        return self.root / "images_report.json"

    # coldstart
    @property
    def coldstart(self) -> Path:
        return self.root / "coldstart.parquet"

    @property
    def coldstart_stats(self) -> Path:
        return self.root / "coldstart_stats.json"

    # features: processed/<ds>/features/<set>/<modality>.parquet; the folder of a set is what models read
    def feature_set(self, feature_set: str) -> Path:
        return self.root / "features" / feature_set

    def features(self, feature_set: str, modality: str) -> Path:
        return self.feature_set(feature_set) / f"{modality}.parquet"

    def feature_cache(self, feature_set: str, modality: str) -> Path:
        return self.root / "feature_cache" / f"{feature_set}-{modality}.lmdb"

    def feature_stats(self, feature_set: str, modality: str) -> Path:
        return self.root / "feature_stats" / f"{feature_set}-{modality}.json"

    # graphs: processed/<ds>/graphs/<set>/{knn,warm,cold}/
    def graphs(self, feature_set: str) -> Path:
        return self.root / "graphs" / feature_set

    def knn_graph(self, feature_set: str, modality: str) -> Path:
        return self.graphs(feature_set) / "knn" / f"{modality}.npz"

    def setting_graph(self, feature_set: str, setting: str, name: str) -> Path:
        return self.graphs(feature_set) / setting / f"{name}.npz"

    @property
    def export(self) -> Path:
        return self.root / "export"


def run_dir(dataset: str, model: str, setting: str, feature_set: str | None = None, runs: Path = RUNS) -> Path:
    """`runs/<ds>/<model>/<setting>/`, or `runs/<ds>/<model>/<feature set>/<setting>/` for a model that
    reads item features (one run per feature set it is trained on)."""
    root = Path(runs) / dataset / model
    return (root / feature_set if feature_set else root) / setting


# runs/pretrain/: pre-training, on one or several source datasets together (pipeline.pretrain_sources).
# DVC cannot expand a params list into one stage's deps, so each source gets a small `pretrain_input`
# stage writing runs/pretrain/inputs/<source>.json, and the pretrain stage depends on that folder.
PRETRAIN = "pretrain"


def pretrain_dir(model: str, runs: Path = RUNS) -> Path:
    """`runs/pretrain/<model>/`: the pre-trained checkpoint, its history and summary."""
    return Path(runs) / PRETRAIN / model


def pretrain_input(source: str, runs: Path = RUNS) -> Path:
    """`runs/pretrain/inputs/<source>.json`: what pre-training reads of a source (hashes, counts)."""
    return Path(runs) / PRETRAIN / "inputs" / f"{source}.json"


@dataclass(frozen=True)
class RunFiles:
    """What the train and evaluate stages write for one run."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        """The best state (by validation), its hyperparameters and best epoch: byte-identical for equal weights."""
        return self.root / "model.pt"

    @property
    def history(self) -> Path:
        """One row per epoch: loss, validation metrics, seconds (for `dvc plots`)."""
        return self.root / "history.csv"

    @property
    def train_summary(self) -> Path:
        """Best epoch, epochs run, best validation metrics: the same bytes for the same training, so that
        re-training to the same weights re-runs nothing downstream (timings are in `train_times`)."""
        return self.root / "train.json"

    @property
    def train_times(self) -> Path:
        """Seconds of the training run and per epoch (read by the report, a dependency of nothing else)."""
        return self.root / "train_times.json"

    @property
    def metrics(self) -> Path:
        """The headline metrics (test and best-validation Recall/NDCG@20): what `dvc metrics show` lists."""
        return self.root / "metrics.json"

    @property
    def evaluation(self) -> Path:
        """Every test metric at every cut-off, the validation metrics, user counts and timings."""
        return self.root / "evaluation.json"

    @property
    def topk(self) -> Path:
        return self.root / "topk.parquet"

    @property
    def per_user(self) -> Path:
        """Each evaluated user's test metrics (the report's paired significance tests read them)."""
        return self.root / "per_user.parquet"
