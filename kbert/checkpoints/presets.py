"""keras-hub presets and Hugging Face BERT folders: `init_encoder` loads their encoder (through
keras-hub's `BertBackbone.from_preset`) and whichever pre-training heads they hold."""

from __future__ import annotations

import keras
import keras_hub
import numpy as np

# keras-hub's own preset file access: it reads local, gs://, hf:// and Kaggle presets alike.
from keras_hub.src.utils import preset_utils

from kbert.checkpoints.detection import detect_source
from kbert.checkpoints.google import google_slots
from kbert.checkpoints.hf_layout import hf_is_transposed, hf_spellings
from kbert.checkpoints.parts import BACKBONE_FIELDS, check_backbone_fits, encoder_of, head_of
from kbert.checkpoints.report import (
    GOOGLE_CHECKPOINT,
    HF_FOLDER,
    KERAS_HUB_PRESET,
    LoadReport,
    assign_all,
)
from kbert.errors import InputError, MissingFileError


def init_encoder(model: keras.Model, source: str) -> LoadReport:
    """Initialise the encoder from a keras-hub preset or a Hugging Face BERT folder.

    keras-hub's `BertBackbone.from_preset` reads the source (a Hugging Face folder needs
    `config.json` + `model.safetensors`); its weights are then copied into the model's encoder.
    Heads the source holds are loaded too: a Hugging Face `BertForPreTraining` /
    `BertForMaskedLM` checkpoint's `cls.predictions.*` and `cls.seq_relationship.*`, a keras-hub
    `BertMaskedLM` preset's MLM head; heads the source lacks start fresh (and are reported). A
    source position table longer than the model's is cut to its rows. Nothing is assigned
    unless every weight fits.

    Args:
        model: a kbert pre-training model (or a keras-hub BertBackbone).
        source: a keras-hub preset directory, name or handle, or a Hugging Face BERT folder.

    Returns:
        A `LoadReport` (logged as one line).

    Raises:
        ValueError: naming the config field whose value in the source does not fit the model.

    Examples:
    >>> import kbert, keras_hub
    >>> backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=1, num_heads=2,
    ...                                          hidden_dim=32, intermediate_dim=64)
    >>> backbone.save_to_preset("preset")
    >>> config = kbert.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                           num_attention_heads=2, intermediate_size=64)
    >>> model = kbert.build_pretraining_model(config, 16, 3)
    >>> kbert.init_encoder(model, "preset").parts
    ['encoder']
    """
    kind, location = detect_source(source)
    if kind == GOOGLE_CHECKPOINT:
        raise InputError(f"{source}: a Google TF1 checkpoint; load it with load_google_checkpoint")
    encoder = encoder_of(model)
    config = preset_utils.load_json(location, preset_utils.CONFIG_FILE)
    if kind == HF_FOLDER:
        source_fields = {key: config.get(field) for key, field in BACKBONE_FIELDS.items()}
        source_fields["num_segments"] = config.get("type_vocab_size", 2)
    else:
        source_fields = {key: config["config"].get(key) for key in BACKBONE_FIELDS}
    check_backbone_fits(location, source_fields, encoder)

    report = LoadReport(kind, location)
    heads: dict[str, list[tuple[str, keras.Variable, np.ndarray]]] = {}
    task = _masked_lm_task(location) if kind == KERAS_HUB_PRESET else None
    if task is not None:
        loaded = task.backbone
        heads = _keras_hub_heads(model, task)
        report.notes.append(
            "keras-hub's MLM head was trained with exact GELU and LayerNorm epsilon 1e-5; "
            "kbert's uses Google's tanh GELU and 1e-12"
        )
    else:
        kwargs = {}
        if kind == HF_FOLDER:
            heads = _hf_heads(model, location)
            # keras-hub's HF converter ignores type_vocab_size; without it any value but 2 fails.
            kwargs["num_segments"] = source_fields["num_segments"]
        loaded = keras_hub.models.BertBackbone.from_preset(location, **kwargs)
    sources = {variable.path: variable for variable in loaded.weights}
    assignments = []
    for variable in encoder.weights:
        value = np.asarray(sources[variable.path].numpy())
        rows = variable.shape[0]
        if variable is encoder.position_embedding.position_embeddings and value.shape[0] > rows:
            report.notes.append(
                f"position table cut from {value.shape[0]} to the model's {rows} rows"
            )
            value = value[:rows]
        assignments.append((variable.path, variable, value))
    report.parts.append("encoder")

    head_variables: dict[str, list[keras.Variable]] = {}
    for slot in google_slots(model):
        if slot.part != "encoder":
            head_variables.setdefault(slot.part, []).append(slot.variable)
    for part, variables in head_variables.items():
        if part not in heads:
            report.missing.extend(variable.path for variable in variables)
            continue
        for name, variable, value in heads[part]:
            if tuple(value.shape) != tuple(variable.shape):
                raise InputError(
                    f"{location}: {name} has shape {list(value.shape)} in kbert's layout, but the "
                    f"model's {part} weight {variable.path} has {list(variable.shape)}"
                )
        assignments.extend(heads[part])
        report.parts.append(part)

    return assign_all(report, assignments)


