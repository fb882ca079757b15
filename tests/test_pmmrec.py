"""PMMRec: sequences, each loss (shapes, gradients to the trainable encoder blocks and not the frozen
ones, masking of the user's own items, the popularity correction), transfer loading per part, the
pretrain and transfer stages, and a 2-process DDP run under torchrun (gloo on the CPU)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from mmpipe.config import ParamsError, param
from mmpipe.paths import DatasetDir
from models.core.base import HParams
from models.core.registry import MODELS
from models.pmmrec import NEG, PAD, PMMRec
from models.seq.base import SequentialRecommender
from models.seq.data import PAD as SEQ_PAD
from models.seq.data import build_sequences, concat_sequences, training_batch
from stages import ingest, pretrain, pretrain_input, transfer
from stages.common import sequential
from stages.encoders.builders import build_roberta
from stages.sources import demo
from tests.conftest import ROOT, run_stage_command, tiny_params

TINY_XLMR = {"seed": 0, "hidden_size": 32, "layers": 2, "heads": 2, "vocab_size": 400}


@pytest.fixture(scope="module")
def seq_project(tmp_path_factory, demo_project):
    """The tiny demo with a tiny seeded XLM-R, and params for PMMRec on it."""
    root = tmp_path_factory.mktemp("pmmrec")
    shutil.copytree(demo_project / "processed", root / "processed")
    encoders = root / "raw/encoders"
    encoders.mkdir(parents=True)
    shutil.copytree(demo_project / "raw/encoders/demo-clip", encoders / "demo-clip")
    build_roberta(encoders / "demo-xlmr", TINY_XLMR, demo.vocabulary_texts(), xlm=True)
    params = tiny_params()
    params["train"]["pmmrec"].update(
        text_model=str(encoders / "demo-xlmr"), image_model=str(encoders / "demo-clip"), embedding_size=32
    )
    params["seq"]["train"].update(epochs=2, batch_size=16, max_seq_len=6)
    # A fixed thread count: PMMRec's transformer sums differ in the last bits between 1 and 2 threads, and
    # the fair share (0) changes with the stages running beside the tests.
    params["train"]["num_threads"] = 2
    params["seq"]["pretrain"] = {"epochs": 2}
    return root, params


def build(seq_project, **overrides):
    root, params = seq_project
    hp = sequential.model_hparams(params, "pmmrec", overrides)
    cfg = sequential.train_config(params, where="seq.train")
    seqs, data, _ = sequential.load_dataset(DatasetDir(root / "processed/demo"), "pmmrec", hp, cfg.max_seq_len, False)
    torch.manual_seed(0)
    return PMMRec(data, hp, cfg.max_seq_len), seqs, cfg


def test_sequences_are_leave_one_out_on_each_timeline(tmp_path, params, demo_project):
    table = pa.table({
        "user_idx": pa.array([0, 0, 0, 0, 1, 1, 2, 2, 2], pa.int32()),
        "item_idx": pa.array([3, 1, 2, 4, 0, 1, 2, 0, 1], pa.int32()),
        "timestamp": pa.array([10, 20, 30, 40, 5, 6, 1, 2, 3], pa.int64()),
    })  # fmt: skip
    seqs = build_sequences(table, n_items=5, max_seq_len=2)
    assert seqs.users.tolist() == [0, 2] and seqs.dropped_short == 1  # user 1 has 2 items
    assert seqs.train[0].tolist() == [3, 1] and (seqs.valid_target[0], seqs.test_target[0]) == (2, 4)
    assert seqs.history(0, "test", 2).tolist() == [1, 2]
    inputs, targets = training_batch(seqs, np.array([0, 1]), 2)
    assert inputs.tolist() == [[0, 4], [0, 0]] and targets.tolist() == [[4, 2], [0, 3]]  # item_idx + 1, PAD 0
    # the same targets as ingest's leave_one_out split
    params["split"]["method"] = "leave_one_out"
    ingest.run("demo", params, demo_project / "raw", tmp_path)
    inter = pa.parquet.read_table(tmp_path / "demo/interactions.parquet")
    from models.seq.data import load_sequences

    loo = load_sequences(tmp_path / "demo", 20)
    split = inter.to_pandas()
    by_user = split.set_index(["user_idx", "split"])["item_idx"]
    for i, user in enumerate(loo.users[:50]):
        assert by_user[(user, 2)] == loo.test_target[i] and by_user[(user, 1)] == loo.valid_target[i]


def test_losses_and_gradients_reach_only_the_trainable_blocks(seq_project):
    model, seqs, cfg = build(seq_project)
    inputs, targets = map(torch.from_numpy, training_batch(seqs, np.arange(16), cfg.max_seq_len))
    losses = model(inputs, targets, torch.Generator().manual_seed(0))
    assert {"next_item", "nicl", "nid", "rcl", "total"} <= set(losses)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    losses["total"].backward()
    text_blocks = model.text.encoder.encoder.layer
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in text_blocks[-1].parameters())  # top: trains
    assert all(p.grad is None and not p.requires_grad for p in text_blocks[0].parameters())  # frozen
    assert all(p.grad is None for p in model.text.encoder.embeddings.parameters())
    assert all(p.grad is None for p in model.image.encoder.parameters())  # image_trainable_layers: 0 in the demo
    for name in ("fuse", "nicl_head", "user_encoder", "nid_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name


def test_each_loss_switches_off_at_weight_zero(seq_project):
    model, seqs, cfg = build(seq_project, nicl_weight=0.0, nid_weight=0.0, rcl_weight=0.0)
    inputs, targets = map(torch.from_numpy, training_batch(seqs, np.arange(8), cfg.max_seq_len))
    assert set(model(inputs, targets, torch.Generator().manual_seed(0))) == {"next_item", "total"}
    text_only, seqs, cfg = build(seq_project, item_tower="text")
    assert "nicl" not in text_only(inputs, targets, torch.Generator().manual_seed(0))  # needs both modalities


def test_own_items_are_masked_and_the_popularity_correction_applied(seq_project):
    model, seqs, cfg = build(seq_project)
    inputs = torch.tensor([[0, 5, 6, 5], [0, 0, 7, 8]])  # user 0 has item 5 twice
    targets = torch.tensor([[5, 6, 5, 9], [0, 7, 8, 6]])
    candidates, inverse = torch.unique(torch.cat([inputs, targets], 1), return_inverse=True)
    reps = torch.randn(len(candidates), 32)
    states = torch.randn(2, 4, 32)
    in_idx, tgt_idx = inverse[:, :4], inverse[:, 4:]
    logits = model.next_item_logits(states, candidates, reps, in_idx, tgt_idx)
    col = {int(c): i for i, c in enumerate(candidates)}
    # user 0, position 3 (target 9): its own items 5 and 6 are masked, user 1's items 7 and 8 are negatives
    assert logits[0, 3, col[5]] == NEG and logits[0, 3, col[6]] == NEG and logits[0, 3, col[PAD]] == NEG
    assert logits[0, 3, col[9]] > NEG and logits[0, 3, col[7]] > NEG
    # position 1 (target 6): the target itself is kept although it is one of the user's items
    assert logits[0, 1, col[6]] > NEG
    # the correction: raw score minus log of the item's training share, on every unmasked entry
    raw = states @ reps.T
    expected = raw[1, 3, col[5]] - model.log_popularity[5]
    assert torch.isclose(logits[1, 3, col[5]], expected)
    plain, _, _ = build(seq_project, logq_correction=False)
    assert torch.isclose(
        plain.next_item_logits(states, candidates, reps, in_idx, tgt_idx)[1, 3, col[5]], raw[1, 3, col[5]]
    )


def test_nicl_loss_by_hand(seq_project):
    """NICL (the model docstring's formula), position by position: the text of item a against its own
    image and the next item's image, over the images and (other) texts of the batch. Mutations caught: the
    next item's image left out of the positive, the anchor's own text among the negatives, the intra-modal
    negatives dropped, a missing temperature."""
    model, _, _ = build(seq_project)
    torch.manual_seed(1)
    text, image = torch.randn(5, 32), torch.randn(5, 32)
    in_idx = torch.tensor([[0, 1, 2, 2], [3, 4, 0, 1]])
    tgt_idx = torch.tensor([[1, 2, 2, 3], [4, 0, 1, 1]])  # position (0, 2): item 2 followed by itself
    valid = torch.tensor([[False, True, True, True], [True, True, True, True]])
    next_valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    with torch.no_grad():
        got = model.nicl_loss(text, image, in_idx, tgt_idx, valid, next_valid).item()
        t = torch.nn.functional.normalize(model.nicl_head(text), dim=-1).double().numpy()
        v = torch.nn.functional.normalize(model.nicl_head(image), dim=-1).double().numpy()
    tau = model.hp.nicl_temperature
    losses = []
    for row, col in zip(*np.nonzero((valid & next_valid).numpy()), strict=True):
        a, b = int(in_idx[row, col]), int(tgt_idx[row, col])
        positives = {a, b}  # one positive when an item follows itself
        numerator = sum(np.exp(t[a] @ v[c] / tau) for c in positives)
        denominator = sum(np.exp(t[a] @ v[c] / tau) for c in range(5))
        denominator += sum(np.exp(t[a] @ t[c] / tau) for c in range(5) if c != a)
        losses.append(-np.log(numerator / denominator))
    assert len(losses) == 6
    assert got == pytest.approx(np.mean(losses), rel=1e-5)


def test_rcl_loss_and_nid_noise_by_hand(seq_project):
    """RCL: a sequence's last state and its noised copy's are positives against the other sequences,
    symmetrised; NID: a share nid_ratio of the valid positions (never padding) replaced by real batch items.
    Mutations caught: RCL one-directional or without temperature; noise on padding, or padding drawn."""
    model, _, _ = build(seq_project)
    torch.manual_seed(2)
    clean, noisy = torch.randn(4, 32), torch.randn(4, 32)
    a = torch.nn.functional.normalize(clean, dim=-1).double().numpy()
    b = torch.nn.functional.normalize(noisy, dim=-1).double().numpy()
    logits = a @ b.T / model.hp.rcl_temperature
    rows = [-(logits[i, i] - np.log(np.exp(logits[i]).sum())) for i in range(4)]
    cols = [-(logits[i, i] - np.log(np.exp(logits[:, i]).sum())) for i in range(4)]
    assert model.rcl_loss(clean, noisy).item() == pytest.approx(0.5 * (np.mean(rows) + np.mean(cols)), rel=1e-5)

    candidates = torch.tensor([PAD, 3, 5, 8, 9])
    in_idx = torch.randint(1, 5, (400, 6))
    in_idx[:, :2] = 0  # left padding: the PAD candidate
    valid = in_idx != 0
    noised, replaced = model.noise(in_idx, valid, len(candidates), candidates, torch.Generator().manual_seed(0))
    assert not replaced[~valid].any() and torch.equal(noised[~valid], in_idx[~valid])
    assert (noised[replaced] != 0).all()  # never replaced by padding
    share = replaced[valid].float().mean().item()
    assert abs(share - model.hp.nid_ratio) < 4 * np.sqrt(model.hp.nid_ratio * (1 - model.hp.nid_ratio) / valid.sum())


@pytest.mark.parametrize("part", ["full", "item_encoder", "user_encoder"])
def test_transfer_loads_exactly_the_part(seq_project, part):
    source, _, _ = build(seq_project)
    torch.manual_seed(1)
    for p in source.parameters():
        p.data.add_(torch.randn_like(p))  # a "pre-trained" model that differs everywhere
    target, _, _ = build(seq_project)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    copied = target.load_pretrained(source.state_dict(), part)
    after, pre = target.state_dict(), source.state_dict()
    item_keys = [k for k in after if not k.startswith(("user_encoder.", "nid_head."))]
    user_keys = [k for k in after if k.startswith(("user_encoder.", "nid_head."))]
    loaded = {"full": item_keys + user_keys, "item_encoder": item_keys, "user_encoder": user_keys}[part]
    kept = [k for k in after if k not in loaded]
    assert sorted(copied) == sorted(loaded)
    assert all(torch.equal(after[k], pre[k]) for k in loaded)
    assert all(torch.equal(after[k], before[k]) for k in kept)


def test_the_id_tower_transfers_nothing_of_another_catalogue(seq_project):
    sasrec, _, _ = build(seq_project, item_tower="id")
    other = dict(sasrec.state_dict())
    other["item_ids.weight"] = torch.zeros(7, 32)  # another catalogue's size
    assert "item_ids.weight" not in sasrec.load_pretrained(other, "full")


def pretrain_on(sources, params, processed, runs):
    """The pretrain_input stage for each source, then the pretrain stage on all of them."""
    params = {**params, "pipeline": {**params["pipeline"], "pretrain_sources": list(sources)}}
    for source in sources:
        pretrain_input.run(source, params, processed, runs)
    return pretrain.run("pmmrec", params, processed, runs)


def chance_hit_rate(seqs, k: int = 10) -> tuple[float, float]:
    """HR@k of a random ranking on the test targets and its standard deviation over users: each user's
    whole history is masked (models.seq.data), so the target is one of n_items - |history| candidates."""
    p = []
    for u in range(len(seqs)):
        history = set(np.append(seqs.train[u], seqs.valid_target[u]).tolist())
        n = seqs.n_items - len(history)
        p.append(0.0 if seqs.test_target[u] in history else min(k, n) / n)
    p = np.array(p)
    return float(p.mean()), float(np.sqrt((p * (1 - p)).sum()) / len(p))


def test_pretrain_then_transfer_stages(seq_project, tmp_path):
    root, params = seq_project
    runs = tmp_path / "runs"
    _, seqs, _ = build(seq_project)
    chance, sd = chance_hit_rate(seqs)
    train = {**params["seq"]["train"], "epochs": 8, "patience": 3, "lr": 3e-3}  # enough to clear chance (+5 s)
    params = {**params, "seq": {**params["seq"], "train": train}}
    summary = pretrain_on(["demo"], params, root / "processed", runs)
    assert summary["encoder_params_trained"] > 0 and summary["encoder_params_frozen"] > 0
    assert torch.load(runs / "pretrain/pmmrec/model.pt", weights_only=True)["sources"] == ["demo"]
    for variant in ("scratch", "full", "sasrec"):
        result = transfer.run("demo", "pmmrec", variant, 2026, params, root / "processed", runs)
        evaluation = json.loads((runs / f"demo/pmmrec/{variant}/seed-2026/evaluation.json").read_text())
        assert evaluation["test"]["hr@50"] >= evaluation["test"]["hr@10"]
        assert evaluation["test"]["hr@10"] > chance + 3 * sd, (variant, evaluation["test"]["hr@10"], chance, sd)
        assert (result["tensors_transferred"] > 0) == (variant == "full")
        assert result["sources"] == (["demo"] if variant == "full" else None)
        metrics = json.loads((runs / f"demo/pmmrec/{variant}/seed-2026/metrics.json").read_text())
        assert set(metrics["test"]) == {"hr@10", "ndcg@10"}
    assert json.loads((runs / "demo/pmmrec/sasrec/seed-2026/train.json").read_text())["encoder_params_trained"] == 0


def test_sequences_of_several_sources_are_one_catalogue():
    def seqs(n_items, rows):
        users, items = zip(*rows, strict=True)
        table = pa.table({"user_idx": pa.array(users, pa.int32()), "item_idx": pa.array(items, pa.int32()),
                          "timestamp": pa.array(range(len(rows)), pa.int64())})  # fmt: skip
        return build_sequences(table, n_items, max_seq_len=5)

    a = seqs(4, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1)])  # user 1: too short, dropped
    b = seqs(3, [(0, 2), (0, 0), (0, 1), (1, 1), (1, 2), (1, 0)])
    both = concat_sequences([a, b])
    assert both.n_items == 7 and len(both) == 3 and both.dropped_short == 1
    assert [s.tolist() for s in both.train] == [[0, 1], [6], [5]]  # b's items shifted by a's 4
    assert both.valid_target.tolist() == [2, 4, 6] and both.test_target.tolist() == [3, 5, 4]
    assert both.popularity.tolist() == [*a.popularity, *b.popularity]
    assert concat_sequences([a]) is a


def test_pretraining_on_two_sources_and_a_changed_source_is_refused(seq_project, tmp_path):
    root, params = seq_project
    processed, runs = tmp_path / "processed", tmp_path / "runs"
    processed.mkdir()
    (processed / "demo").symlink_to(root / "processed/demo")
    shutil.copytree(root / "processed/demo", processed / "other")  # a second source: same content, own items
    one = json.loads(json.dumps(pretrain_input.run("demo", params, processed, runs)))
    summary = pretrain_on(["demo", "other"], {**params, "seq": {**params["seq"], "pretrain": {"epochs": 1}}},
                          processed, runs)  # fmt: skip
    assert summary["sources"] == ["demo", "other"]
    assert summary["items"] == 2 * one["items"] and summary["users"] == 2 * one["users"]
    checkpoint = torch.load(runs / "pretrain/pmmrec/model.pt", weights_only=True)
    assert checkpoint["sources"] == ["demo", "other"]
    assert transfer.run("demo", "pmmrec", "full", 2026, params, root / "processed", runs)["tensors_transferred"] > 0
    # a source's items change after its record was written: pre-training stops, naming the file
    items = processed / "other/items.parquet"
    table = pq.read_table(items)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"edited": b"by hand"}), items)
    with pytest.raises(ValueError, match=r"other's items.parquet changed since it was recorded"):
        pretrain.run("pmmrec", {**params, "pipeline": {**params["pipeline"], "pretrain_sources": ["demo", "other"]}},
                     processed, runs)  # fmt: skip


@pytest.mark.distributed
def test_pretraining_under_torchrun_with_two_processes(seq_project, tmp_path):
    """DistributedDataParallel with gloo on the CPU: two processes train one model, rank 0 writes it
    (`make test-distributed`, with the other engines)."""
    root, params = seq_project
    work = tmp_path / "ddp"
    work.mkdir()
    (work / "processed").symlink_to(root / "processed")
    params = {**params, "pipeline": {**params["pipeline"], "pretrain_sources": ["demo"]}}
    params["seq"] = {**params["seq"], "pretrain": {"epochs": 1}}
    pretrain_input.run("demo", params, work / "processed", work / "runs")
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "stages.pretrain", "--model", "pmmrec"]
    run_stage_command(command, work, {**env, "PYTHONPATH": str(ROOT)})
    summary = json.loads((work / "runs/pretrain/pmmrec/train.json").read_text())
    assert summary["processes"] == 2 and summary["epochs_run"] == 1
    state = torch.load(work / "runs/pretrain/pmmrec/model.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_transfer_run_is_byte_identical_whatever_ran_before(seq_project, tmp_path):
    root, params = seq_project
    torch.manual_seed(123)  # another state of the global generator than the second run sees
    torch.rand(10)
    for name in ("a", "b"):
        transfer.run("demo", "pmmrec", "scratch", 2026, params, root / "processed", tmp_path / name)
        torch.rand(7)
    a, b = (tmp_path / name / "demo/pmmrec/scratch/seed-2026/model.pt" for name in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()


def test_an_image_tower_without_one_image_is_refused(seq_project, tmp_path):
    """Every item without an image: the modal tower would train on blank pixels; the features stage refuses
    the same case, and so does PMMRec's data preparation, naming the store and what to do."""
    from mmpipe.lmdb_store import write_store

    root, params = seq_project
    shutil.copytree(root / "processed/demo", tmp_path / "demo")
    (tmp_path / "demo/images.lmdb").unlink()
    write_store(tmp_path / "demo/images.lmdb", [])
    hp = sequential.model_hparams(params, "pmmrec", {})
    with pytest.raises(
        ValueError, match=r"images.lmdb: none of the \d+ items of demo has an image, and pmmrec's item tower \(image"
    ):
        sequential.load_dataset(DatasetDir(tmp_path / "demo"), "pmmrec", hp, 6, False)
    text_only = sequential.model_hparams(params, "pmmrec", {"item_tower": "text"})
    seqs, _, info = sequential.load_dataset(DatasetDir(tmp_path / "demo"), "pmmrec", text_only, 6, False)
    assert len(seqs) > 0 and "items_without_image" not in info


def mean_items_model() -> type:
    """A second sequential model in one class (registered when defined: the caller unregisters it)."""

    class MeanItems(SequentialRecommender):
        """A second sequential model in one class: the mean of the history's item embeddings (no content)."""

        name = "meanitems"

        @dataclass(frozen=True)
        class HParams(HParams):
            embedding_size: int = param(16, ge=2)

        def __init__(self, data, hp, max_seq_len: int) -> None:
            super().__init__(data, hp, max_seq_len)
            self.items = nn.Embedding(data.n_items + 1, hp.embedding_size, padding_idx=SEQ_PAD)
            self.user = nn.Linear(hp.embedding_size, hp.embedding_size)

        def states(self, sequences: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
            valid = (sequences != SEQ_PAD).unsqueeze(-1).float()
            return self.user((table[sequences] * valid).cumsum(1) / valid.cumsum(1).clamp(min=1))

        def forward(self, inputs, targets, generator):
            logits = self.states(inputs, self.items.weight) @ self.items.weight.T
            valid = targets != SEQ_PAD
            return {"total": nn.functional.cross_entropy(logits[valid], targets[valid])}

        @torch.no_grad()
        def all_item_embeddings(self) -> torch.Tensor:
            return self.items.weight.detach().clone()

        def scores(self, histories, item_table):
            return self.states(histories, item_table)[:, -1] @ item_table[1:].T

        def parts(self):
            return {"item_encoder": [self.items], "user_encoder": [self.user]}

    return MeanItems


def test_a_second_sequential_model_is_one_class(seq_project, tmp_path, request):
    """The pretrain and transfer stages run any model of the family by name: a class, its train.<name>
    block, nothing else; the pre-trained item table reaches the target through `full`."""
    root, params = seq_project
    runs = tmp_path / "runs"
    mean_items_model()
    request.addfinalizer(lambda: MODELS.pop("meanitems", None))  # other tests list the registry's models
    params = {**params, "train": {**params["train"], "meanitems": {"embedding_size": 16}}}
    params = {
        **params,
        "pipeline": {**params["pipeline"], "pretrain_sources": ["demo"], "pretrain_models": ["meanitems"]},
    }
    pretrain_input.run("demo", params, root / "processed", runs)
    summary = pretrain.run("meanitems", params, root / "processed", runs)
    assert summary["encoder_params_trained"] == 0 and (runs / "pretrain/meanitems/model.pt").is_file()
    result = transfer.run("demo", "meanitems", "full", 2026, params, root / "processed", runs)
    assert result["tensors_transferred"] == 3  # items.weight, user.weight, user.bias
    assert json.loads((runs / "demo/meanitems/full/seed-2026/metrics.json").read_text())["test"]["hr@10"] >= 0
    with pytest.raises(ParamsError, match="lists 'bpr', which reads 'id', not 'seq'"):
        pretrain.run("bpr", params, root / "processed", runs)
