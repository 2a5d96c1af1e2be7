"""`kbert demo`: the whole pipeline on one corpus (default: Python's own documentation), on CPU.

corpus → held-out split by document → WordPiece vocab → masked TFRecords → joint MLM + NSP
pre-training → held-out evaluation beside baselines → SavedModel export → loss curves → summary and
fill-mask answers from the exported SavedModel → fine-tuning of the encoder and of a random-init
twin on a labelled task made from the held-out documents ("does sentence B follow sentence A?"),
both scores printed. Every stage leaves its output in the run directory; a re-run reuses the
stages that finished (training resumes where it stopped).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import time
from typing import Any

from kbert.cli import add_flag
from kbert.cli.create_data import add_corpus_arguments, corpus_from_args
from kbert.errors import InputError, SettingError
from kbert.io import atomic_path, read_json, write_atomically, write_json
from kbert.progress import progress

FILL_MASK_EXAMPLES = (
    "The [MASK] statement is used to leave a loop early.",
    "If the key is not found, a KeyError [MASK] raised.",
    "A tuple is an immutable [MASK] of objects.",
)
# The full run is sized to finish in about 10 minutes on 2 CPU cores; the quick one in about one.
FULL = dict(
    preset="tiny",
    steps=1600,
    batch_size=64,
    max_seq_length=64,
    vocab_size=8000,
    dupe_factor=5,
    learning_rate=1e-3,
)
QUICK = dict(FULL, steps=20, batch_size=16, vocab_size=2000, dupe_factor=1)
QUICK_DOCUMENTS = 120
# The fine-tuning task's size and the one protocol cell both encoders get (Well-Read Students'
# small-model learning rate); the quick run's is a smoke test of the stage.
FINETUNE = dict(train_examples=1000, eval_examples=500, learning_rate=3e-4, batch_size=32, epochs=3)
QUICK_FINETUNE = dict(FINETUNE, train_examples=48, eval_examples=32, epochs=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `kbert demo`."""
    add_corpus_arguments(parser)
    add_flag(parser, "output_dir", default="runs/demo", help="the demo's run directory (runs/demo)")
    add_flag(
        parser,
        "export_base",
        default="saved_models",
        help="where the SavedModel goes (saved_models)",
    )
    add_flag(parser, "name", default="kbert-demo", help="model name under export_base (kbert-demo)")
    add_flag(
        parser,
        "preset",
        default=None,
        help=f"model size preset (full: {FULL['preset']}, quick: {QUICK['preset']})",
    )
    add_flag(
        parser,
        "steps",
        type=int,
        default=None,
        help=f"training steps (full: {FULL['steps']}, quick: {QUICK['steps']})",
    )
    add_flag(
        parser,
        "batch_size",
        type=int,
        default=None,
        help=f"global batch size (full: {FULL['batch_size']})",
    )
    add_flag(
        parser,
        "max_seq_length",
        type=int,
        default=None,
        help=f"tokens per sequence (full: {FULL['max_seq_length']})",
    )
    add_flag(
        parser,
        "vocab_size",
        type=int,
        default=None,
        help=f"WordPiece vocabulary size (full: {FULL['vocab_size']})",
    )
    add_flag(
        parser,
        "dupe_factor",
        type=int,
        default=None,
        help=f"differently-masked copies (full: {FULL['dupe_factor']})",
    )
    add_flag(
        parser,
        "learning_rate",
        type=float,
        default=None,
        help=f"peak learning rate (full: {FULL['learning_rate']})",
    )
    add_flag(
        parser,
        "heldout_fraction",
        type=float,
        default=0.1,
        help="share of documents held out (0.1)",
    )
    add_flag(
        parser, "seed", type=int, default=0, help="seed of the split, the data and the training (0)"
    )
    add_flag(
        parser,
        "quick",
        action="store_true",
        help="a tiny run of a few seconds on the first documents (what the test suite runs)",
    )


