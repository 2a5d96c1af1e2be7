"""Training-step throughput, MFU, peak memory and op profile: kbert vs. a keras-hub composition.

Each variant runs in its own process (so peak RSS is its own) on the `mini` shape (4 layers,
hidden 256; seq 128, 20 predictions, vocab 30522, batch 32) or, with `--shape base`, on BERT-base
(12 layers, hidden 768; batch 16). kbert runs with its defaults (mixed_precision and
jit_compile "auto", resolved for this machine as `kbert train` does), XLA off/on,
`steps_per_execution` 1 and 32 (at least 3 executions timed: one would be a single sample), fp32
and bf16 (mixed precision), and on Keras' JAX backend beside the keras-hub composition on JAX.
Prints the CPU, sequences/s, peak RSS, the ratio of every variant to the plain keras-hub
baseline, and MFU: the model's training FLOP/s (analytic count, 3x the forward matmuls) over the
CPU's peak FLOP/s, measured in the same run with a large matmul of the variant's compute dtype.

    python benchmarks/train_step.py [--steps 32] [--warmup 3] [--quick | --suspects] [--rounds 1]
        [--shape mini|base]
    python benchmarks/train_step.py --profile [--steps 8] [--profile-variants kbert,kbert_xla]

`--quick` runs only the baseline, kbert's defaults, kbert fp32 with XLA off and on, and kbert bf16
with XLA off (about half the time).
`--suspects` runs ablations of kbert instead, each a cost to measure: whole-set loss trackers off,
accuracy as logit[label] >= max(logits), dropout 0, no gradient clipping, SGD instead of AdamW
(XLA off and on), Keras' AdamW instead of kbert's (its update not XLA-compiled), LAMB, and in bf16
keras-hub's MaskedLMHead (float32 projection) instead of kbert's TiedMaskedLMHead, and (fp32,
bf16) TensorFlow's cross-entropy kernel instead of kbert's XLA-compiled one; the table adds
CPU ms per step, steadier than seq/s on a shared machine.
`--rounds R` runs the variant list R times, interleaved, and reports each variant's median (the
machine may be shared: only ratios from one run mean anything). `--profile` traces kbert's
training steps with TensorFlow's profiler and prints where the time goes, by op group
(see `step_profile.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

SEQ, PREDICTIONS, VOCAB = 128, 20, 30522


@dataclasses.dataclass(frozen=True)
class Shape:
    """An encoder shape to time: a kbert preset's size and the batch it runs at."""

    preset: str
    layers: int
    hidden: int
    heads: int
    batch: int


