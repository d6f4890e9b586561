"""One module per stage, each exposing ``run(spark, cfg, *, lake, run_id) -> dict`` (its summary).

No stage imports another: what several stages read (the current embeddings, the trained model)
lives in :mod:`longtail.ml.model`; the pipeline and the command line find stages through
:data:`STAGES` and :func:`load_stage`. Adding a stage: write ``stages/<name>.py`` with ``run()``,
add it here, add ``jobs/<name>.py`` (see ``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class StageInfo:
    """A stage: its command-line name, its module under ``longtail.stages`` and a one-line help."""

    name: str
    module: str
    help: str


# In pipeline order; `pipeline` itself last. spark-submit.sh asks this list (python -m longtail.stages).
STAGES: dict[str, StageInfo] = {
    s.name: s
    for s in (
        StageInfo(
            "generate-sample",
            "generate_sample",
            "write a deterministic synthetic catalogue and interaction log (CSV)",
        ),
        StageInfo("ingest", "ingest", "raw items + interactions -> items, interactions, quarantine"),
        StageInfo(
            "finetune",
            "finetune",
            "fine-tune the encoder on co-consumed item pairs (LoRA) -> models/encoder (optional)",
        ),
        StageInfo("encode", "encode", "BERT vectors of new or changed item texts -> item_embeddings (MERGE)"),
        StageInfo("train", "train", "ALS factors and the text-to-CF projection head"),
        StageInfo("recommend", "recommend", "fused top-K lists -> recommendations"),
        StageInfo("evaluate", "evaluate", "time-based hold-out, all variants, metrics + HTML report"),
        StageInfo(
            "maintain",
            "maintain",
            "lake upkeep: compaction, log checkpoints, VACUUM of unreferenced files and old model folders",
        ),
        StageInfo("pipeline", "pipeline", "all stages in order under one run id (the default)"),
    )
}


class StageNotBuiltError(RuntimeError):
    """The stage name is unknown, or its module is not part of this build."""


def load_stage(stage: str) -> ModuleType:
    """The module of ``stage`` (``longtail.stages.<module>``); a clear error if there is none.

    Example:
        >>> load_stage("train").run
        <function run at ...>
    """
    if stage not in STAGES:
        raise StageNotBuiltError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    name = f"longtail.stages.{STAGES[stage].module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise StageNotBuiltError(f"stage {stage!r} is not built yet in this version of longtail") from exc
        raise
