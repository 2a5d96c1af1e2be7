"""`LoadReport`: what a load took from its source and what it left; the kinds of source."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

logger = logging.getLogger("kbert.checkpoints")

GOOGLE_CHECKPOINT = "google-checkpoint"
HF_FOLDER = "hf-folder"
KERAS_HUB_PRESET = "keras-hub-preset"
KBERT_RUN = "kbert-run"
KERAS_MODEL = "keras-model"
KIND_TITLES = {
    GOOGLE_CHECKPOINT: "Google TF1 checkpoint",
    HF_FOLDER: "Hugging Face BERT folder",
    KERAS_HUB_PRESET: "keras-hub preset",
    KBERT_RUN: "kbert run",
    KERAS_MODEL: "kbert .keras model",
}


@dataclasses.dataclass
class LoadReport:
    """What a load took from its source and what it left.

    Args:
        kind: `"google-checkpoint"`, `"hf-folder"`, `"keras-hub-preset"`, `"kbert-run"` or
            `"keras-model"`.
        source: the checkpoint prefix, folder or preset that was read.
        parts: the parts of the model that received weights ("encoder", "MLM head", "NSP head").
        loaded: names of the source variables copied into the model.
        missing: weights the model has but the source lacks; they keep their initial values.
        unused: source variables that match no weight of the model.
        ignored: optimizer state in the source, skipped on purpose.
        notes: anything else worth knowing (a position table cut to the model's length, ...).

    Examples:
    >>> LoadReport("google-checkpoint", "bert_model.ckpt", parts=["encoder"],
    ...            loaded=["bert/pooler/dense/kernel"], ignored=["global_step"]).describe()
    'Google TF1 checkpoint bert_model.ckpt: 1 variables loaded (encoder);
     1 optimizer variables ignored'
    """

    kind: str
    source: str
    parts: list[str] = dataclasses.field(default_factory=list)
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """One line for a log or a terminal: the source kind, what was loaded and what was not."""
        text = (
            f"{KIND_TITLES.get(self.kind, self.kind)} {self.source}: "
            f"{len(self.loaded)} variables loaded ({', '.join(self.parts) or 'nothing'})"
        )
        if self.missing:
            text += (
                f"; {len(self.missing)} not in the source, left as initialised "
                f"({few(self.missing)})"
            )
        if self.unused:
            text += f"; {len(self.unused)} unused ({few(self.unused)})"
        if self.ignored:
            text += f"; {len(self.ignored)} optimizer variables ignored"
        for note in self.notes:
            text += f"; {note}"
        return text


def few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def log_report(report: LoadReport) -> None:
    logger.info("%s", report.describe())
    if report.missing:
        missing = ", ".join(report.missing)
        logger.warning("%s: not in the source, left as initialised: %s", report.source, missing)
    if report.unused:
        logger.warning("%s: source variables not used: %s", report.source, ", ".join(report.unused))


def assign_all(report: LoadReport, assignments: list[tuple[str, Any, np.ndarray]]) -> LoadReport:
    """Assign every checked (source name, variable, value), record them as loaded, log the report.

    Called once every value is known to fit, so a load assigns all of its weights or none.
    """
    for name, variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
        report.loaded.append(name)
    log_report(report)
    return report