# mini: where per-element work weighs most against the matmuls; base: BERT-base, what users train.
SHAPES = {"mini": Shape("mini", 4, 256, 4, 32), "base": Shape("base", 12, 768, 12, 16)}
# label: (variant, TF_ENABLE_ONEDNN_OPTS for the process; None = TensorFlow's own default)
VARIANTS = {
    "keras-hub composition, Keras defaults": ("baseline", None),
    "keras-hub composition, oneDNN on": ("baseline", "1"),
    "kbert, defaults (auto settings)": ("kbert_auto", None),
    "kbert, XLA off": ("kbert", None),
    "kbert, XLA on": ("kbert_xla", None),
    "kbert, XLA off, steps_per_execution 32": ("kbert_spe32", None),
    "kbert, XLA on, steps_per_execution 32": ("kbert_xla_spe32", None),
    "kbert, XLA off, bf16": ("kbert_bf16", None),
    "kbert, XLA on, bf16": ("kbert_xla_bf16", None),
    "keras-hub composition, JAX backend": ("baseline_jax", None),
    "kbert, JAX backend (auto settings)": ("kbert_jax", None),
}
QUICK_VARIANTS = (
    "keras-hub composition, Keras defaults",
    "kbert, defaults (auto settings)",
    "kbert, XLA off",
    "kbert, XLA off, bf16",
    "kbert, XLA on",
)
# A steps_per_execution variant times at least this many executions: one is a single sample.
MIN_TIMED_EXECUTIONS = 3
SUSPECT_VARIANTS = {
    "keras-hub composition, Keras defaults": ("baseline", None),
    "kbert, XLA off": ("kbert", None),
    "kbert, XLA off, no whole-set loss trackers": ("kbert_notrackers", None),
    "kbert, XLA off, accuracy as logit[label] >= max": ("kbert_maxacc", None),
    "kbert, XLA off, dropout 0": ("kbert_dropout0", None),
    "kbert, XLA off, no clipping": ("kbert_noclip", None),
    "kbert, XLA off, SGD (no AdamW, no clipping)": ("kbert_sgd", None),
    "kbert, XLA off, Keras' AdamW (no XLA update)": ("kbert_kerasadamw", None),
    "kbert, XLA off, LAMB": ("kbert_lamb", None),
    "kbert, XLA off, bf16": ("kbert_bf16", None),
    "kbert, XLA off, bf16, keras-hub MLM head": ("kbert_bf16_kerashead", None),
    "kbert, XLA off, TensorFlow's cross-entropy kernel": ("kbert_tfce", None),
    "kbert, XLA off, bf16, TensorFlow's cross-entropy kernel": ("kbert_bf16_tfce", None),
    "kbert, XLA on": ("kbert_xla", None),
    "kbert, XLA on, no whole-set loss trackers": ("kbert_xla_notrackers", None),
    "kbert, XLA on, accuracy as logit[label] >= max": ("kbert_xla_maxacc", None),
    "kbert, XLA on, dropout 0": ("kbert_xla_dropout0", None),
    "kbert, XLA on, no clipping": ("kbert_xla_noclip", None),
    "kbert, XLA on, SGD (no AdamW, no clipping)": ("kbert_xla_sgd", None),
}
# kbert variant: how it differs from kbert as `compile_for_pretraining` compiles it with XLA off
# and fp32 (one step per execution, whole-set loss trackers, dropout 0.1, AdamW + global-norm
# clip); "auto" resolves mixed_precision and jit_compile as `kbert train` does on this machine.
KBERT_SETTINGS = {
    "kbert_auto": {"auto": True},
    "kbert": {},
    "kbert_xla": {"jit_compile": True},
    "kbert_spe32": {"steps_per_execution": 32},
    "kbert_xla_spe32": {"jit_compile": True, "steps_per_execution": 32},
    "kbert_bf16": {"bf16": True},
    "kbert_xla_bf16": {"jit_compile": True, "bf16": True},
    # As `kbert train` runs under JAX: its auto settings (XLA on; jit_compile=False would run
    # the step op by op, eagerly).
    "kbert_jax": {"auto": True},
}
for _ablation in ("notrackers", "maxacc", "dropout0", "noclip", "sgd"):
    KBERT_SETTINGS[f"kbert_{_ablation}"] = {_ablation: True}
    KBERT_SETTINGS[f"kbert_xla_{_ablation}"] = {"jit_compile": True, _ablation: True}
KBERT_SETTINGS["kbert_kerasadamw"] = {"kerasadamw": True}
KBERT_SETTINGS["kbert_lamb"] = {"lamb": True}
KBERT_SETTINGS["kbert_bf16_kerashead"] = {"bf16": True, "kerashead": True}
KBERT_SETTINGS["kbert_tfce"] = {"tfce": True}
KBERT_SETTINGS["kbert_bf16_tfce"] = {"bf16": True, "tfce": True}
JAX_VARIANTS = ("baseline_jax", "kbert_jax")
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PEAK_MATMUL_SIZE = 2048