def _masked_lm_task(preset: str) -> keras_hub.models.BertMaskedLM | None:
    """The keras-hub BertMaskedLM saved in `preset` (task.json), if it holds one."""
    if not preset_utils.check_file_exists(preset, preset_utils.TASK_CONFIG_FILE):
        return None
    task_config = preset_utils.load_json(preset, preset_utils.TASK_CONFIG_FILE)
    if task_config.get("class_name") != "BertMaskedLM":
        return None
    return keras_hub.models.BertMaskedLM.from_preset(preset, preprocessor=None)


def _keras_hub_heads(
    model: keras.Model, task: keras_hub.models.BertMaskedLM
) -> dict[str, list[tuple[str, keras.Variable, np.ndarray]]]:
    """The MLM head of a keras-hub BertMaskedLM as (name, kbert variable, value)."""
    mlm = head_of(model, "mlm_head")
    if mlm is None:
        return {}
    source = task.masked_lm_head
    pairs = (
        (source._intermediate_dense.kernel, mlm._intermediate_dense.kernel),
        (source._intermediate_dense.bias, mlm._intermediate_dense.bias),
        (source._intermediate_layer_norm.gamma, mlm._intermediate_layer_norm.gamma),
        (source._intermediate_layer_norm.beta, mlm._intermediate_layer_norm.beta),
        (source._bias, mlm._bias),
    )
    return {"MLM head": [(s.path, ours, np.asarray(s.numpy())) for s, ours in pairs]}


def _hf_heads(
    model: keras.Model, preset: str
) -> dict[str, list[tuple[str, keras.Variable, np.ndarray]]]:
    """The heads a Hugging Face checkpoint holds completely, as (name, kbert variable, value)."""
    tensors = _hf_head_tensors(preset)
    heads: dict[str, list[tuple[str, keras.Variable, np.ndarray]]] = {}
    incomplete = set()
    for slot in google_slots(model):
        if slot.part == "encoder" or slot.part in incomplete:
            continue
        name = next((n for n in hf_spellings(slot.name) if n in tensors), None)
        if name is None:
            incomplete.add(slot.part)
            heads.pop(slot.part, None)
            continue
        # HF's Linear weights are [out, in], Keras kernels [in, out]; the NSP weight is [2, H].
        transpose = hf_is_transposed(slot.name) or slot.transpose
        value = tensors[name].T if transpose else tensors[name]
        heads.setdefault(slot.part, []).append((name, slot.variable, value))
    return heads


def _hf_head_tensors(preset: str) -> dict[str, np.ndarray]:
    """The `cls.*` tensors of a Hugging Face checkpoint (single or sharded safetensors)."""
    from safetensors import safe_open

    if preset_utils.check_file_exists(preset, preset_utils.SAFETENSOR_CONFIG_FILE):
        index = preset_utils.load_json(preset, preset_utils.SAFETENSOR_CONFIG_FILE)
        weight_map = index["weight_map"]
        files = sorted({file for name, file in weight_map.items() if name.startswith("cls.")})
    elif preset_utils.check_file_exists(preset, preset_utils.SAFETENSOR_FILE):
        files = [preset_utils.SAFETENSOR_FILE]
    else:
        raise MissingFileError(
            f"{preset}: no {preset_utils.SAFETENSOR_FILE}; keras-hub reads Hugging Face weights "
            "from safetensors only (re-save with save_pretrained(..., safe_serialization=True))"
        )
    tensors = {}
    for file in files:
        with safe_open(preset_utils.get_file(preset, file), framework="np") as f:
            for name in f.keys():
                if name.startswith("cls."):
                    tensors[name] = f.get_tensor(name)
    return tensors
