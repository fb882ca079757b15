"""The finetune_encoder stage: CLIP's loss, which parameters train, a reloadable and reproducible output."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmpipe import lmdb_store
from mmpipe.config import ParamsError
from mmpipe.hf import ModelUnavailable, freeze_below_top
from mmpipe.io import read_json
from models.core.dual_encoder import TOWERS, contrastive_loss, load_dual_encoder
from stages import finetune_encoder
from tests.conftest import tiny_params

WEIGHTS = "model.safetensors"


def finetune_params(demo_project: Path, **overrides: Any) -> dict[str, Any]:
    params = tiny_params()
    params["finetune"] = {
        "model": str(demo_project / "raw/encoders/demo-clip"),
        "epochs": 2,
        "batch_size": 16,
        "lr": 1.0e-3,  # a visible change in 2 epochs of 4 steps on the tiny random CLIP
        "device": "cpu",
        "num_threads": 1,  # spinning OpenMP threads crawl when another test process shares the 2 cores
        **overrides,
    }
    return params


def copy_dataset(demo_project: Path, root: Path) -> Path:
    """A writable processed/ holding a copy of the demo dataset; returns processed/."""
    shutil.copytree(demo_project / "processed/demo", root / "processed/demo")
    return root / "processed"


@pytest.fixture(scope="module")
def finetuned(demo_project, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """The stage run once on a copy of the demo: (processed/, its summary)."""
    processed = copy_dataset(demo_project, tmp_path_factory.mktemp("finetune"))
    summary = finetune_encoder.run("demo", finetune_params(demo_project), processed)
    return processed, summary


def trainable_names(n_blocks: int) -> set[str]:
    """What freeze_below_top(..., heads=True) leaves trainable in a CLIPModel of `n_blocks` blocks per tower."""
    top = n_blocks - 1
    return {
        f"text_model.encoder.layers.{top}.",
        f"vision_model.encoder.layers.{top}.",
        "text_model.final_layer_norm.",
        "vision_model.post_layernorm.",
        "text_projection.",
        "visual_projection.",
        "logit_scale",
    }


def test_contrastive_loss_by_hand_symmetric_and_differentiable():
    image = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    text = torch.tensor([[2.0, 0.1, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 1.0]], requires_grad=True)
    scale = torch.tensor(math.log(10.0), requires_grad=True)

    a = image.detach().numpy() / np.linalg.norm(image.detach().numpy(), axis=1, keepdims=True)
    b = text.detach().numpy() / np.linalg.norm(text.detach().numpy(), axis=1, keepdims=True)
    logits = 10.0 * a @ b.T

    def cross_entropy(rows: np.ndarray) -> float:  # the diagonal is the target of each row
        return float(np.mean([np.log(np.exp(r).sum()) - r[i] for i, r in enumerate(rows)]))

    expected = (cross_entropy(logits) + cross_entropy(logits.T)) / 2
    loss = contrastive_loss(image, text, scale)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert contrastive_loss(text, image, scale).item() == pytest.approx(loss.item(), rel=1e-6)
    # aligned pairs give a lower loss than shuffled ones
    assert contrastive_loss(image, image, scale) < loss

    loss.backward()
    for grad in (image.grad, text.grad, scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_freeze_below_top_trains_only_the_top_block_and_above(demo_project):
    model, _, _ = load_dual_encoder(str(demo_project / "raw/encoders/demo-clip"))
    n_blocks = len(model.text_model.encoder.layers)
    assert n_blocks >= 2, "the demo CLIP needs a frozen block below the top one"
    trainable, frozen = freeze_below_top(model, 1, towers=TOWERS, heads=True)
    prefixes = trainable_names(n_blocks)
    named = dict(model.named_parameters())
    for name, p in named.items():
        assert p.requires_grad == name.startswith(tuple(prefixes)), name
    assert trainable == sum(p.numel() for p in named.values() if p.requires_grad) > 0
    assert frozen == sum(p.numel() for p in named.values() if not p.requires_grad) > 0
    for prefix in prefixes:  # every group above the frozen part is present and trainable
        assert any(n.startswith(prefix) and p.requires_grad for n, p in named.items()), prefix

    assert freeze_below_top(model, 0, towers=TOWERS, heads=True) == (0, trainable + frozen)
    assert not any(p.requires_grad for p in model.parameters())


def test_training_changes_only_the_trainable_parameters(demo_project, finetuned):
    processed, summary = finetuned
    assert summary["best_epoch"] >= 1, "the fine-tuning never beat the un-tuned model: nothing to compare"
    base = load_file(demo_project / "raw/encoders/demo-clip" / WEIGHTS)
    tuned = load_file(processed / "demo/finetuned/encoder" / WEIGHTS)
    assert base.keys() == tuned.keys()
    n_blocks = tiny_params()["demo_encoders"]["demo-clip"]["layers"]
    prefixes = tuple(trainable_names(n_blocks))
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert not {n for n in changed if not n.startswith(prefixes)}, "a frozen parameter changed"
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in changed), f"nothing under {prefix} was trained"
    top_block = [n for n in base if n.startswith(f"vision_model.encoder.layers.{n_blocks - 1}.")]
    assert sum(n in changed for n in top_block) >= len(top_block) // 2


def test_output_loads_back_and_changes_the_feature_encoder(demo_project, finetuned):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from stages.encoders.kinds import ClipImageEncoder

    processed, _ = finetuned
    out = processed / "demo/finetuned/encoder"
    base_dir = demo_project / "raw/encoders/demo-clip"
    model = CLIPModel.from_pretrained(out)
    assert model.config.projection_dim == tiny_params()["demo_encoders"]["demo-clip"]["projection_dim"]
    text = "Soft Rattle Baby Toys"
    assert (
        AutoTokenizer.from_pretrained(out)(text)["input_ids"]
        == AutoTokenizer.from_pretrained(base_dir)(text)["input_ids"]
    )
    assert CLIPImageProcessor.from_pretrained(out).crop_size == CLIPImageProcessor.from_pretrained(base_dir).crop_size

    tuned = ClipImageEncoder("features.x.image", {"model": str(out)}, allow_download=False)
    base = ClipImageEncoder("features.x.image", {"model": str(base_dir)}, allow_download=False)
    assert tuned.fingerprint_parts["weights"] != base.fingerprint_parts["weights"]
    with lmdb_store.reading(processed / "demo/images.lmdb") as txn:
        jpegs = [value for _, value in txn.cursor()][:6]
    a, b = tuned.encode(jpegs), base.encode(jpegs)
    assert a.shape == b.shape and np.isfinite(a).all()
    assert not np.allclose(a, b, atol=1e-4)


def test_two_runs_write_identical_weights_and_the_stats_count_pairs(demo_project, finetuned, tmp_path):
    processed, summary = finetuned
    again = copy_dataset(demo_project, tmp_path)
    second = finetune_encoder.run("demo", finetune_params(demo_project), again)
    first_dir, second_dir = processed / "demo/finetuned/encoder", again / "demo/finetuned/encoder"
    assert (first_dir / WEIGHTS).read_bytes() == (second_dir / WEIGHTS).read_bytes()
    assert sorted(p.name for p in first_dir.iterdir()) == sorted(p.name for p in second_dir.iterdir())
    for file in first_dir.iterdir():  # config, tokenizer and processor files too: one DVC hash
        assert file.read_bytes() == (second_dir / file.name).read_bytes(), file.name
    assert not [p for p in (processed / "demo/finetuned").iterdir() if p.name != "encoder"]  # no temp dirs left
    modes = {file.name: file.stat().st_mode & 0o777 for file in first_dir.iterdir()}
    assert len(set(modes.values())) == 1, modes  # the weights are as readable as the config

    stats = read_json(processed / "demo/finetune_stats.json")
    assert stats["history"] == summary["history"] and stats["best_epoch"] == second["best_epoch"]
    images = read_json(processed / "demo/images_report.json")
    assert stats["items"] == images["items"]
    assert stats["dropped_no_image"] == images["items"] - images["stored"]
    assert stats["pairs"] + stats["dropped"] == stats["items"]
    assert stats["dropped"] <= stats["dropped_no_text"] + stats["dropped_no_image"]
    assert stats["train_pairs"] + stats["valid_pairs"] == stats["pairs"] > 0
    assert stats["valid_pairs"] == round(0.1 * stats["pairs"])
    assert stats["trainable_params"] > 0 and stats["frozen_params"] > 0
    assert stats["epochs_run"] == len(stats["history"]) - 1 <= 2
    assert stats["history"][0]["epoch"] == 0 and stats["history"][0]["train_loss"] is None
    best = min(stats["history"], key=lambda row: row["valid_loss"])
    assert best["epoch"] == stats["best_epoch"] and best["valid_loss"] == stats["best_valid_loss"]
    assert stats["device"] == "cpu" and stats["items_per_second"] > 0 and stats["base_model"].endswith("demo-clip")


def test_bad_params_name_the_key(demo_project, tmp_path, capsys):
    with pytest.raises(ParamsError, match=r"finetune\.valid_ratio"):
        finetune_encoder.run("demo", finetune_params(demo_project, valid_ratio=1.5), tmp_path)
    with pytest.raises(ParamsError, match=r"finetune\.batch_size"):
        finetune_encoder.run("demo", finetune_params(demo_project, batch_size=1), tmp_path)
    with pytest.raises(ParamsError, match=r"finetune\.template.*'colour'"):
        finetune_encoder.run("demo", finetune_params(demo_project, template="{title} {colour}"), tmp_path)
    with pytest.raises(ParamsError, match=r"finetune has unknown key 'epoch'"):
        finetune_encoder.run("demo", finetune_params(demo_project, epoch=3), tmp_path)

    # the command line prints the error in one line and exits 2
    params = finetune_params(demo_project, precision="float16")
    (tmp_path / "params.yaml").write_text(__import__("yaml").safe_dump(params))
    assert finetune_encoder.main(["--dataset", "demo", "--params", str(tmp_path / "params.yaml")]) == 2
    assert "finetune.precision" in capsys.readouterr().err


def test_missing_model_and_too_many_layers_are_user_errors(demo_project, tmp_path):
    processed = copy_dataset(demo_project, tmp_path)
    with pytest.raises(ModelUnavailable, match=r"finetune\.model = 'raw/encoders/no-such-clip'"):
        finetune_encoder.run("demo", finetune_params(demo_project, model="raw/encoders/no-such-clip"), processed)
    with pytest.raises(ParamsError, match=r"finetune\.n_trainable_layers"):
        finetune_encoder.run("demo", finetune_params(demo_project, n_trainable_layers=9), processed)
    with pytest.raises(ValueError, match=r"demo: \d+ items with both an image and a text.*valid_ratio"):
        finetune_encoder.run("demo", finetune_params(demo_project, valid_ratio=0.01), processed)
    assert not (processed / "demo/finetuned").exists()


def test_no_trainable_layer_writes_the_base_weights(demo_project, tmp_path):
    processed = copy_dataset(demo_project, tmp_path)
    summary = finetune_encoder.run("demo", finetune_params(demo_project, n_trainable_layers=0), processed)
    assert summary["trainable_params"] == 0 and summary["epochs_run"] == 0 and summary["best_epoch"] == 0
    base = load_file(demo_project / "raw/encoders/demo-clip" / WEIGHTS)
    tuned = load_file(processed / "demo/finetuned/encoder" / WEIGHTS)
    assert all(torch.equal(base[name], tuned[name]) for name in base)


def test_a_dataset_without_images_gets_the_base_weights(demo_project, tmp_path):
    """A one-modality dataset has no image/text pair: the stage writes the base encoder, says so, and the
    features stage reads it as any other (its clip_ft features are the base CLIP's)."""
    processed = copy_dataset(demo_project, tmp_path)
    images = processed / "demo/images.lmdb"
    images.unlink()
    lmdb_store.write_store(images, iter(()))
    summary = finetune_encoder.run("demo", finetune_params(demo_project), processed)
    assert summary["pairs"] == 0 and summary["epochs_run"] == 0 and summary["best_valid_loss"] is None
    base = load_file(demo_project / "raw/encoders/demo-clip" / WEIGHTS)
    tuned = load_file(processed / "demo/finetuned/encoder" / WEIGHTS)
    assert all(torch.equal(base[name], tuned[name]) for name in base)