def synthetic_batch(batch: int, seed: int = 0):
    """One batch of `batch` sequences of the benchmark's length, as kbert's pipeline yields it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = {
        "input_ids": rng.integers(5, VOCAB, (batch, SEQ)).astype("int32"),
        "segment_ids": (np.arange(SEQ)[None] >= SEQ // 2).repeat(batch, 0).astype("int32"),
        "input_mask": np.ones((batch, SEQ), "int32"),
        "masked_lm_positions": np.sort(rng.integers(1, SEQ, (batch, PREDICTIONS)), -1).astype(
            "int32"
        ),
    }
    y = {
        "mlm": rng.integers(5, VOCAB, (batch, PREDICTIONS)).astype("int32"),
        "nsp": rng.integers(0, 2, batch).astype("int32"),
    }
    w = {"mlm": np.ones((batch, PREDICTIONS), "float32"), "nsp": np.ones(batch, "float32")}
    return x, y, w


def baseline_model(shape: Shape):
    """The same shape as a user would compose it from keras-hub, compiled with Keras defaults."""
    import keras
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=shape.layers,
        num_heads=shape.heads,
        hidden_dim=shape.hidden,
        intermediate_dim=4 * shape.hidden,
        max_sequence_length=512,
    )
    inputs = {
        "input_ids": keras.Input((SEQ,), dtype="int32", name="input_ids"),
        "segment_ids": keras.Input((SEQ,), dtype="int32", name="segment_ids"),
        "input_mask": keras.Input((SEQ,), dtype="int32", name="input_mask"),
        "masked_lm_positions": keras.Input(
            (PREDICTIONS,), dtype="int32", name="masked_lm_positions"
        ),
    }
    encoded = backbone(
        {
            "token_ids": inputs["input_ids"],
            "segment_ids": inputs["segment_ids"],
            "padding_mask": inputs["input_mask"],
        }
    )
    mlm = keras_hub.layers.MaskedLMHead(token_embedding=backbone.token_embedding, name="mlm")(
        encoded["sequence_output"], inputs["masked_lm_positions"]
    )
    nsp = keras.layers.Dense(2, name="nsp")(encoded["pooled_output"])
    model = keras.Model(inputs, {"mlm": mlm, "nsp": nsp})
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss={
            "mlm": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "nsp": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        },
        loss_weights={"mlm": 1.0, "nsp": 1.0},
    )
    return model


def label_is_max_accuracy(y_true, y_pred):
    """Accuracy as logit[label] >= max(logits): one max over the vocabulary, no argmax.

    Keras' `ops.argmax` (TF backend) first rewrites -0.0 in all B·P×vocab logits (5 extra
    passes), and XLA's CPU argmax is a slow variadic reduce. Equal to argmax but on exact ties.
    """
    from keras import ops

    labels = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])
    at_label = ops.take_along_axis(y_pred, ops.expand_dims(labels, -1), axis=-1)[..., 0]
    return ops.cast(at_label >= ops.max(y_pred, axis=-1), "float32")


def kbert_model(settings: dict, shape: Shape):
    """kbert's model compiled as `kbert train` does, less what the variant's ablation drops."""
    import keras

    import kbert
    from kbert.losses import LOSS_WEIGHTS

    if settings.get("auto"):
        from kbert.device_defaults import resolve_settings
        from kbert.distribute import resolve_distribution

        precision, jit, _ = resolve_settings("auto", "auto", resolve_distribution("auto"))
        settings = {**settings, "bf16": precision == "bf16", "jit_compile": jit}
    if settings.get("bf16"):
        keras.config.set_dtype_policy("mixed_bfloat16")
    dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    config = kbert.BertConfig.from_preset(
        shape.preset, vocab_size=VOCAB, **(dropout if settings.get("dropout0") else {})
    )
    if settings.get("tfce"):
        # The loss as before kbert compiled it: Keras' op, TensorFlow's own kernel (this process
        # only: the loss is traced during `fit`, so the swap must outlive the build).
        kbert.losses.sparse_cross_entropy = kbert.distribute._keras_sparse_cross_entropy
    if settings.get("kerashead"):
        model = build_with_keras_hub_head(config)
    else:
        model = kbert.build_pretraining_model(config, SEQ, PREDICTIONS)
    if settings.get("sgd"):
        optimizer = keras.optimizers.SGD(1e-4)
    elif settings.get("kerasadamw"):
        from kbert.optimization import NO_DECAY_VARIABLE_NAMES

        optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01, global_clipnorm=1.0)
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_VARIABLE_NAMES))
    else:
        clip = None if settings.get("noclip") else 1.0
        name = "lamb" if settings.get("lamb") else "adamw"
        optimizer = kbert.create_optimizer(
            1e-4, 10_000, 1_000, optimizer=name, clip_global_norm=clip
        )
    jit_compile = settings.get("jit_compile", False)
    steps_per_execution = settings.get("steps_per_execution", 1)
    if settings.get("maxacc"):
        accuracy = keras.metrics.MeanMetricWrapper(label_is_max_accuracy, name="accuracy")
        model.compile(
            optimizer=optimizer,
            loss={name: kbert.WeightedSparseCrossEntropy() for name in LOSS_WEIGHTS},
            loss_weights=dict(LOSS_WEIGHTS),
            weighted_metrics={"mlm": [accuracy], "nsp": ["accuracy"]},
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
    else:
        kbert.compile_for_pretraining(
            model, optimizer, jit_compile=jit_compile, steps_per_execution=steps_per_execution
        )
    if settings.get("notrackers"):
        # BertPretrainingModel's whole-set loss trackers run only for a model compiled this way.
        model._logged_loss_weights = None
    return model


def build_with_keras_hub_head(config):
    """kbert's model with keras-hub's own MaskedLMHead, its tied projection in float32 (kbert's
    head before `TiedMaskedLMHead`)."""
    import keras_hub

    import kbert
    import kbert.model

    def keras_hub_head(token_embedding, **kwargs):
        token_embedding.reverse_dtype = "float32"
        return keras_hub.layers.MaskedLMHead(token_embedding=token_embedding, **kwargs)

    tied_head = kbert.model.TiedMaskedLMHead
    kbert.model.TiedMaskedLMHead = keras_hub_head
    try:
        return kbert.build_pretraining_model(config, SEQ, PREDICTIONS)
    finally:
        kbert.model.TiedMaskedLMHead = tied_head


def train_flops_per_sequence(shape: Shape) -> float:
    """Matmul FLOPs of one training step per sequence: 3x the forward (forward + 2x backward)."""
    h, layers = shape.hidden, shape.layers
    per_layer = 24 * SEQ * h * h + 4 * SEQ * SEQ * h  # QKVO + FFN (4H), attention scores/values
    heads = 2 * PREDICTIONS * h * h + 2 * PREDICTIONS * h * VOCAB + 2 * h * h + 4 * h
    return 3.0 * (layers * per_layer + heads)


def peak_flops(dtype: str, repeats: int = 10) -> dict:
    """FLOP/s of a square matmul of PEAK_MATMUL_SIZE in `dtype` on this CPU (best of `repeats`)."""
    import tensorflow as tf

    import kbert  # noqa: F401  (kbert's TensorFlow defaults, as in the kbert variants)

    n = PEAK_MATMUL_SIZE
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    matmul()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float(matmul())
        best = min(best, time.perf_counter() - start)
    return {"flops_per_second": 2 * n**3 / best}


def describe(shape: Shape) -> str:
    """The shape in one phrase, for the tables' headers."""
    return (
        f"{shape.preset} shape ({shape.layers} layers, hidden {shape.hidden}): seq {SEQ}, "
        f"P {PREDICTIONS}, vocab {VOCAB}, batch {shape.batch}"
    )


