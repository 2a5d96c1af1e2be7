"""Training-step throughput, MFU and peak memory of kbert's model beside a keras-hub composition.

Each variant runs in its own process (so peak RSS is its own) on the `mini` shape: seq 128,
20 predictions, vocab 30522, batch 32. kbert runs with XLA off/on, `steps_per_execution` 1 and
32, fp32 and bf16 (mixed precision). Prints sequences/s, peak RSS, the ratio of every variant to
the plain keras-hub baseline, and MFU: the model's training FLOP/s (analytic count, 3x the forward
matmuls) over the CPU's peak FLOP/s, measured in the same run with a large matmul of the
variant's compute dtype.

    python benchmarks/train_step.py [--steps 32] [--warmup 3] [--quick]

`--quick` runs only the baseline and kbert with XLA off and on (about a third of the time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SEQ, PREDICTIONS, VOCAB, BATCH = 128, 20, 30522, 32
# label: (variant, TF_ENABLE_ONEDNN_OPTS for the process; None = TensorFlow's own default)
VARIANTS = {
    "keras-hub composition, Keras defaults": ("baseline", None),
    "keras-hub composition, oneDNN on": ("baseline", "1"),
    "kbert, XLA off": ("kbert", None),
    "kbert, XLA on": ("kbert_xla", None),
    "kbert, XLA off, steps_per_execution 32": ("kbert_spe32", None),
    "kbert, XLA on, steps_per_execution 32": ("kbert_xla_spe32", None),
    "kbert, XLA off, bf16": ("kbert_bf16", None),
    "kbert, XLA on, bf16": ("kbert_xla_bf16", None),
}
QUICK_VARIANTS = ("keras-hub composition, Keras defaults", "kbert, XLA off", "kbert, XLA on")
# variant: (jit_compile, steps_per_execution, mixed precision)
KBERT_SETTINGS = {
    "kbert": (False, 1, False),
    "kbert_xla": (True, 1, False),
    "kbert_spe32": (False, 32, False),
    "kbert_xla_spe32": (True, 32, False),
    "kbert_bf16": (False, 1, True),
    "kbert_xla_bf16": (True, 1, True),
}
PEAK_MATMUL_SIZE = 2048
MINI_LAYERS, MINI_HIDDEN, MINI_HEADS = 4, 256, 4


def synthetic_batch(seed: int = 0):
    """One batch of the benchmark's shape, as kbert's pipeline yields it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = {
        "input_ids": rng.integers(5, VOCAB, (BATCH, SEQ)).astype("int32"),
        "segment_ids": (np.arange(SEQ)[None] >= SEQ // 2).repeat(BATCH, 0).astype("int32"),
        "input_mask": np.ones((BATCH, SEQ), "int32"),
        "masked_lm_positions": np.sort(rng.integers(1, SEQ, (BATCH, PREDICTIONS)), -1).astype(
            "int32"
        ),
    }
    y = {
        "mlm": rng.integers(5, VOCAB, (BATCH, PREDICTIONS)).astype("int32"),
        "nsp": rng.integers(0, 2, BATCH).astype("int32"),
    }
    w = {"mlm": np.ones((BATCH, PREDICTIONS), "float32"), "nsp": np.ones(BATCH, "float32")}
    return x, y, w


def baseline_model():
    """The same shape as a user would compose it from keras-hub, compiled with Keras defaults."""
    import keras
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=MINI_LAYERS,
        num_heads=MINI_HEADS,
        hidden_dim=MINI_HIDDEN,
        intermediate_dim=4 * MINI_HIDDEN,
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


def kbert_model(jit_compile: bool, steps_per_execution: int = 1, bf16: bool = False):
    """kbert's model, compiled the way `kbert train` does."""
    import keras

    import kbert

    if bf16:
        keras.config.set_dtype_policy("mixed_bfloat16")
    model = kbert.build_pretraining_model(
        kbert.BertConfig.from_preset("mini", vocab_size=VOCAB), SEQ, PREDICTIONS
    )
    kbert.compile_for_pretraining(
        model,
        kbert.create_optimizer(1e-4, 10_000, 1_000),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def train_flops_per_sequence() -> float:
    """Matmul FLOPs of one training step per sequence: 3x the forward (forward + 2x backward)."""
    h, layers = MINI_HIDDEN, MINI_LAYERS
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


def run_variant(variant: str, steps: int, warmup: int) -> dict:
    """Time `steps` training steps of one variant in this process."""
    if variant != "baseline":
        import kbert  # noqa: F401  (first: kbert's TensorFlow defaults apply before TF starts)
    import keras
    import tensorflow as tf

    if variant == "baseline":
        model, steps_per_execution = baseline_model(), 1
    else:
        jit_compile, steps_per_execution, bf16 = KBERT_SETTINGS[variant]
        model = kbert_model(jit_compile, steps_per_execution, bf16)
    # Whole executions only: warm up (compile) with at least one, time a multiple of them. One
    # `fit` call, timed between batch ends: a second call's set-up (seconds) is not a step's cost.
    warmup = max(warmup, steps_per_execution)
    warmup = -(-warmup // steps_per_execution) * steps_per_execution
    steps = max(steps // steps_per_execution, 1) * steps_per_execution
    dataset = tf.data.Dataset.from_tensors(synthetic_batch()).repeat().prefetch(2)
    marks = []  # (batch index, time) at the end of every execution of the train function
    clock = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: marks.append((batch, time.perf_counter()))
    )
    model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock])
    first_batch, start = next((b, t) for b, t in marks if b + 1 >= warmup)
    last_batch, end = marks[-1]
    steps, seconds = last_batch - first_batch, end - start
    return {
        "sequences_per_second": steps * BATCH / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bf16": variant.endswith("bf16"),
        "timed_steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=32, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument(
        "--quick", action="store_true", help="only the baseline and kbert, XLA off and on"
    )
    parser.add_argument(
        "--variant",
        choices=sorted({v for v, _ in VARIANTS.values()} | {"peak_float32", "peak_bfloat16"}),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.variant:
        if args.variant.startswith("peak_"):
            print(json.dumps(peak_flops(args.variant[len("peak_") :])))
        else:
            print(json.dumps(run_variant(args.variant, args.steps, args.warmup)))
        return

    peaks = {}
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run(
            [sys.executable, __file__, "--variant", f"peak_{dtype}"],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        peaks[dtype] = json.loads(out.stdout.strip().splitlines()[-1])["flops_per_second"]
    results = {}
    for label, (variant, onednn) in VARIANTS.items():
        if args.quick and label not in QUICK_VARIANTS:
            continue
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if onednn is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = onednn
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
            env=env,
        )
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["keras-hub composition, Keras defaults"]["sequences_per_second"]
    flops = train_flops_per_sequence()
    print(
        f"mini shape: seq {SEQ}, P {PREDICTIONS}, vocab {VOCAB}, batch {BATCH}, "
        f"{args.steps} timed steps; {flops / 1e9:.2f} training GFLOP per sequence"
    )
    print(
        f"CPU peak (matmul {PEAK_MATMUL_SIZE}^2, oneDNN on): fp32 {peaks['float32'] / 1e9:.1f} "
        f"GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s"
    )
    print(
        f"{'variant':42s} {'seq/s':>8s} {'GFLOP/s':>8s} {'MFU fp32':>9s} {'MFU own':>8s} "
        f"{'peak RSS MB':>12s} {'vs baseline':>12s}"
    )
    for label, r in results.items():
        achieved = r["sequences_per_second"] * flops
        own_peak = peaks["bfloat16" if r.get("bf16") else "float32"]
        print(
            f"{label:42s} {r['sequences_per_second']:8.1f} {achieved / 1e9:8.1f} "
            f"{achieved / peaks['float32']:8.1%} {achieved / own_peak:7.1%} "
            f"{r['peak_rss_mb']:12.0f} {r['sequences_per_second'] / base:11.2f}x"
        )
    print(
        "MFU fp32: against the fp32 matmul peak; MFU own: against the peak of the variant's "
        "compute dtype."
    )


if __name__ == "__main__":
    main()
