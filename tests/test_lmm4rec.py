"""LMM4Rec's paradigms: BM3, end-to-end training of VBPR / LATTICE / BM3 with their encoder, the fine-tuned
encoder read back by the features stage, and the report's paradigm table."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mmpipe.config import ParamsError
from mmpipe.io import read_json
from models.core.end_to_end import EndToEnd
from stages import evaluate, features, finetune_encoder, report, train
from stages.common.run import build_model, load_data, run_spec
from tests.conftest import ranking_floors, tiny_params

E2E_MODELS = ["vbpr", "lattice", "bm3"]


def lmm_params(root: Path) -> dict[str, Any]:
    """Tiny params whose end-to-end and fine-tuning encoder is the demo project's tiny CLIP."""
    params = tiny_params()
    clip = str(root / "raw/encoders/demo-clip")
    params["train"]["e2e"].update(model=clip, encoder_batch_size=32, encoder_lr=1.0e-2, trainer={"epochs": 2})
    params["train"]["num_threads"] = 1
    params["train"]["device"] = "cpu"
    params["finetune"].update(model=clip, epochs=1, batch_size=16, device="cpu", num_threads=1)
    for block in params["features"]["clip"].values():
        block["model"] = clip
    params["pipeline"].update(lmm4rec_models=["vbpr", "bm3"], e2e_models=E2E_MODELS, model_feature_sets=["default"])
    return params


@pytest.fixture
def project(demo_project, tmp_path) -> Path:
    """A writable copy of the tiny demo project."""
    shutil.copytree(demo_project, tmp_path / "p")
    return tmp_path / "p"


def build(project: Path, model: str, params: dict[str, Any]) -> EndToEnd:
    spec = run_spec("demo", model, "warm", "e2e", 2026, None, params, project / "runs")
    hp, _ = train.training_config(spec, params)
    data, _ = load_data(spec, project / "processed")
    torch.manual_seed(0)
    net = build_model(spec, data, hp, params, project / "processed")
    assert isinstance(net, EndToEnd)
    return net


@pytest.mark.parametrize("model", E2E_MODELS)
def test_recommendation_loss_trains_exactly_the_trainable_encoder_blocks(project, model):
    params = lmm_params(project)
    net = build(project, model, params)
    encoder = dict(net.towers.model.named_parameters())
    trainable = {n for n, p in encoder.items() if p.requires_grad}
    assert trainable and any(".encoder.layers.1." in n for n in trainable)  # the top of the 2 blocks
    assert not any(".encoder.layers.0." in n or "embeddings" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in encoder.items()}
    optimizer = net.make_optimizer(0.01)
    net.train()
    net.on_epoch_start(1, None)  # LATTICE builds its learned graph (with gradients) on an epoch's first step
    users, pos, neg = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])
    loss = net.loss(users, pos, neg)
    optimizer.zero_grad()
    loss.backward()
    with_grad = {n for n, p in encoder.items() if p.grad is not None and p.grad.abs().sum() > 0}
    # the text tower feeds the text features, the vision tower the image features: both get gradients
    assert any(n.startswith("text_model.") for n in with_grad) and any(n.startswith("vision_model.") for n in with_grad)
    assert with_grad <= trainable
    optimizer.step()
    changed = {n for n, p in encoder.items() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable
    assert all(torch.equal(encoder[n].detach(), before[n]) for n in set(encoder) - trainable)


def test_step_encodes_the_batch_items_and_caps_them(project):
    params = lmm_params(project)
    params["train"]["e2e"]["encoder_batch_size"] = 3
    net = build(project, "vbpr", params)
    items = net.step_items(torch.tensor([4, 1, 1, 9]), torch.tensor([2, 7, 4, 0]))
    assert len(items) == 3 and set(items.tolist()) <= {0, 1, 2, 4, 7, 9}
    assert torch.equal(items, torch.sort(items).values)


def test_frozen_encoder_weights_stay_out_of_the_checkpoint(project):
    params = lmm_params(project)
    net = build(project, "bm3", params)
    state = net.state_dict()
    assert not any(k in state for k in net.frozen_keys)
    assert any(k.startswith("towers.model.") for k in state) and any(k.startswith("inner.") for k in state)
    other = build(project, "bm3", params)
    other.load_state_dict(state)  # frozen weights come from the encoder's source
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k])
    with pytest.raises(RuntimeError, match="does not match"):
        other.load_state_dict({k: v for k, v in state.items() if not k.startswith("inner.")})


def test_e2e_stages_train_evaluate_and_report(project):
    params = lmm_params(project)
    params["train"]["e2e"]["trainer"] = {"epochs": 20, "patience": 5, "lr": 0.03}  # enough to clear chance
    processed, runs = project / "processed", project / "runs"
    summary = train.run("demo", "vbpr", "warm", "e2e", 2026, params, processed=processed, runs=runs)
    assert summary["encoder_params_trained"] > 0 and summary["feature_set"] == "e2e"
    result = evaluate.run("demo", "vbpr", "warm", "e2e", 2026, params, processed=processed, runs=runs)
    assert result["encoder_params_trained"] == summary["encoder_params_trained"]
    assert (runs / "demo/vbpr/e2e/warm/seed-2026/metrics.json").is_file()
    floors = ranking_floors(processed / "demo")
    assert result["test"]["recall@20"] > floors.learned, (result["test"]["recall@20"], floors)
    params["pipeline"].update(id_models=[], feature_models=[], graph_models=[], cold_feature_models=[],
                              cold_graph_models=[], lmm4rec_models=[], e2e_models=["vbpr"])  # fmt: skip
    text = report.run(params, runs_root=runs, out_root=project / "reports")
    assert "## demo: LMM4Rec" in text
    row = next(line for line in text.splitlines() if line.startswith("| vbpr | end to end"))
    assert f"{summary['encoder_params_trained']:,}" in row


