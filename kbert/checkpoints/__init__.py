"""Checkpoint interop, one module per source (as keras-hub keeps its converters):

- `google`: Google's TF1 BERT checkpoints, loaded and saved in Google's variable layout
  (`load_google_checkpoint`, `save_google_checkpoint`).
- `presets`: keras-hub presets and Hugging Face BERT folders (`init_encoder`).
- `kbert_model`: kbert's own run directories and `.keras` files (`load_kbert_model`).
- `detection`: which kind a source is (`detect_source`) and its config (`read_source_config`).
- `loading`: `init_from`, the one call behind `kbert train --init-from`.
- `encoder_preset`: the encoder as a keras-hub preset to fine-tune (`save_encoder_preset`).
- `hf_layout`: Hugging Face's tensor names and layouts, derived from Google's (read by `presets`,
  written by `kbert.huggingface`).
- `report`, `parts`: what every converter shares (`LoadReport`; the model parts a source fills).
"""

from kbert.checkpoints.detection import detect_source, read_source_config
from kbert.checkpoints.encoder_preset import save_encoder_preset
from kbert.checkpoints.google import (
    load_google_checkpoint,
    resolve_google_checkpoint,
    save_google_checkpoint,
)
from kbert.checkpoints.kbert_model import load_kbert_model
from kbert.checkpoints.loading import init_from
from kbert.checkpoints.parts import BERT_CONFIG_FILENAME
from kbert.checkpoints.presets import init_encoder
from kbert.checkpoints.report import (
    GOOGLE_CHECKPOINT,
    HF_FOLDER,
    KBERT_RUN,
    KERAS_HUB_PRESET,
    KERAS_MODEL,
    LoadReport,
)
from kbert.vocabulary import VOCAB_FILENAME

__all__ = [
    "BERT_CONFIG_FILENAME",
    "GOOGLE_CHECKPOINT",
    "HF_FOLDER",
    "KBERT_RUN",
    "KERAS_HUB_PRESET",
    "KERAS_MODEL",
    "LoadReport",
    "VOCAB_FILENAME",
    "detect_source",
    "init_encoder",
    "init_from",
    "load_google_checkpoint",
    "load_kbert_model",
    "read_source_config",
    "resolve_google_checkpoint",
    "save_encoder_preset",
    "save_google_checkpoint",
]