def cpu_description() -> str:
    """The CPU model, core count and the SIMD/matrix flags that decide fp32/bf16 speed."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    shown = [flag for flag in CPU_FLAGS_SHOWN if flag in flags]
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of interest'}"


def build_variant(variant: str, shape: Shape):
    """The compiled model of one variant and its steps per execution."""
    if variant.startswith("baseline"):
        return baseline_model(shape), 1
    settings = KBERT_SETTINGS[variant]
    return kbert_model(settings, shape), settings.get("steps_per_execution", 1)


def run_variant(variant: str, shape: Shape, steps: int, warmup: int) -> dict:
    """Time `steps` training steps of one variant in this process."""
    if not variant.startswith("baseline"):
        import kbert  # noqa: F401  (first: kbert's TensorFlow defaults apply before TF starts)
    import keras
    import tensorflow as tf

    try:
        model, steps_per_execution = build_variant(variant, shape)
    except Exception as error:  # noqa: BLE001  (a backend kbert does not support yet is a result)
        if variant not in JAX_VARIANTS:
            raise
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    # Whole executions only: warm up (compile) with at least one, time a multiple of them. One
    # `fit` call, timed between batch ends: a second call's set-up (seconds) is not a step's cost.
    warmup = max(warmup, steps_per_execution)
    warmup = -(-warmup // steps_per_execution) * steps_per_execution
    executions = steps // steps_per_execution
    if steps_per_execution > 1:
        executions = max(executions, MIN_TIMED_EXECUTIONS)
    steps = max(executions, 1) * steps_per_execution
    dataset = tf.data.Dataset.from_tensors(synthetic_batch(shape.batch)).repeat().prefetch(2)
    # (batch index, wall time, this process's CPU time) at the end of every execution of the
    # train function. CPU time per step is the cost to compare on a shared machine: other
    # processes' load stretches wall time, much less the CPU time this one spends.
    marks = []
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: marks.append(
            (batch, time.perf_counter(), time.process_time())
        )
    )
    try:
        model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
    except Exception as error:  # noqa: BLE001
        if variant not in JAX_VARIANTS:
            raise
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    first_batch, start, cpu_start = next(mark for mark in marks if mark[0] + 1 >= warmup)
    last_batch, end, cpu_end = marks[-1]
    steps, seconds = last_batch - first_batch, end - start
    return {
        "sequences_per_second": steps * shape.batch / seconds,
        "cpu_ms_per_step": (cpu_end - cpu_start) / steps * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bf16": keras.config.dtype_policy().compute_dtype == "bfloat16",
        "jit_compile": bool(model.jit_compile),
        "timed_steps": steps,
    }


def profile_variant(variant: str, shape: Shape, steps: int, warmup: int) -> dict:
    """Trace `steps` training steps of one kbert variant; the op-group summary (step_profile)."""
    import kbert  # noqa: F401, I001  (first: kbert's TensorFlow defaults apply before TF starts)
    import tempfile

    import step_profile
    import tensorflow as tf

    model, steps_per_execution = build_variant(variant, shape)
    steps = max(steps // steps_per_execution, 1) * steps_per_execution
    warmup = max(-(-warmup // steps_per_execution), 1) * steps_per_execution
    dataset = tf.data.Dataset.from_tensors(synthetic_batch(shape.batch)).repeat().prefetch(2)
    with tempfile.TemporaryDirectory() as logdir, step_profile.named_phases(model):
        trace = step_profile.trace_training_steps(model, dataset, steps, warmup, logdir)
        summary = step_profile.summarise_trace(trace["path"], steps, model.optimizer.name)
    summary["ops"] = summary["ops"][:40]
    return {**summary, "wall_ms": trace["wall_ms_per_step"], "steps": steps}


def run_subprocess(args: list[str], env: dict | None = None) -> dict:
    """Run this script with `args` in a fresh process; the JSON it prints last."""
    out = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark process {args} failed: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def variant_env(variant: str, onednn: str | None) -> dict:
    """The environment of a variant's process: oneDNN as asked, the JAX backend for JAX ones."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")
    }
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    env["KERAS_BACKEND"] = "jax" if variant in JAX_VARIANTS else "tensorflow"
    return env


