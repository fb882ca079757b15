"""One home for every fact: dvc.yaml, params.yaml and the code's declarations must agree.

* each stage's code deps in dvc.yaml are exactly its import closure (tests/code_deps.py), so an edit
  re-runs exactly the stages that run the edited code;
* each stage's `params:` in dvc.yaml are exactly the keys its module declares (`param_keys`), the only
  keys the stage is handed (stages.common.params.run_stage);
* the `pipeline:` model lists agree with what each model file declares (`reads`, `scores_cold_items`,
  its HParams), and dvc.yaml's model stage groups iterate over the list of their group;
* models never import from stages/, and no stage module imports another (what several share lives in
  stages/common, stages/encoders, stages/sources);
* no source file is over MAX_LINES lines (tests aside).

Each check is a function returning the problems it finds, tested twice: clean on the real files, and
failing on a copy with one planted inconsistency.
"""

from __future__ import annotations

import ast
import copy
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmpipe.config import ParamsError
from models.core.registry import all_models
from stages import check
from stages.common import pipeline
from stages.common.pipeline import MODEL_LISTS
from tests import code_deps
from tests.conftest import ROOT, dvc_files, dvc_stages

CODE_ROOTS = ("mmpipe", "models", "stages")
MAX_LINES = 450  # a file longer than this holds more than one job: split it by job


def load_dvc_yaml() -> dict[str, Any]:
    """Every stage of the DAG's dvc.yaml files, as one dvc.yaml would hold them."""
    return {"stages": dvc_stages()}


def load_params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def stage_body(stage: dict[str, Any]) -> dict[str, Any]:
    return stage.get("do", stage)


