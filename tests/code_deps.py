"""The code each stage runs, derived from its imports: what dvc.yaml must list as the stage's code deps.

A stage module's closure is every project file its imports reach (module-level and function-level
imports alike, and the packages' `__init__.py` on the way when they hold code, not just a docstring).
The packages in UNITS count as one dependency each: a stage that imports any of their files depends on
the whole folder. The `check` stage imports every model file, so it depends on the whole `models/`
folder; the train and evaluate stages run the model's own file, which the registry imports by name, and
the shared model core (`models/core`). A stage module itself, and any other file, is listed on its own.

`python -m tests.code_deps` prints the expected code deps of every stage module, for editing dvc.yaml.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmpipe", "models", "stages")


def module_file(module: str) -> Path | None:
    """The file of a project module (`stages.sources.http` -> stages/sources/http.py), or None."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def direct_imports(path: Path) -> frozenset[Path]:
    """Project files one file imports (any depth in the file: module level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                file = module_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    found.discard(path)
    return frozenset(found)


def has_code(path: Path) -> bool:
    """False for an empty module or one holding only its docstring (editing it changes nothing that runs)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return bool(body)


def closure(*modules: str) -> set[Path]:
    """Every project file reached from the given modules' imports, the modules included."""
    todo = [f for f in (module_file(m) for m in modules) if f is not None]
    seen: set[Path] = set()
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        todo.extend(direct_imports(file) - seen)
        # a module inside a package also runs the package's __init__
        for parent in file.relative_to(ROOT).parents:
            init = ROOT / parent / "__init__.py"
            if parent.parts and init.is_file() and init not in seen:
                todo.append(init)
    return {f for f in seen if f.name != "__init__.py" or has_code(f)}


# Packages a stage depends on as a whole: the shared core (mmpipe, models/core) and the stages' and
# models' helper packages. Listing their files one by one made each lock about twice as long and every
# `dvc repro` (no-op included) hash, lock and compare each file; the price is that an edit of one of
# their files re-runs every stage that imports any file of the package. Most of those stages import
# most of the package anyway, and a re-run stage that writes the same bytes re-runs nothing downstream.
UNITS = ("mmpipe", "models/core", "models/seq", "stages/common", "stages/encoders", "stages/sources")


def compress(files: set[Path]) -> list[str]:
    """dvc.yaml deps for a set of files: the unit folder holding a file, or a folder when all its .py
    files are in the set, else the file."""
    out: set[str] = set()
    for file in files:
        rel = str(file.relative_to(ROOT))
        unit = next((u for u in UNITS if rel.startswith(u + "/")), None)
        if unit is not None:
            out.add(unit)
            continue
        folder = file.parent
        kept = file
        while folder != ROOT and all(
            p in files for p in folder.rglob("*.py") if p.name != "__init__.py" or has_code(p)
        ):
            kept, folder = folder, folder.parent
        out.add(str(kept.relative_to(ROOT)))
    # a file inside a listed folder is covered by the folder
    return sorted(p for p in out if not any(p != q and p.startswith(q + "/") for q in out))


MODEL_STAGES = ("train", "evaluate")
SEQ_STAGES = ("pretrain", "transfer")  # run one sequential model, named by `--model` (models/<model>.py)
MODEL_CORE = ROOT / "models" / "core"
ALL_MODELS_STAGES = ("check",)  # imports every listed model file to validate its params block


def stage_code(stage_module: str, model: str | None = None) -> list[str]:
    """The code deps of `python -m stages.<stage_module>`; for train/evaluate/pretrain/transfer, of running
    `model` there."""
    files = closure(f"stages.{stage_module}")
    if stage_module in ALL_MODELS_STAGES:  # the whole models/ folder: a new model file re-runs it, no dvc.yaml edit
        model_files = [p for p in (ROOT / "models").rglob("*.py") if p.name != "__init__.py" or has_code(p)]
        files |= set(model_files) | closure(*(_module_name(p) for p in model_files))
    if stage_module in MODEL_STAGES:
        core = sorted(MODEL_CORE.rglob("*.py"))
        files |= closure(*(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in core))
        if model:
            files |= closure(f"models.{model}")
    if stage_module in SEQ_STAGES and model:
        files |= closure(f"models.{model}")
    return compress(files)


if __name__ == "__main__":
    stage_names = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
    for name in sys.argv[1:] or stage_names:
        print(f"{name}:")
        for dep in stage_code(name):
            print(f"  - {dep}")
        if name in MODEL_STAGES:
            print("  - models/${item.model}.py")
