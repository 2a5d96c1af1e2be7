"""`PretrainConfig`: every setting of a pre-training run, validated, saved as `run_config.json`.

A setting is added in one place, a field here: `kbert.train.pretrain` takes it as a keyword
argument, `kbert train` generates its flag from the field (type, default, help and choices in the
field's metadata), and the run directory records it. Fields marked `resume_invariant` fix the data
order and the schedule: a run resumed with another value is refused.

This module imports no TensorFlow, so `kbert train --help` answers at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kbert.errors import InputError, SettingError
from kbert.io import check_positive_int, read_json, write_json

if TYPE_CHECKING:
    from kbert.config import BertConfig

# kbert.distribute.STRATEGY_KINDS, repeated so that parsing flags needs no TensorFlow import.
STRATEGIES = ("auto", "cpu", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("adamw", "lamb", "adamw_bias_corrected", "sgd")
MIXED_PRECISION = ("auto", "none", "bf16", "fp16")
DEFAULT_MAX_CHECKPOINT_INTERVAL = 1000
# Below this, the default interval does not divide steps: the last interval is shorter instead.
DEFAULT_MIN_CHECKPOINT_INTERVAL = 100
# log_interval's default: about this many history rows per run, but a row at least every
# DEFAULT_MAX_LOG_INTERVAL updates.
DEFAULT_LOG_POINTS = 100
DEFAULT_MAX_LOG_INTERVAL = 100
# Field groups, in the order `kbert train --help` shows them.
GROUPS = ("model and data", "optimisation", "execution", "checkpoints and logs")


def parse_jit_compile(value: str) -> bool | str:
    """`jit_compile` from text: "auto", "true"/"on" or "false"/"off" (any case).

    Args:
        value: the text, e.g. a flag's value.

    Examples:
    >>> parse_jit_compile("True"), parse_jit_compile("auto")
    (True, 'auto')
    """
    choices = {"auto": "auto", "true": True, "on": True, "false": False, "off": False}
    if value.lower() not in choices:
        raise SettingError(f"expected auto, true or false, got {value!r}")
    return choices[value.lower()]


def _setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str,
    parse: Callable[[str], Any] = str,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    resume_invariant: bool = False,
) -> Any:
    """A dataclass field whose metadata says how to explain, parse and check it."""
    metadata = dict(
        help=help,
        group=group,
        parse=parse,
        choices=choices,
        metavar=metavar,
        resume_invariant=resume_invariant,
    )
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class PretrainConfig:
    """The settings of a pre-training run (`kbert.train.pretrain`, `kbert train`).

    Each field's help text is in its metadata (`PretrainConfig.help("steps")`); `kbert train
    --help` shows them all. Construction validates the values; `with_defaults()` fills in the
    defaults derived from other fields (warmup steps, checkpoint interval).

    Examples:
    >>> config = PretrainConfig("tiny", "data/", "run/", steps=200, batch_size=32)
    >>> config.with_defaults().warmup_steps, config.with_defaults().checkpoint_interval
    (20, 200)
    >>> PretrainConfig.help("warmup_steps")
    'linear warmup updates before the linear decay to 0 (default: 10 % of steps)'
    >>> PretrainConfig("tiny", "data/", "run/", steps=10, checkpoint_interval=30)
    Traceback (most recent call last):
    ...
    kbert.errors.SettingError: checkpoint_interval (30) must be at most steps (10)
    """

    config: BertConfig | str = _setting(
        help="preset (tiny, mini, small, medium, base, large; vocab size from the data's "
        "metadata), a bert_config.json path, or (in Python) a BertConfig",
        group="model and data",
    )
    train_files: str | Sequence[str] = _setting(
        help="training TFRecords: glob(s), comma-separated, or a directory (gs:// works)",
        group="model and data",
        resume_invariant=True,
    )
    output_dir: str = _setting(
        help="run directory: checkpoints, backup, history.csv, TensorBoard logs, model; "
        "running again with the same settings resumes the run found there",
        group="model and data",
    )
    steps: int = _setting(
        help="optimizer updates to train",
        group="optimisation",
        parse=int,
        resume_invariant=True,
    )
    batch_size: int = _setting(
        256,
        help="global batch size, over all replicas (with gradient accumulation: per batch)",
        group="optimisation",
        parse=int,
        resume_invariant=True,
    )
    eval_files: str | Sequence[str] | None = _setting(
        None,
        help="held-out TFRecords evaluated at the end (and every eval_interval steps)",
        group="model and data",
    )
    learning_rate: float = _setting(
        1e-4,
        help="peak learning rate",
        group="optimisation",
        parse=float,
        resume_invariant=True,
    )
    warmup_steps: int | None = _setting(
        None,
        help="linear warmup updates before the linear decay to 0 (default: 10 % of steps)",
        group="optimisation",
        parse=int,
        resume_invariant=True,
    )
    weight_decay: float = _setting(
        0.01,
        help="weight decay rate, added to the update (LayerNorm and bias variables excluded)",
        group="optimisation",
        parse=float,
        resume_invariant=True,
    )
    clip_norm: float = _setting(
        1.0,
        help="clip the global gradient (summed over every replica) to this norm; 0: no clipping",
        group="optimisation",
        parse=float,
        resume_invariant=True,
    )
    optimizer: str = _setting(
        "adamw",
        help="adamw: google-research/bert's AdamWeightDecayOptimizer (Adam without bias "
        "correction); lamb: LAMB (You et al. 2019; batches of thousands); adamw_bias_corrected: "
        "Keras' AdamW; sgd: plain SGD on the same schedule (no momentum, clipping or decay: a "
        "baseline whose updates are easy to check)",
        group="optimisation",
        choices=OPTIMIZERS,
        resume_invariant=True,
    )
    strategy: str = _setting(
        "auto",
        help="auto (multi_worker if TF_CONFIG names a cluster, else TPU if attached, else "
        "Mirrored over >1 GPU, else one device), cpu, mirrored, multi_worker (every worker runs "
        "the same command with its own TF_CONFIG; the chief writes output_dir, the others "
        "output_dir/workers/<task>-<id>), tpu. Under KERAS_BACKEND=jax: auto (data parallel over "
        "every JAX device), tpu (over the TPU chips), cpu (one device)",
        group="execution",
        choices=STRATEGIES,
    )
    job_addresses: str | None = _setting(
        None,
        help="JAX run of several processes (hosts): host:port of process 0, which serves the "
        "coordinator (or every process's, comma-separated); the same on every process "
        "(default: KERAS_DISTRIBUTION_JOB_ADDRESSES). Process 0 writes output_dir, the others "
        "keep their checkpoints and backup in output_dir/workers/process-<id>",
        group="execution",
    )
    num_processes: int | None = _setting(
        None,
        help="JAX run of several processes: how many (default: KERAS_DISTRIBUTION_NUM_PROCESSES; "
        "on a Cloud TPU VM slice this alone is enough, JAX finds the address and the id)",
        group="execution",
        parse=int,
    )
    process_id: int | None = _setting(
        None,
        help="JAX run of several processes: this one's id, 0 to num_processes - 1 (default: "
        "KERAS_DISTRIBUTION_PROCESS_ID)",
        group="execution",
        parse=int,
    )
    tpu: str = _setting(
        "local",
        help="the TPU for strategy tpu/auto: 'local' (Colab / Cloud TPU VM), a name or a "
        "grpc:// address",
        group="execution",
    )
    steps_per_execution: int = _setting(
        1,
        help="batches per compiled call: Keras loops over the iterator inside one tf.function "
        "(a tf.while_loop), which saves the per-step Python dispatch — the main lever on TPUs "
        "(e.g. 100), about 1 ms a step on a CPU; under KERAS_BACKEND=jax the loop is Python's",
        group="execution",
        parse=int,
    )
    jit_compile: bool | str = _setting(
        "auto",
        help="XLA compilation: true, false or auto (the fastest for the device, logged with "
        "mixed_precision: on for one GPU, off on CPU, where oneDNN is as fast, and under "
        "tf.distribute strategies; always on under KERAS_BACKEND=jax)",
        group="execution",
        parse=parse_jit_compile,
        metavar="{auto,true,false}",
    )
    mixed_precision: str = _setting(
        "auto",
        help="auto (bf16 on TPUs, GPUs of compute capability >= 8.0 and CPUs with bf16 matmul "
        "instructions (avx512_bf16, amx_bf16) where a quick matmul timing shows it >= 1.3x fp32; "
        "else none; the environment variable KBERT_MIXED_PRECISION overrides auto), none, bf16, "
        "fp16 (with loss scaling, for GPUs)",
        group="execution",
        choices=MIXED_PRECISION,
        resume_invariant=True,
    )
    gradient_accumulation_steps: int = _setting(
        1,
        help="batches averaged per update (effective batch = batch_size x this)",
        group="optimisation",
        parse=int,
        resume_invariant=True,
    )
    checkpoint_interval: int | None = _setting(
        None,
        help="updates between weight checkpoints and resume backups (history rows: log_interval); "
        "when it does not divide steps the last interval is shorter (default: the largest "
        f"divisor of steps from {DEFAULT_MIN_CHECKPOINT_INTERVAL} to "
        f"{DEFAULT_MAX_CHECKPOINT_INTERVAL}, else {DEFAULT_MAX_CHECKPOINT_INTERVAL})",
        group="checkpoints and logs",
        parse=int,
        resume_invariant=True,
    )
    keep_checkpoints: int = _setting(
        3,
        help="weight checkpoints kept in output_dir/checkpoints",
        group="checkpoints and logs",
        parse=int,
    )
    eval_interval: int | None = _setting(
        None,
        help="updates between evaluations on eval_files during training, logged as val_* in the "
        "history; a multiple of checkpoint_interval (default: only at the end)",
        group="checkpoints and logs",
        parse=int,
    )
    seed: int = _setting(
        0,
        help="seeds the initial weights, the data order and dynamic masks",
        group="optimisation",
        parse=int,
        resume_invariant=True,
    )
    dropout: float | None = _setting(
        None,
        help="overrides the config's dropout rates (default: the config's)",
        group="model and data",
        parse=float,
    )
    max_predictions_per_seq: int | None = _setting(
        None,
        help="masked positions per sequence for records without masks (default: the metadata's)",
        group="model and data",
        parse=int,
        resume_invariant=True,
    )
    dynamic_masking_vocab: str | None = _setting(
        None,
        help="draw masks in the input pipeline with this vocab.txt, new every epoch (needed for "
        "records written without masks)",
        group="model and data",
        metavar="VOCAB_TXT",
        resume_invariant=True,
    )
    eval_batch_size: int | None = _setting(
        None,
        help="global batch size of the evaluation (default: batch_size)",
        group="checkpoints and logs",
        parse=int,
    )
    log_interval: int | None = _setting(
        None,
        help="updates between history.csv rows and TensorBoard points, each the mean over its "
        "updates (default: about 100 points per run, at most every 100 updates)",
        group="checkpoints and logs",
        parse=int,
    )
    skip_corrupt_records: bool = _setting(
        False,
        help="skip what cannot be read of damaged (truncated or corrupted) shards and count the "
        "skipped records in the logs and history.csv, instead of stopping",
        group="model and data",
        parse=bool,
    )
    init_from: str | None = _setting(
        None,
        help="start from pre-trained weights: a Google TF1 checkpoint (bert_model.ckpt), a "
        "keras-hub preset, a Hugging Face BERT folder, a kbert run directory or .keras file "
        "(kbert.checkpoints.init_from); ignored when resuming",
        group="model and data",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first setting that is out of range."""
        for name in (
            "steps",
            "batch_size",
            "steps_per_execution",
            "gradient_accumulation_steps",
            "keep_checkpoints",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("optimizer", "mixed_precision", "strategy"):
            choices = self.metadata(name)["choices"]
            if getattr(self, name) not in choices:
                raise SettingError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        for name in ("clip_norm", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise SettingError(f"{name} must be >= 0, got {getattr(self, name)}")
        warmup_steps, checkpoint_interval = self._derived()
        if not 0 <= warmup_steps <= self.steps:
            raise SettingError(
                f"warmup_steps must be between 0 and steps ({self.steps}), got {warmup_steps}"
            )
        check_positive_int("checkpoint_interval", checkpoint_interval)
        if checkpoint_interval > self.steps:
            raise SettingError(
                f"checkpoint_interval ({checkpoint_interval}) must be at most steps ({self.steps})"
            )
        for name in ("max_predictions_per_seq", "eval_batch_size", "log_interval", "num_processes"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.eval_interval is not None:
            check_positive_int("eval_interval", self.eval_interval)
            if not self.eval_files:
                raise SettingError("eval_interval needs eval_files")
            if self.eval_interval % checkpoint_interval:
                raise SettingError(
                    f"eval_interval ({self.eval_interval}) must be a multiple of "
                    f"checkpoint_interval ({checkpoint_interval})"
                )

    def _derived(self) -> tuple[int, int]:
        """warmup_steps and checkpoint_interval, their defaults computed from steps."""
        warmup_steps = self.steps // 10 if self.warmup_steps is None else self.warmup_steps
        checkpoint_interval = self.checkpoint_interval
        if checkpoint_interval is None:
            limit = min(self.steps, DEFAULT_MAX_CHECKPOINT_INTERVAL)
            checkpoint_interval = max(d for d in range(1, limit + 1) if self.steps % d == 0)
            if checkpoint_interval < DEFAULT_MIN_CHECKPOINT_INTERVAL:
                checkpoint_interval = limit  # e.g. a prime number of steps: a shorter last interval
        return warmup_steps, checkpoint_interval

    def with_defaults(self) -> PretrainConfig:
        """A copy with the derived defaults filled in (`warmup_steps`, `checkpoint_interval`,
        `log_interval`)."""
        warmup_steps, checkpoint_interval = self._derived()
        log_interval = self.log_interval
        if log_interval is None:
            log_interval = max(1, min(DEFAULT_MAX_LOG_INTERVAL, self.steps // DEFAULT_LOG_POINTS))
        return dataclasses.replace(
            self,
            warmup_steps=warmup_steps,
            checkpoint_interval=checkpoint_interval,
            log_interval=log_interval,
        )

    @classmethod
    def metadata(cls, name: str) -> dict[str, Any]:
        """The metadata of field `name`: help, group, parse, choices, metavar, resume_invariant."""
        return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field `name`."""
        return cls.metadata(name)["help"]

    @classmethod
    def resume_invariants(cls) -> tuple[str, ...]:
        """The fields that may not change when a run is resumed (they fix data order, schedule)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["resume_invariant"])

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (a BertConfig as its dict, sequences as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """The config of `to_dict`'s output (a `config` dict becomes a BertConfig)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingError(f"unknown PretrainConfig field(s): {', '.join(unknown)}")
        data = dict(data)
        if isinstance(data.get("config"), dict):
            from kbert.config import BertConfig

            data["config"] = BertConfig.from_dict(data["config"])
        return cls(**data)

    def to_json(self, path: str, run: dict[str, Any] | None = None) -> str:
        """Write the fields to `path` (`run_config.json`) atomically, with facts of the run
        (replicas, sequence length, ...) under the key "run"; returns `path`."""
        return write_json(path, {**self.to_dict(), **({"run": run} if run else {})})

    @classmethod
    def from_json(cls, path: str) -> PretrainConfig:
        """Read a `run_config.json` written by `to_json` (its "run" facts are left out).

        Args:
            path: the file (any `tf.io.gfile` path).

        Examples:
        >>> _ = PretrainConfig("tiny", "data/", "run/", steps=8).to_json("run_config.json")
        >>> PretrainConfig.from_json("run_config.json").steps
        8
        """
        data = read_json(path, "run configuration")
        data.pop("run", None)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: {e}") from None