def command(stage: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(stage module, {flag: value}) of `python -m stages.<module> --flag value ...`."""
    words = shlex.split(stage_body(stage)["cmd"])
    assert words[:2] == ["python", "-m"] and words[2].startswith("stages."), words
    flags = {words[i][2:].replace("-", "_"): words[i + 1] for i in range(3, len(words), 2)}
    return words[2].removeprefix("stages."), flags


def dep_paths(stage: dict[str, Any]) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage_body(stage).get("deps", [])]


def may_run(cls: Any, group: str) -> bool:
    """Whether a train/evaluate stage of `group` may run the model (stages.common.pipeline.check_group)."""
    try:
        pipeline.check_group(cls.name, cls.reads, group, cls.end_to_end)
    except ParamsError:
        return False
    return True


def code_dep_problems(dvc: dict[str, Any]) -> list[str]:
    problems = []
    for name, stage in dvc["stages"].items():
        module, _ = command(stage)
        listed = sorted(d for d in dep_paths(stage) if d.split("/")[0] in CODE_ROOTS)
        if module in code_deps.MODEL_STAGES:
            if "models/${item.model}.py" not in listed:
                problems.append(f"{name}: models/${{item.model}}.py missing from deps")
            # every model a list may name: its file plus what it imports must be covered by the stage's deps
            group = command(stage)[1]["group"]
            for model in (m for m, cls in all_models().items() if may_run(cls, group)):  # what the stage may run
                expected = code_deps.stage_code(module, model)
                got = sorted(d.replace("${item.model}", model) for d in listed)
                if got != expected:
                    problems.append(f"{name} with model {model}: code deps {got}, its imports need {expected}")
                    break
        elif module in code_deps.SEQ_STAGES:
            model_dep = f"models/{command(stage)[1]['model']}.py"  # models/${item}.py or models/${item.model}.py
            if model_dep not in listed:
                problems.append(f"{name}: {model_dep} missing from deps")
            for model in (m for m, cls in all_models().items() if cls.reads == "seq"):
                expected = code_deps.stage_code(module, model)
                got = sorted(d.replace(model_dep, f"models/{model}.py") for d in listed)
                if got != expected:
                    problems.append(f"{name} with model {model}: code deps {got}, its imports need {expected}")
        else:
            expected = code_deps.stage_code(module)
            if listed != expected:
                missing = sorted(set(expected) - set(listed))
                extra = sorted(set(listed) - set(expected))
                problems.append(f"{name}: code deps missing {missing}, not imported {extra} (expected {expected})")
    return problems


def params_problems(dvc: dict[str, Any]) -> list[str]:
    problems = []
    for name, stage in dvc["stages"].items():
        module, flags = command(stage)
        declared = importlib.import_module(f"stages.{module}").param_keys(**flags)
        listed = [p for p in stage_body(stage).get("params", [])]
        if sorted(listed) != sorted(declared):
            problems.append(
                f"{name}: dvc.yaml params {sorted(listed)}, stages/{module}.py param_keys {sorted(declared)}"
            )
    return problems


def model_group_problems(dvc: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The model lists against the model files, and dvc.yaml's model stages against the lists."""
    problems = []
    models = all_models()
    for list_name, (group, setting) in MODEL_LISTS.items():
        for model in params["pipeline"][list_name]:
            cls = models.get(model)
            if cls is None:
                problems.append(f"pipeline.{list_name}: unknown model {model!r}")
            elif not may_run(cls, group):
                problems.append(f"pipeline.{list_name}: {model} reads {cls.reads!r}, the list's group is {group!r}")
            elif setting == "cold" and not cls.scores_cold_items:
                problems.append(f"pipeline.{list_name}: {model} cannot score cold items")
    seen = set()
    for name, stage in dvc["stages"].items():
        module, flags = command(stage)
        if module not in code_deps.MODEL_STAGES:
            continue
        group, setting = flags["group"], flags["setting"]
        lists = [n for n, key in MODEL_LISTS.items() if key == (group, setting)]
        matrix = stage.get("matrix", {})
        if matrix.get("model") != f"${{pipeline.{lists[0]}}}":
            problems.append(
                f"{name}: iterates over {matrix.get('model')}, group {group}/{setting} is pipeline.{lists[0]}"
            )
        if (group in ("id", "e2e")) == ("feature_set" in flags):
            problems.append(f"{name}: --feature-set must be given exactly for models that read features")
        seen.add((module, group, setting))
    for group, setting in MODEL_LISTS.values():
        for module in code_deps.MODEL_STAGES:
            if (module, group, setting) not in seen:
                problems.append(f"dvc.yaml has no {module} stage for group {group}/{setting}")
    return problems


def test_code_deps_are_the_import_closure():
    assert code_dep_problems(load_dvc_yaml()) == []


def test_code_deps_check_catches_a_missing_and_an_extra_file():
    dvc = load_dvc_yaml()
    planted = copy.deepcopy(dvc)
    deps = planted["stages"]["coldstart"]["do"]["deps"]
    deps.remove("stages/coldstart.py")
    deps.append("stages/common/pipeline.py")
    found = code_dep_problems(planted)
    assert len(found) == 1 and "coldstart" in found[0] and "stages/coldstart.py" in found[0]
    assert "stages/common/pipeline.py" in found[0]
    planted = copy.deepcopy(dvc)
    planted["stages"]["train_graph"]["deps"].remove("models/core")
    assert any(p.startswith("train_graph with model") for p in code_dep_problems(planted))


def test_stage_params_are_the_declared_keys():
    assert params_problems(load_dvc_yaml()) == []


def test_params_check_catches_an_undeclared_key():
    planted = load_dvc_yaml()
    planted["stages"]["graphs"]["params"].append("coldstart")
    found = params_problems(planted)
    assert len(found) == 1 and found[0].startswith("graphs:") and "coldstart" in found[0]


def test_model_lists_match_the_model_files_and_dvc_yaml():
    assert model_group_problems(load_dvc_yaml(), load_params()) == []
    check.run(load_params(), out=ROOT / ".pytest_cache" / "params.checked")  # the stage that gates `dvc repro`


def test_model_group_check_catches_a_misplaced_model_and_a_wrong_list():
    dvc, params = load_dvc_yaml(), load_params()
    params["pipeline"]["id_models"].append("vbpr")
    params["pipeline"]["cold_feature_models"].append("bpr")
    dvc["stages"]["train_feat_cold"]["matrix"]["model"] = "${pipeline.feature_models}"
    found = model_group_problems(dvc, params)
    assert any("id_models: vbpr reads 'feat'" in p for p in found)
    assert any(p.startswith("pipeline.cold_feature_models: bpr reads 'id'") for p in found)
    assert any(p.startswith("train_feat_cold: iterates over ${pipeline.feature_models}") for p in found)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pipeline.id_models", ["bpr", "lightgnc"], r"names model 'lightgnc', which does not exist; models: bm3, bpr,"),
        ("pipeline.id_models", ["bpr", "vbpr"], r"'vbpr' reads 'feat' inputs, so it belongs in pipeline.feature_mod"),
        ("pipeline.cold_graph_models", ["itemknn", "itemknn"], r"cold_graph_models lists itemknn more than once"),
        ("pipeline.datasets", ["demo", "demo_b", "dmeo"], r"no block datasets.dmeo .*datasets: demo, demo_b, baby"),
        ("pipeline.feature_sets", ["default", "clip", "clip_ft", "clipp"], r"key 'features.clipp.text' is missing"),
        ("train.lightgcn", {"n_layers": 2, "n_layer": 3}, r"lightgcn has unknown key 'n_layer' \(known: embedding_"),
        ("train.lightgcn", {"n_layers": "two"}, r"train.lightgcn.n_layers = 'two': expected an integer"),
        ("train.vbpr", {"modalities": ["text", "audio"]}, r"train.vbpr.modalities asks for audio"),
        ("pipeline.pretrain_models", ["bpr"], r"pretrain_models lists 'bpr', which reads 'id', not 'seq'"),
        ("pipeline.pretrain_sources", [], r"pretrain_models and pretrain_sources go together"),
        ("pipeline.pretrain_sources", ["demo", "dmeo"], r"dmeo must also be in pipeline.datasets"),
        # values that used to pass check and change results or fail late
        ("seq.train.ks", [0, 10], r"seq.train \(\+ seq.pretrain\).ks\[0\] = 0: must be >= 1"),
        ("seq.train.ks", [-5, 10], r"ks\[0\] = -5: must be >= 1"),
        ("evaluate.topk", [0, 10], r"evaluate.topk\[0\] = 0: must be >= 1"),
        ("train.common.valid_ks", [0, 20], r"valid_ks\[0\] = 0: must be >= 1"),
        ("train.e2e.normalize", ["txt"], r"train.e2e.normalize\[0\] = 'txt': expected one of 'text', 'image'"),
        ("train.e2e.normalize", ["audio"], r"normalize\[0\] = 'audio': expected one of 'text', 'image'"),
        ("train.e2e.trainer", {"epochs": -5}, r"train \(for demo/vbpr, end to end\).epochs = -5: must be >= 1"),
        # more top blocks than the encoder has: known from the demo encoder's `layers` before any stage runs
        ("finetune.n_trainable_layers", 3, r"finetune.n_trainable_layers = 3, but finetune.model \(raw/encoders/demo"),
        ("train.e2e.n_trainable_layers", 5, r"train.e2e.n_trainable_layers = 5, but train.e2e.model .* 2 blocks per"),
        ("train.pmmrec.text_trainable_layers", 4, r"train.pmmrec.text_trainable_layers = 4, but .*demo-xlmr\) has 2 "),
        ("seq.variants.full.overrides", {"image_trainable_layers": 3},
         r"image_trainable_layers \(with seq.variants.full.overrides\) = 3, but train.pmmrec.image_model"),
        # DVC itself fails on these with "'Value' object is not iterable"; `make check` runs this first
        ("pipeline.transfer_targets", "demo_b", r"transfer_targets = 'demo_b': expected a list \(of strings\)"),
    ],
)  # fmt: skip
def test_check_stage_names_the_key_and_what_is_allowed(key, value, message):
    params = load_params()
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ValueError, match=message):
        check.run(params, out=ROOT / ".pytest_cache" / "params.checked")