def run(args: argparse.Namespace) -> int:
    """Run every stage that has not finished yet, then print the summary."""
    settings = dict(QUICK if args.quick else FULL)
    for key in settings:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if not 0 < args.heldout_fraction < 1:
        raise SettingError(
            f"--heldout_fraction must be between 0 and 1, got {args.heldout_fraction}"
        )
    out = args.output_dir
    data = os.path.join(out, "data")
    run_dir = os.path.join(out, "run")
    os.makedirs(data, exist_ok=True)
    stage = _Stages(8)
    started = time.perf_counter()

    with stage("split the corpus into train and held-out documents"):
        train_text, heldout_text = (
            os.path.join(data, "train.txt"),
            os.path.join(data, "heldout.txt"),
        )
        counts = _split_corpus(args, train_text, heldout_text, args.quick)
        print(f"  {counts['train']:,} train and {counts['heldout']:,} held-out documents")

    with stage(f"learn a {settings['vocab_size']:,}-token WordPiece vocabulary"):
        vocab_file = os.path.join(data, "vocab.txt")
        _learn_vocab(train_text, vocab_file, settings["vocab_size"])

    with stage("write masked pre-training TFRecords"):
        train_records, heldout_records = os.path.join(data, "train"), os.path.join(data, "heldout")
        for text, records, dupe in (
            (train_text, train_records, settings["dupe_factor"]),
            (heldout_text, heldout_records, 1),
        ):
            _create_records(text, records, vocab_file, settings["max_seq_length"], dupe, args.seed)

    with stage(
        f"pre-train a '{settings['preset']}' BERT for {settings['steps']} steps (MLM + NSP)"
    ):
        results = _pretrain(
            run_dir, train_records, heldout_records, vocab_file, settings, args.seed
        )

    with stage("evaluate on the held-out records beside the baselines"):
        results["mlm_baseline_accuracy"] = _majority_baseline(train_records, heldout_records)
        results["nsp_majority_accuracy"] = _nsp_majority(heldout_records)
        write_json(os.path.join(run_dir, "eval_results.json"), results)

    with stage(f"export for TF Serving to {args.export_base}/{args.name}/"):
        export_dir = _export(run_dir, vocab_file, args.export_base, args.name)

    with stage("draw the loss curves"):
        from kbert.plot import plot_run

        curves = plot_run(run_dir, os.path.join(out, "loss_curves.png"))

    with stage("fine-tune the encoder and a random-init twin on a task from held-out text"):
        scores = _finetune_both(
            heldout_text, run_dir, vocab_file, os.path.join(out, "finetune"), settings, args
        )

    _print_summary(results, curves, export_dir, time.perf_counter() - started)
    _print_fill_mask(export_dir)
    _print_finetuning(scores)
    return 0


class _Stages:
    """Numbered stage headers with their durations."""

    def __init__(self, total: int):
        self.total, self.index = total, 0

    def __call__(self, title: str):
        self.index += 1
        return _Stage(f"[{self.index}/{self.total}] {title}")


class _Stage:
    def __init__(self, title: str):
        self.title = title

    def __enter__(self):
        print(self.title, flush=True)
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        if exc[0] is None:
            print(f"  done in {time.perf_counter() - self.start:.1f}s", flush=True)


def _split_corpus(
    args: argparse.Namespace, train_text: str, heldout_text: str, quick: bool
) -> dict[str, int]:
    """Write the train and held-out documents in Google's layout (reused when both exist)."""
    from tfrecords_tools import corpora

    marker = os.path.join(os.path.dirname(train_text), "split.json")
    if os.path.exists(marker):
        print("  reusing the split from an earlier run")
        return read_json(marker)
    documents = list(corpus_from_args(args))
    if quick:
        documents = documents[:QUICK_DOCUMENTS]
    rng = random.Random(args.seed)
    heldout = [rng.random() < args.heldout_fraction for _ in documents]
    if sum(heldout) < 2 or len(documents) - sum(heldout) < 2:
        raise InputError(f"the corpus has {len(documents)} documents: too few to hold some out")
    counts = {}
    for path, keep in ((train_text, False), (heldout_text, True)):
        with atomic_path(path) as tmp:
            corpora.write_google_layout((d for d, h in zip(documents, heldout) if h == keep), tmp)
        counts["heldout" if keep else "train"] = sum(h == keep for h in heldout)
    write_json(marker, counts)
    return counts


def _learn_vocab(train_text: str, vocab_file: str, vocab_size: int) -> None:
    from tfrecords_tools import corpora, vocab

    if os.path.exists(vocab_file):
        print(f"  reusing {vocab_file}")
        return
    result = vocab.learn_vocab(
        corpora.sentences_of(corpora.TextFiles(train_text, "google")), vocab_file, vocab_size
    )
    print(
        f"  {result.vocab_size:,} tokens from {result.num_sentences:,} sentences ({result.learner})"
    )


