"""Where every artefact lives: one home for the layout that dvc.yaml, the stages and the models share.

`raw/<ds>/` holds a dataset's files as published; `processed/<ds>/` everything derived from them;
`runs/<ds>/<model>/<run>/seed-<n>/` what a model's training and evaluation wrote, once per seed.
dvc.yaml spells the same paths (a test checks that every stage's outputs are the ones named here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RAW = Path("raw")
ENCODERS = RAW / "encoders"  # local model weights: the demo encoders, and real weights placed by hand
PROCESSED = Path("processed")
RUNS = Path("runs")
REPORTS = Path("reports")
MANIFEST = "MANIFEST.json"  # raw/<ds>/MANIFEST.json: every raw file of a dataset, its role, format and hash
RAW_IMAGES = "images"  # raw/<ds>/images/: images fetched from the items' URLs or unpacked from an archive
DEMO_TRUTH = "demo_truth.json"  # raw/demo/demo_truth.json: the generator's planted structure (for tests)
PARAMS_CHECKED = PROCESSED / "params.checked"  # the check stage's output: params.yaml passed
PUBLISHED = REPORTS / "published.yaml"  # the papers' tables the report sets beside ours
# MMRec's dataset layout (what the export stage writes and the `mmrec` source reads): <ds>.inter + these
MMREC_USER_MAP = "u_id_mapping.csv"
MMREC_ITEM_MAP = "i_id_mapping.csv"


def feature_file(modality: str) -> str:
    """MMRec's and LATTICE's per-modality feature matrix, `<modality>_feat.npy` (row i is item i)."""
    return f"{modality}_feat.npy"


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

    def shipped_features(self, role: str) -> Path:
        return self.shipped / f"{role}.parquet"

    @property
    def shipped_index(self) -> Path:
        """`shipped/index.json`: per role, how many items have features and their dimension."""
        return self.shipped / "index.json"

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

    def graph_stats(self, feature_set: str) -> Path:
        return self.graphs(feature_set) / "stats.json"

    # finetune_encoder (LMM4Rec's fine-tuned paradigm)
    @property
    def finetuned_encoder(self) -> Path:
        """The fine-tuned dual encoder (model + tokenizer + image processor), loadable with from_pretrained."""
        return self.root / "finetuned" / "encoder"

    @property
    def finetune_stats(self) -> Path:
        return self.root / "finetune_stats.json"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def export_dir(self, feature_set: str) -> Path:
        """`export/<set>/`: the dataset in MMRec's layout with one feature set, for the reference codes."""
        return self.export / feature_set

    def export_stats(self, feature_set: str) -> Path:
        return self.export_dir(feature_set) / "export_stats.json"


def run_dir(
    dataset: str, model: str, setting: str, seed: int, feature_set: str | None = None, runs: Path = RUNS
) -> Path:
    """`runs/<ds>/<model>/<setting>/seed-<seed>/`, or `runs/<ds>/<model>/<feature set>/<setting>/seed-<seed>/`
    for a model that reads item features (one run per feature set it is trained on, and per seed)."""
    return runs_of_setting(dataset, model, setting, feature_set, runs) / f"{SEED_DIR}{seed}"


SEED_DIR = "seed-"  # a run's folder: seed-<n>, one per seed of pipeline.seeds


def runs_of_setting(dataset: str, model: str, setting: str, feature_set: str | None = None, runs: Path = RUNS) -> Path:
    """The folder of a model's runs in one setting (and feature set): one `seed-<n>/` per seed."""
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


@dataclass(frozen=True)
class ReportFiles:
    """What the report stage writes (`reports/`, or `reports/full/` for the full comparison)."""

    root: Path

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def sequential_csv(self) -> Path:
        return self.root / "sequential.csv"

    @property
    def plots(self) -> Path:
        return self.root / "plots"