def test_models_never_import_stages():
    offenders = []
    for path in sorted((ROOT / "models").rglob("*.py")):
        text = path.read_text()
        if re.search(r"^\s*(from|import) stages\b", text, re.MULTILINE):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def stage_import_problems(stage_files: list[Path]) -> list[str]:
    """Each `stages/<name>.py` that imports another stage module (directly: through a library is fine)."""
    stage_set = set(stage_files)
    return [
        f"{path.relative_to(ROOT)} imports {other.relative_to(ROOT)}"
        for path in stage_files
        for other in sorted(code_deps.direct_imports(path) & stage_set)
    ]


def stage_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py")


def test_no_stage_imports_another_stage(tmp_path):
    assert stage_import_problems(stage_modules()) == []
    # the check sees an import of another stage, at module level or inside a function
    for line in ("from stages import features", "def f():\n    from stages.train import run"):
        planted = ROOT / "stages" / "_planted_stage.py"
        planted.write_text(line + "\n")
        try:
            code_deps.direct_imports.cache_clear()
            found = stage_import_problems(stage_modules())
        finally:
            planted.unlink()
            code_deps.direct_imports.cache_clear()
        assert len(found) == 1 and found[0].startswith("stages/_planted_stage.py imports stages/"), found


# one home for each job: the training protocol, the encoders' freezing, block finding, loading and hub errors,
# the graph propagation and the optimiser
ONE_HOME = ("epoch_loop", "state_on_cpu", "freeze_below_top", "transformer_blocks", "resolve_model", "hub_errors",
            "layer_mean", "sparse_product", "adam")  # fmt: skip