def _create_records(
    text: str, records: str, vocab_file: str, max_seq_length: int, dupe_factor: int, seed: int
) -> None:
    from kbert import features
    from tfrecords_tools.create_pretraining_data import create_pretraining_data

    if features.read_metadata(records) is not None:
        print(f"  reusing {records}/")
        return
    summary = create_pretraining_data(
        text,
        os.path.join(records, "records.tfrecord"),
        vocab_file,
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max(1, round(max_seq_length * 0.15)),
        random_seed=seed,
        dupe_factor=dupe_factor,
        num_workers=min(2, os.cpu_count() or 1),
        # The demo prints its own summary lines; a bar only where someone watches it.
        progress=progress if sys.stderr.isatty() else None,
    )
    print(
        f"  {records}/: {summary.num_instances:,} instances, "
        f"{summary.is_random_share:.0%} NSP 'random'"
    )


def _pretrain(
    run_dir: str,
    train_records: str,
    heldout_records: str,
    vocab_file: str,
    settings: dict,
    seed: int,
) -> dict[str, Any]:
    from kbert import train
    from kbert.config import BertConfig
    from tfrecords_tools.vocab import load_vocab

    results_path = os.path.join(run_dir, train.EVAL_RESULTS_FILE)
    if os.path.exists(os.path.join(run_dir, train.MODEL_FILE)) and os.path.exists(results_path):
        print(f"  reusing the finished run in {run_dir}/")
        return read_json(results_path)
    config = BertConfig.from_preset(settings["preset"], vocab_size=len(load_vocab(vocab_file)))
    steps = settings["steps"]
    interval = max(1, steps // 10)
    result = train.pretrain(
        config,
        train_records,
        run_dir,
        steps=steps,
        batch_size=settings["batch_size"],
        eval_files=heldout_records,
        learning_rate=settings["learning_rate"],
        warmup_steps=max(1, steps // 10),
        checkpoint_interval=interval,
        eval_interval=interval * 2,
        seed=seed,
        verbose=2 if not sys.stdout.isatty() else "auto",
    )
    return dict(result.eval_results)


def _majority_baseline(train_records: str, heldout_records: str) -> float:
    """Held-out accuracy of always predicting the masked token most frequent in training."""
    import numpy as np

    from kbert.data import pretraining_dataset

    def masked_counts(records: str) -> collections.Counter:
        counts: collections.Counter = collections.Counter()
        for _, y, w in pretraining_dataset(records, 256, is_training=False):
            ids, weights = y["mlm"].numpy(), w["mlm"].numpy()
            counts.update(ids[weights > 0].tolist())
        return counts

    most_common = masked_counts(train_records).most_common(1)[0][0]
    heldout = masked_counts(heldout_records)
    return float(np.float64(heldout[most_common]) / sum(heldout.values()))


def _nsp_majority(heldout_records: str) -> float:
    """Held-out accuracy of always answering the more frequent NSP label (Google's rule makes
    "random" the majority: single-segment chunks always take a random B)."""
    from kbert import features

    counts = features.read_metadata(heldout_records).nsp_label_counts
    return max(counts.values()) / sum(counts.values())


def _export(run_dir: str, vocab_file: str, export_base: str, name: str) -> str:
    from kbert.export import export_for_serving

    marker = os.path.join(run_dir, "export.json")
    if os.path.exists(marker):
        path = read_json(marker)["path"]
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            print(f"  reusing {path}")
            return path
    path = export_for_serving(run_dir, vocab_file, export_base=export_base, name=name)
    write_json(marker, {"path": path})
    print(f"  {path}")
    return path


def _print_summary(results: dict[str, Any], curves: str, export_dir: str, seconds: float) -> None:
    mlm, base = results["mlm_accuracy"], results["mlm_baseline_accuracy"]
    print("\nheld-out results")
    print(f"  {'metric':24s} {'model':>8s} {'baseline':>9s}")
    print(
        f"  {'MLM accuracy':24s} {mlm:8.3f} {base:9.3f}   "
        f"(most frequent masked token; {mlm / max(base, 1e-9):.1f}x)"
    )
    print(
        f"  {'NSP accuracy':24s} {results['nsp_accuracy']:8.3f} {0.5:9.3f}   (chance; "
        f"always the majority label: {results['nsp_majority_accuracy']:.3f})"
    )
    print(
        f"  {'MLM loss / perplexity':24s} {results['mlm_loss']:8.3f} "
        f"{results.get('mlm_perplexity', float('nan')):9.1f}"
    )
    print(f"  {'NSP loss':24s} {results['nsp_loss']:8.3f}")
    print(f"loss curves: {curves}")
    print(f"SavedModel:  {export_dir}")
    print(f"total time:  {seconds / 60:.1f} min")


def _print_fill_mask(export_dir: str) -> None:
    """Three fill-mask answers from the exported SavedModel alone."""
    from kbert.export import fill_mask

    print("\nfill-mask, answered by the SavedModel:")
    for text in FILL_MASK_EXAMPLES:
        answer = fill_mask(export_dir, text)["masks"][0]
        fillings = ", ".join(f"{t} ({p:.2f})" for t, p in zip(answer["tokens"], answer["probs"]))
        print(f"  {text}\n    -> {fillings}")


def next_sentence_pairs(documents: list[list[str]], seed: int) -> list[tuple[str, str, str]]:
    """(sentence A, sentence B, label) rows: "1" when B follows A in its document, "0" when B is
    a sentence of another document (each with probability 1/2, seeded), in a shuffled order.

    Examples:
    >>> rows = next_sentence_pairs([["A one.", "A two."], ["B one.", "B two."]], seed=0)
    >>> sorted(rows)[0], len(rows)
    (('A one.', 'A two.', '1'), 2)
    """
    rng = random.Random(seed)
    rows = []
    for index, document in enumerate(documents):
        others = [i for i in range(len(documents)) if i != index and documents[i]]
        for first, second in zip(document, document[1:]):
            if others and rng.random() < 0.5:
                rows.append((first, rng.choice(documents[rng.choice(others)]), "0"))
            else:
                rows.append((first, second, "1"))
    rng.shuffle(rows)
    return rows


def _finetune_both(
    heldout_text: str,
    run_dir: str,
    vocab_file: str,
    out: str,
    settings: dict,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Fine-tune the run's encoder and a random-init twin with the same protocol cell; their
    dev scores and the majority-class baseline (reused when both finished)."""
    from kbert.finetuning import RESULTS_FILE, finetune
    from tfrecords_tools import corpora

    arms = {
        "pre-trained": os.path.join(out, "pretrained"),
        "random init": os.path.join(out, "random"),
    }
    if all(os.path.exists(os.path.join(d, RESULTS_FILE)) for d in arms.values()):
        print(f"  reusing {out}/")
        return {arm: read_json(os.path.join(d, RESULTS_FILE)) for arm, d in arms.items()}
    protocol = dict(QUICK_FINETUNE if args.quick else FINETUNE)
    documents = [[" ".join(s.split()) for s in d] for d in corpora.TextFiles(heldout_text)]
    rows = next_sentence_pairs(documents, args.seed)
    train_size = min(protocol.pop("train_examples"), len(rows) * 2 // 3)
    eval_size = min(protocol.pop("eval_examples"), len(rows) - train_size)
    os.makedirs(out, exist_ok=True)
    files = {}
    for name, part in (("train", rows[:train_size]), ("dev", rows[train_size:][:eval_size])):
        files[name] = os.path.join(out, f"{name}.tsv")
        lines = ["sentence1\tsentence2\tlabel\n"] + ["\t".join(row) + "\n" for row in part]
        write_atomically(files[name], "".join(lines))
    print(f"  {train_size:,} train and {eval_size:,} dev pairs from the held-out documents")
    common = dict(
        vocab_file=vocab_file,
        max_seq_length=settings["max_seq_length"],
        seed=args.seed,
        **protocol,
    )
    scores = {}
    for arm, directory in arms.items():
        source = (
            dict(init_from=run_dir)
            if arm == "pre-trained"
            else dict(config=os.path.join(run_dir, "bert_config.json"))
        )
        scores[arm] = finetune(files["train"], files["dev"], directory, **source, **common).results
    return scores


def _print_finetuning(scores: dict[str, Any]) -> None:
    """Both encoders' dev scores beside the majority class: what pre-training bought."""
    first = next(iter(scores.values()))
    print(
        f'\ndid pre-training work? fine-tuned on "does sentence B follow sentence A?" '
        f"({first['train_examples']:,} train, {first['eval_examples']:,} dev pairs of held-out "
        "text)"
    )
    print(f"  {'encoder':24s} {'accuracy':>8s} {'F1':>8s}")
    for arm, results in scores.items():
        best = results["best"]
        print(f"  {arm:24s} {best['accuracy']:8.3f} {best['f1']:8.3f}")
    baseline = first["baseline"]
    print(f"  {'majority class':24s} {baseline['accuracy']:8.3f} {baseline['f1']:8.3f}")