def test_e2e_group_rejects_a_model_without_an_end_to_end_variant(project):
    params = lmm_params(project)
    with pytest.raises(ParamsError, match="lightgcn', which has no end-to-end variant"):
        run_spec("demo", "lightgcn", "warm", "e2e", 2026, None, params)
    with pytest.raises(ParamsError, match="reads no feature set"):
        run_spec("demo", "vbpr", "warm", "e2e", 2026, "default", params)


def test_features_stage_reads_the_fine_tuned_encoder_and_rekeys_its_cache(project):
    params = lmm_params(project)
    processed = project / "processed"
    finetune_encoder.run("demo", params, processed)
    params["features"]["clip_ft"]["image"]["model"] = str(project / "processed/{dataset}/finetuned/encoder")
    base = features.run("demo", "clip", "image", params, processed)
    tuned = features.run("demo", "clip_ft", "image", params, processed)
    assert base["encoded"] > 0 and tuned["encoded"] == base["encoded"]
    again = features.run("demo", "clip_ft", "image", params, processed)
    assert again["encoded"] == 0 and again["cache_hits"] == tuned["encoded"]
    a = read_json(processed / "demo/feature_stats/clip-image.json")
    b = read_json(processed / "demo/feature_stats/clip_ft-image.json")
    assert a["fingerprint"] != b["fingerprint"]


def tiny_siglip(root: Path, clip_dir: Path) -> Path:
    """A seeded random SigLIP saved with `save_pretrained`, with the demo CLIP's tokenizer (no SigLIP
    SentencePiece model is available offline; the tokenizer does not change what is tested)."""
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel

    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={**tower, "vocab_size": 512, "max_position_embeddings": 16},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(0)
    out = root / "siglip"
    SiglipModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(clip_dir).save_pretrained(out)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def test_siglip_loads_as_a_feature_encoder_and_as_a_trainable_dual_encoder(project, tmp_path):
    from mmpipe import lmdb_store
    from mmpipe.hf import freeze_below_top
    from models.core.dual_encoder import TOWERS, load_dual_encoder, pads_to_max_length, prepare_items
    from stages.encoders.kinds import ClipImageEncoder, ClipTextEncoder

    path = tiny_siglip(tmp_path, project / "raw/encoders/demo-clip")
    with lmdb_store.reading(project / "processed/demo/images.lmdb") as txn:
        jpegs = [value for _, (_, value) in zip(range(3), txn.cursor(), strict=False)]
    image = ClipImageEncoder("features.s.image", {"model": str(path)}, allow_download=False)
    assert image.encode(jpegs).shape == (3, 32)
    text = ClipTextEncoder("features.s.text", {"model": str(path), "max_tokens": 16}, allow_download=False)
    assert text.pad_to_max and text.encode(["a red toy", "blue bottle for babies"]).shape == (2, 32)
    model, tokenizer, processor = load_dual_encoder(str(path))
    trainable, _ = freeze_below_top(model, 1, towers=TOWERS, heads=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"logit_scale", "logit_bias", "text_model.head.weight", "vision_model.head.probe"} <= names
    assert not any(".layers.0." in n or "embeddings" in n for n in names)
    inputs = prepare_items(
        project / "processed/demo/items.parquet", project / "processed/demo/images.lmdb", tokenizer, processor,
        "{title}", 16, full_padding=pads_to_max_length(model),
    )  # fmt: skip
    ids, mask = inputs.text(torch.arange(4), torch.device("cpu"))
    assert ids.shape == (4, 16) and inputs.pixels.shape[1:] == (3, 32, 32)


CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible to torch on this machine")


@needs_cuda
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_end_to_end_training_and_fine_tuning_on_the_gpu(project, precision):
    """The encoder, the recommender and their optimiser on the GPU (bfloat16: autocast); metrics finite and
    within reach of the CPU run."""
    params = lmm_params(project)
    params["train"]["common"]["precision"] = precision
    out = {}
    for device in ("cpu", "cuda"):
        params["train"]["device"] = device
        runs = project / f"runs-{device}"
        summary = train.run("demo", "bm3", "warm", "e2e", 2026, params, processed=project / "processed", runs=runs)
        assert summary["device"].startswith(device)
        out[device] = summary["best_valid"]["recall@20"]
    assert abs(out["cuda"] - out["cpu"]) <= 0.05 + 0.1 * out["cpu"], out
    params["finetune"].update(device="cuda", precision=precision)
    stats = finetune_encoder.run("demo", params, project / "processed")
    assert stats["device"].startswith("cuda") and all(
        h["valid_loss"] == h["valid_loss"] for h in stats["history"]
    )  # no NaN