def source_files() -> list[str]:
    """The project's Python files outside tests/ (tracked, or new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [p for p in listed if not p.startswith("tests/") and (ROOT / p).is_file()]


def homes(pattern: str, paths: list[str]) -> list[str]:
    """`file:line` of every line matching `pattern`."""
    regex = re.compile(pattern)
    return [
        f"{rel}:{n}"
        for rel in paths
        for n, line in enumerate((ROOT / rel).read_text(encoding="utf-8").splitlines(), 1)
        if regex.search(line)
    ]


def test_one_home_for_the_training_loop_and_the_encoder_jobs():
    sources = source_files()
    assert len(homes(r"^\s*for epoch in\b", sources)) == 1, homes(r"^\s*for epoch in\b", sources)
    for name in ONE_HOME:
        assert len(homes(rf"^\s*def {name}\(", sources)) == 1, (name, homes(rf"^\s*def {name}\(", sources))
    # a second home would count: the same file listed twice gives two
    assert len(homes(r"^\s*def freeze_below_top\(", [*sources, "mmpipe/hf.py"])) == 2
    # every optimiser comes from models/core/optim.adam (which picks the class without calling it by name)
    assert homes(r"torch\.optim\.AdamW?\(", sources) == []


def file_names(tree: ast.AST) -> list[str]:
    """The string constants of a module that name a file (`name.ext`, `{slot}.ext`), in f-strings too."""
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and FILE_NAME.fullmatch(node.value)
    ]


FILE_NAME = re.compile(r"[\w{}./-]*\.(?:parquet|json|lmdb|pt|csv|npz|npy|md|yaml|checked|inter)")


# a source's own published files that share a name with one of ours (LATTICE's split: 5-core/train.json)
FOREIGN_FILES = {"5-core/train.json"}


def repeated_path_names(home: str, paths: list[str]) -> list[str]:
    """Every file name that `home` (mmpipe/paths.py) spells and another source file spells again."""
    names = {n for n in file_names(ast.parse((ROOT / home).read_text(encoding="utf-8"))) if not n.startswith(".")}
    return sorted(
        f"{rel}: {name}"
        for rel in paths
        if rel != home
        for name in file_names(ast.parse((ROOT / rel).read_text(encoding="utf-8")))
        if name not in FOREIGN_FILES and (name in names or any(name.endswith("/" + known) for known in names))
    )


def test_every_artefact_file_name_is_spelt_once():
    """The layout's file names live in mmpipe/paths.py; the code asks it (`ds.items`, `RunFiles.checkpoint`)."""
    sources = source_files()
    assert repeated_path_names("mmpipe/paths.py", sources) == []
    assert "model.pt" in file_names(ast.parse((ROOT / "mmpipe/paths.py").read_text()))
    # a second spelling is found, plain or in an f-string
    found = file_names(ast.parse('p = root / "model.pt"\nq = f"{root}/items.parquet"\nr = "x"'))
    assert found == ["model.pt", "/items.parquet"], found


def long_files(paths: list[str], limit: int = MAX_LINES) -> list[str]:
    out = []
    for rel in paths:
        n = len((ROOT / rel).read_text(encoding="utf-8").splitlines())
        if n > limit:
            out.append(f"{rel}: {n} lines")
    return out


def test_no_source_file_is_over_the_line_limit():
    sources = source_files()
    assert len(sources) > 50  # the project's modules, not an empty listing
    assert long_files(sources) == []
    assert long_files(sources, limit=100)  # the count is real: many files are over 100 lines


def test_family_files_run_from_the_root_and_read_its_params():
    """Each family's dvc.yaml interpolates the root params.yaml and runs its stages from the root, so its
    commands, paths and params keys mean the same as in the root dvc.yaml."""
    for path in dvc_files()[1:]:
        doc = yaml.safe_load(path.read_text())
        assert doc.get("vars") == ["../../params.yaml"], path
        for name, stage in doc["stages"].items():
            assert stage_body(stage).get("wdir") == "../..", f"{path}: {name} has no wdir: ../.."
    assert len(dvc_files()) == 5


def test_a_suite_that_runs_nothing_or_skips_under_no_skips_fails(tmp_path):
    """tests/conftest.py's session check: CI's marked suites cannot pass with zero tests run, and with
    --no-skips (as CI runs them) not with a skipped test either."""
    sample = "import pytest\n\ndef test_runs():\n    pass\n\n"
    sample += "@pytest.mark.skip(reason='a missing service')\ndef test_skipped():\n    pass\n"
    (tmp_path / "test_sample.py").write_text(sample)

    def pytest_rc(*args: str) -> tuple[int, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "test_sample.py", *args]
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout

    assert pytest_rc()[0] == 0  # one passed, one skipped: fine by default
    rc, out = pytest_rc("--no-skips")
    assert rc == 1 and "1 test(s) skipped under --no-skips" in out
    rc, out = pytest_rc("-k", "skipped")
    assert rc == 1 and "no test passed" in out
    rc, out = pytest_rc("-k", "nothing_matches")
    assert rc == 1 and "no test passed" in out
