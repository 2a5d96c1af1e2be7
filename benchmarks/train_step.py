"""Training-step throughput and peak memory of kbert's model against a plain keras-hub composition.

Each variant runs in its own process (so peak RSS is its own) on the `mini` shape: seq 128,
20 predictions, vocab 30522, batch 32, fp32. Prints sequences/s, peak RSS and the ratio of every
variant to the plain keras-hub baseline measured in the same run.

    python benchmarks/train_step.py [--steps 10] [--warmup 3]
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
}
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
        "masked_lm_positions": keras.Input((PREDICTIONS,), dtype="int32", name="masked_lm_positions"),
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


def kbert_model(jit_compile: bool):
    """kbert's model, compiled the way `kbert train` does."""
    import kbert

    model = kbert.build_pretraining_model(kbert.BertConfig.from_preset("mini", vocab_size=VOCAB), SEQ, PREDICTIONS)
    kbert.compile_for_pretraining(
        model, kbert.create_optimizer(1e-4, 10_000, 1_000), jit_compile=jit_compile
    )
    return model


def run_variant(variant: str, steps: int, warmup: int) -> dict:
    """Time `steps` training steps of one variant in this process."""
    if variant != "baseline":
        import kbert  # noqa: F401  (first: kbert's TensorFlow defaults apply before TF starts)
    import tensorflow as tf

    model = baseline_model() if variant == "baseline" else kbert_model(variant == "kbert_xla")
    dataset = tf.data.Dataset.from_tensors(synthetic_batch()).repeat().prefetch(2)
    model.fit(dataset, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {
        "sequences_per_second": steps * BATCH / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--variant", choices=sorted({v for v, _ in VARIANTS.values()}), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.warmup)))
        return

    results = {}
    for label, (variant, onednn) in VARIANTS.items():
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if onednn is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = onednn
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
             "--warmup", str(args.warmup)],
            capture_output=True, text=True, timeout=1800, check=True, env=env,
        )
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["keras-hub composition, Keras defaults"]["sequences_per_second"]
    print(f"mini shape: seq {SEQ}, P {PREDICTIONS}, vocab {VOCAB}, batch {BATCH}, fp32, "
          f"{args.steps} timed steps")
    print(f"{'variant':40s} {'seq/s':>8s} {'peak RSS MB':>12s} {'vs baseline':>12s}")
    for label, r in results.items():
        print(f"{label:40s} {r['sequences_per_second']:8.1f} {r['peak_rss_mb']:12.0f} "
              f"{r['sequences_per_second'] / base:11.2f}x")


if __name__ == "__main__":
    main()
