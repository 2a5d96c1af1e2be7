"""Latency of the exported SavedModel's signatures against the Keras model's direct call.

One process, one run: builds a `mini` model (4 layers, hidden 256, vocab 30522, seq 128,
20 predictions) or `tiny`, exports it with `kbert.export.export_for_serving`, reloads the SavedModel
with `tf.saved_model.load`, then times at batch 1 and 32:

    serving_default   ids in → top-k ids/probs + NSP probs, through the SavedModel
    keras call        `model(x, training=False)`, the same ids (logits only, no top-k)
    predict_on_batch  Keras' compiled predict function on the same ids (logits only)
    fill_mask         text in → in-graph tokenization + model + top-k tokens (SavedModel)
    HF + keras call   Hugging Face tokenizers (Rust) + the same packing in NumPy + `model(x)`
                      + NumPy softmax/top-k: the Python pipeline fill_mask replaces

Prints p50 / p95 wall latency and p50 process CPU time in milliseconds, and each path's p50s
relative to its Keras baseline (the first keras row of its group).

    python benchmarks/serving.py [--preset mini] [--iterations 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

SEQ, PREDICTIONS, VOCAB, TOP_K = 128, 20, 30522, 5
BATCH_SIZES = (1, 32)
MASKS_PER_SEGMENT = 5


def vocabulary(size: int) -> list[str]:
    """BERT's special tokens, then whole words `w<i>` and a few `##` continuations."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
    pieces = [f"##s{i}" for i in range(100)]
    words = [f"w{i}" for i in range(size - len(tokens) - len(pieces))]
    return tokens + words + pieces


def texts(batch_size: int, words: int, seed: int) -> tuple[list[str], list[str]]:
    """Pairs of ~60-word segments (a full 128-token pair) with MASKS_PER_SEGMENT [MASK]s each."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_segment = (SEQ - 3) // 2

    def segment() -> str:
        chosen = [f"w{i}" for i in rng.integers(0, words, per_segment)]
        for slot in rng.choice(per_segment, MASKS_PER_SEGMENT, replace=False):
            chosen[slot] = "[MASK]"
        return " ".join(chosen)

    return [segment() for _ in range(batch_size)], [segment() for _ in range(batch_size)]


def percentiles(fn, iterations: int, warmup: int) -> tuple[float, float, float]:
    """p50 and p95 wall time of `fn()`, and p50 process CPU time (all threads), in milliseconds.

    CPU time is reported too because wall time on a shared machine depends on the other load.
    """
    import numpy as np

    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iterations):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return float(np.percentile(wall, 50)), float(np.percentile(wall, 95)), float(np.median(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "mini"), default="mini")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbert_serving_bench_") as workdir:
        run(args, workdir)


def run(args: argparse.Namespace, workdir: str) -> None:
    """Build, export, reload and time (see the module docstring)."""
    import keras
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the text signatures' ops)
    from tokenizers import BertWordPieceTokenizer

    import kbert
    from kbert.export import export_for_serving
    from kbert.serving_tokenizer import write_vocab

    keras.utils.set_random_seed(0)
    tokens = vocabulary(VOCAB)
    vocab_file = os.path.join(workdir, "vocab.txt")
    write_vocab(tokens, vocab_file)
    config = kbert.BertConfig.from_preset(args.preset, vocab_size=VOCAB)
    model = kbert.build_pretraining_model(config, SEQ, PREDICTIONS)
    start = time.perf_counter()
    export_base = os.path.join(workdir, "saved_models")
    export_dir = export_for_serving(model, vocab_file, export_base, top_k=TOP_K)
    print(f"export: {time.perf_counter() - start:.1f} s -> {export_dir}")
    signatures = tf.saved_model.load(export_dir).signatures
    hf = BertWordPieceTokenizer(vocab_file, lowercase=True)
    hf.enable_truncation(SEQ)
    mask_id = tokens.index("[MASK]")
    vocab_array = np.array(tokens, dtype=object)

    def hf_keras_fill_mask(pairs: list[tuple[str, str]]):
        encodings = hf.encode_batch(pairs)
        x = {
            k: np.zeros((len(pairs), SEQ), "int32")
            for k in ("input_ids", "segment_ids", "input_mask")
        }
        x["masked_lm_positions"] = np.zeros((len(pairs), PREDICTIONS), "int32")
        for row, e in enumerate(encodings):
            n = len(e.ids)
            x["input_ids"][row, :n], x["segment_ids"][row, :n] = e.ids, e.type_ids
            x["input_mask"][row, :n] = 1
            masks = [i for i, t in enumerate(e.ids) if t == mask_id][:PREDICTIONS]
            x["masked_lm_positions"][row, : len(masks)] = masks
        outputs = model(x, training=False)
        logits = np.asarray(outputs["mlm"])
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        top = np.argpartition(-probs, TOP_K, -1)[..., :TOP_K]
        top_probs = np.take_along_axis(probs, top, -1)
        order = np.argsort(-top_probs, -1)
        top = np.take_along_axis(top, order, -1)
        return vocab_array[top], np.take_along_axis(top_probs, order, -1)

    print(
        f"\npreset {args.preset} (hidden {config.hidden_size}, {config.num_hidden_layers} layers), "
        f"vocab {VOCAB}, seq {SEQ}, {PREDICTIONS} predictions, top-k {TOP_K}, "
        f"{args.iterations} timed calls after {args.warmup} warm-up, "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}\n"
    )
    print(
        f"{'batch':>5}  {'path':<36} {'p50 ms':>9} {'p95 ms':>9} {'cpu p50 ms':>11} "
        f"{'p50 vs keras':>13} {'cpu vs keras':>13}"
    )
    for batch_size in BATCH_SIZES:
        text_a, text_b = texts(batch_size, VOCAB - 107, seed=batch_size)
        ids = signatures["tokenize"](text_a=tf.constant(text_a), text_b=tf.constant(text_b))
        x_tf = {k: v for k, v in ids.items()}
        x_np = {k: v.numpy() for k, v in ids.items()}
        pairs = list(zip(text_a, text_b))
        rows = [
            ("keras call (ids)", lambda: model(x_np, training=False)["nsp"].numpy(), None),
            ("keras predict_on_batch (ids)", lambda: model.predict_on_batch(x_np), 0),
            (
                "SavedModel serving_default (ids)",
                lambda: signatures["serving_default"](**x_tf)["nsp_probs"].numpy(),
                0,
            ),
            ("HF tokenizers + keras call (text)", lambda: hf_keras_fill_mask(pairs), None),
            (
                "SavedModel fill_mask (text)",
                lambda: signatures["fill_mask"](
                    text_a=tf.constant(text_a), text_b=tf.constant(text_b)
                )["nsp_probs"].numpy(),
                3,
            ),
        ]
        results = []
        for label, fn, baseline in rows:
            p50, p95, cpu = percentiles(fn, args.iterations, args.warmup)
            results.append((p50, cpu))
            ratios = ["baseline"] * 2
            if baseline is not None:
                ratios = [f"{new / old:.2f}x" for new, old in zip((p50, cpu), results[baseline])]
            print(
                f"{batch_size:>5}  {label:<36} {p50:>9.2f} {p95:>9.2f} {cpu:>11.2f} "
                f"{ratios[0]:>13} {ratios[1]:>13}"
            )


if __name__ == "__main__":
    main()