def print_profiles(variants: list[str], shape: Shape, steps: int, warmup: int) -> None:
    """Profile each variant in its own process and print its op-group table."""
    import step_profile

    print(f"CPU: {cpu_description()}")
    print(
        f"{describe(shape)}; {steps} traced "
        "steps per variant. Op times are exclusive, per step, summed over threads (the profiler "
        "adds overhead per op); on a shared machine read the shares, not the totals."
    )
    for variant in variants:
        summary = run_subprocess(
            [
                *("--variant", variant, "--shape", shape.preset, "--profile"),
                *("--steps", str(steps), "--warmup", str(warmup)),
            ],
            env=variant_env(variant, None),
        )
        print(step_profile.format_profile(variant, summary, summary["wall_ms"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=32, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument(
        "--quick", action="store_true", help="only the baseline, kbert defaults, fp32, bf16"
    )
    selection.add_argument(
        "--suspects", action="store_true", help="ablations of kbert: what each part costs"
    )
    selection.add_argument(
        "--profile", action="store_true", help="trace kbert's steps; time by op group"
    )
    parser.add_argument(
        "--profile-variants",
        default="kbert,kbert_xla",
        help="comma-separated kbert variants to profile (e.g. kbert,kbert_xla,kbert_spe32)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the variant list this many times, interleaved"
    )
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="mini", help="encoder shape to time"
    )
    parser.add_argument(
        "--variant",
        choices=sorted(
            set(KBERT_SETTINGS) | {"baseline", "baseline_jax"} | {"peak_float32", "peak_bfloat16"}
        ),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.variant:
        if args.variant.startswith("peak_"):
            print(json.dumps(peak_flops(args.variant[len("peak_") :])))
        elif args.profile:
            print(json.dumps(profile_variant(args.variant, shape, args.steps, args.warmup)))
        else:
            print(json.dumps(run_variant(args.variant, shape, args.steps, args.warmup)))
        return
    if args.profile:
        variants = args.profile_variants.split(",")
        unknown = sorted(set(variants) - set(KBERT_SETTINGS) - set(JAX_VARIANTS))
        if unknown:
            parser.error(
                f"--profile-variants: unknown {unknown}; choose from {sorted(KBERT_SETTINGS)}"
            )
        print_profiles(variants, shape, args.steps, args.warmup)
        return

    peaks = {
        dtype: run_subprocess(["--variant", f"peak_{dtype}"])["flops_per_second"]
        for dtype in ("float32", "bfloat16")
    }
    chosen = SUSPECT_VARIANTS if args.suspects else VARIANTS
    if args.quick:
        chosen = {label: chosen[label] for label in QUICK_VARIANTS}
    runs: dict[str, list[dict]] = {label: [] for label in chosen}
    for _ in range(args.rounds):
        for label, (variant, onednn) in chosen.items():
            timing = [
                "--shape",
                shape.preset,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ]
            runs[label].append(
                run_subprocess(["--variant", variant, *timing], env=variant_env(variant, onednn))
            )
    print_results(runs, peaks, shape, args.steps)


def print_results(
    runs: dict[str, list[dict]], peaks: dict[str, float], shape: Shape, steps: int
) -> None:
    """The throughput table: each variant's median over rounds, MFU, RSS, ratio to the baseline."""
    import statistics

    def median(label: str, key: str = "sequences_per_second") -> float:
        return statistics.median(r[key] for r in runs[label])

    base = median("keras-hub composition, Keras defaults")
    flops = train_flops_per_sequence(shape)
    rounds = len(next(iter(runs.values())))
    print(f"CPU: {cpu_description()}")
    print(
        f"{describe(shape)}, "
        f"{steps} timed steps, {rounds} interleaved round(s), median shown; "
        f"{flops / 1e9:.2f} training GFLOP per sequence"
    )
    print(
        f"CPU peak (matmul {PEAK_MATMUL_SIZE}^2, oneDNN on): fp32 {peaks['float32'] / 1e9:.1f} "
        f"GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'variant':48s} {'seq/s':>7s} {'range':>11s} {'MFU fp32':>9s} {'MFU own':>8s} "
        f"{'RSS MB':>7s} {'vs baseline':>12s} {'CPU ms/step':>12s} {'CPU vs base':>12s}"
    )
    base_cpu = median("keras-hub composition, Keras defaults", "cpu_ms_per_step")
    for label, results in runs.items():
        failed = [r["error"] for r in results if "error" in r]
        if failed:
            print(f"{label:48s} not available: {failed[0]}")
            continue
        speeds = [r["sequences_per_second"] for r in results]
        speed = median(label)
        achieved = speed * flops
        own_peak = peaks["bfloat16" if results[0].get("bf16") else "float32"]
        spread = f"{min(speeds):.1f}-{max(speeds):.1f}"
        shown = label
        if "auto" in label:
            resolved = f"{'bf16' if results[0]['bf16'] else 'fp32'}, XLA "
            shown = f"{label}: {resolved}{'on' if results[0]['jit_compile'] else 'off'}"
        print(
            f"{shown:48s} {speed:7.1f} {spread:>11s} {achieved / peaks['float32']:8.1%} "
            f"{achieved / own_peak:7.1%} {max(r['peak_rss_mb'] for r in results):7.0f} "
            f"{speed / base:11.2f}x {median(label, 'cpu_ms_per_step'):12.0f} "
            f"{base_cpu / median(label, 'cpu_ms_per_step'):11.2f}x"
        )
    print(
        "MFU fp32: against the fp32 matmul peak; MFU own: against the peak of the variant's "
        "compute dtype. CPU vs base: the baseline's CPU time per step over the variant's "
        "(steadier than seq/s when other processes share the cores; counts spinning threads)."
    )


if __name__ == "__main__":
    main()
