"""The package's layers hold: each imports only the layers below it, and no stage imports another.

core <- lake <- ml <- stages (and report beside them); cli and jobs on top. Checked on the source
(every import statement, including those inside functions), so a violation fails here before it
becomes a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
PKG = LIB / "longtail"
# layer -> the layers it may import (besides itself)
ALLOWED = {
    "core": set(),
    "lake": {"core"},
    "ml": {"core", "lake"},
    "report": {"core", "ml"},
    "stages": {"core", "lake", "ml", "report"},
}
STAGE_MODULES = {p.stem for p in (PKG / "stages").glob("*.py") if not p.stem.startswith("__")}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(LIB).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[str]:
    """Every longtail module ``path`` imports (``from longtail.x import y`` counts as x.y when y is a module)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("longtail")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("longtail"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (LIB / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    LIB / Path(*sub.split("."))
                ).is_dir()
                out.append(sub if is_module else node.module)
    return out


SOURCES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_a_module_imports_only_the_layers_below_it(path: Path) -> None:
    module = _module(path)
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in ALLOWED:
        return  # longtail/__init__, cli: the top
    layer = parts[1]
    for imported in _imports(path):
        target = imported.split(".")
        if len(target) < 2:
            continue
        assert target[1] == layer or target[1] in ALLOWED[layer], (
            f"{module} (layer {layer}) imports {imported}; {layer} may import {sorted(ALLOWED[layer])}"
        )


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_no_stage_module_imports_another_stage_module(stage: str) -> None:
    path = PKG / "stages" / f"{stage}.py"
    others = {f"longtail.stages.{s}" for s in STAGE_MODULES - {stage}}
    bad = [m for m in _imports(path) if any(m == o or m.startswith(o + ".") for o in others)]
    assert not bad, f"stage {stage} imports other stages: {bad}"


def test_the_layout_check_sees_a_stage_importing_another(tmp_path: Path) -> None:
    # The check itself must be able to fail: a module that imports a stage is reported as such.
    fake = tmp_path / "x.py"
    fake.write_text("from longtail.stages import train\nimport longtail.stages.encode\n")
    assert set(_imports(fake)) == {"longtail.stages.train", "longtail.stages.encode"}


def test_every_stage_has_a_job_that_imports_it_explicitly() -> None:
    from longtail.stages import STAGES

    jobs = Path(__file__).resolve().parents[1] / "jobs"
    for info in STAGES.values():
        job = jobs / f"{info.module}.py"
        assert job.exists(), f"no job for stage {info.name}"
        assert f"from longtail.stages import {info.module}" in job.read_text()
