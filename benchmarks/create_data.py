"""Benchmark `kbert create-data`: MB/s, instances/s, peak RSS; 1 vs 2 workers, 1x vs 4x corpus.

Corpus (real English, built offline): the built-in corpus (Python's documentation topics and
stdlib docstrings) plus the prose of the docstrings of the installed Python packages (this venv's
site-packages, then the system's dist-packages), read with `ast`, until >= --target_mb. Settings:
max_seq_length 128, max_predictions_per_seq 20, dupe_factor 5, a ~30k (bert-base-sized) uncased
vocab learned from the corpus. Each run is a fresh process; peak RSS is the peak of the summed
RSS of the run's process tree (main + workers), sampled every 20 ms.

Baselines: the 1-worker run (for the 2-worker speed-up), the 1x corpus (for the 4x memory
ratio), the vocabulary learner not chosen (tensorflow-text's `bert_vocab_from_dataset`, on a
2 MB sample), and google-research/bert's script as quoted in the issue for this machine kind
(0.11 MB/s, ~1,700 instances/s, one core; not runnable offline here).

With `--runner beam`: the local runner (2 worker processes) beside the same shards made by Apache
Beam's DirectRunner engine (FnApiRunner, 2 worker processes, multi_processing), same corpus, same
run; the two runs' shards are checked to be byte-identical.

    python benchmarks/create_data.py [--work_dir DIR] [--target_mb 10] [--reuse_corpus]
                                     [--runner local|beam]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

GOOGLE_MB_PER_S = 0.11
GOOGLE_INSTANCES_PER_S = 1700
SETTINGS = dict(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=5)

BEAM_DIRECT_RUNNER = (
    "--runner=FnApiRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
)

_RUN = """
import json, resource, sys
from tfrecords_tools.create_pretraining_data import create_pretraining_data
def cpu():
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
before = cpu()
s = create_pretraining_data(sys.argv[1], sys.argv[2], sys.argv[3], **json.loads(sys.argv[4]))
print(json.dumps(dict(seconds=s.seconds, cpu_seconds=cpu() - before, instances=s.num_instances,
                      input_bytes=s.input_bytes, shards=len(s.output_files))))
"""


def build_corpus(path: str, target_bytes: int) -> str:
    """Write >= target_bytes of Python documentation prose in Google's layout; returns what it
    used."""
    from tfrecords_tools import corpora

    roots = [sysconfig.get_paths()["purelib"], "/usr/lib/python3/dist-packages"]
    used = ["built-in corpus"]

    def documents():
        size = 0
        for document in corpora.builtin_corpus():
            size += sum(len(s) + 1 for s in document) + 1
            yield document
        for root in roots:
            if not os.path.isdir(root):
                continue
            used.append(f"docstrings under {root}")
            for document in corpora.python_docstring_documents(
                [root], exclude_dirs={"test", "tests", "testing"}
            ):
                size += sum(len(s.encode()) + 1 for s in document) + 1
                yield document
                if size >= target_bytes:
                    return

    count, _ = corpora.write_google_layout(documents(), path)
    size = os.path.getsize(path)
    if size < target_bytes:
        raise SystemExit(
            f"only {size / 1e6:.1f} MB of prose found, wanted {target_bytes / 1e6:.1f} MB"
        )
    return f"{size / 1e6:.1f} MB, {count:,} documents: " + "; ".join(used)


def compare_vocab_learners(
    corpus: str, sample_bytes: int = 2_000_000, vocab_size: int = 8000
) -> dict:
    """Seconds of HF tokenizers' WordPiece trainer vs tensorflow-text's learner, same sample."""
    import tempfile

    import tensorflow as tf
    from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset as bert_vocab

    from tfrecords_tools.vocab import SPECIAL_TOKENS, learn_vocab

    lines, size = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.strip())
                size += len(line)
                if size >= sample_bytes:
                    break
    start = time.perf_counter()
    learn_vocab(lines, os.path.join(tempfile.mkdtemp(), "v.txt"), vocab_size=vocab_size)
    hf = time.perf_counter() - start
    start = time.perf_counter()
    bert_vocab.bert_vocab_from_dataset(
        tf.data.Dataset.from_tensor_slices(lines).batch(1000).prefetch(2),
        vocab_size=vocab_size,
        reserved_tokens=list(SPECIAL_TOKENS),
        bert_tokenizer_params=dict(lower_case=True),
        learn_params={},
    )
    tf_text = time.perf_counter() - start
    return {"sample_mb": size / 1e6, "hf_tokenizers_s": hf, "tensorflow_text_s": tf_text}


def run(corpus: str, output: str, vocab: str, options: dict) -> dict:
    """One create-data run (SETTINGS plus `options`, e.g. num_workers or the Beam runner) in a
    fresh process; its figures and the peak RSS of its process tree."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN, corpus, output, vocab, json.dumps({**SETTINGS, **options})],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    root = psutil.Process(process.pid)
    peak_total = peak_one = 0
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            rss = []
            for p in tree:
                try:
                    rss.append(p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            peak_total, peak_one = max(peak_total, sum(rss)), max(peak_one, max(rss, default=0))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    out = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"create-data run failed ({process.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(
        wall=wall,
        peak_rss_mb=peak_total / 2**20,
        peak_rss_one_process_mb=peak_one / 2**20,
    )
    return result


def prepare(args: argparse.Namespace) -> tuple[str, str, str]:
    """Build (or reuse) the corpus, its 4x copy and the vocab; print what they are."""
    os.makedirs(args.work_dir, exist_ok=True)
    corpus = os.path.join(args.work_dir, "corpus_1x.txt")
    corpus_4x = os.path.join(args.work_dir, "corpus_4x.txt")
    vocab = os.path.join(args.work_dir, "vocab.txt")
    start = time.perf_counter()
    if (
        args.reuse_corpus
        and os.path.exists(corpus)
        and os.path.getsize(corpus) >= args.target_mb * 1e6
    ):
        description = f"{os.path.getsize(corpus) / 1e6:.1f} MB reused from {corpus}"
    else:
        description = build_corpus(corpus, int(args.target_mb * 1e6))
    with open(corpus, "rb") as f, open(corpus_4x, "wb") as g:
        data = f.read()
        for _ in range(4):
            g.write(data)
    print(f"corpus: {description} (built in {time.perf_counter() - start:.0f}s)")

    from tfrecords_tools.corpora import TextFiles, sentences_of
    from tfrecords_tools.vocab import learn_vocab

    result = learn_vocab(sentences_of(TextFiles(corpus)), vocab, vocab_size=30522, min_frequency=1)
    print(
        f"vocab: {result.vocab_size:,} tokens learned by {result.learner} in {result.seconds:.1f}s"
    )
    if not args.skip_learner_comparison:
        c = compare_vocab_learners(corpus)
        print(
            f"vocab learners on a {c['sample_mb']:.1f} MB sample (8k vocab): HF tokenizers "
            f"{c['hf_tokenizers_s']:.1f}s, tensorflow-text bert_vocab_from_dataset "
            f"{c['tensorflow_text_s']:.1f}s -> HF "
            f"{c['tensorflow_text_s'] / c['hf_tokenizers_s']:.0f}x faster"
        )
    return corpus, corpus_4x, vocab


def run_all(runs: list[tuple[str, str, dict]], work_dir: str, vocab: str) -> dict[str, dict]:
    """Run each (name, corpus, options) and print one table row per run."""
    print(
        f"settings: {SETTINGS}; load average before runs: {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'run':<24}{'input MB':>9}{'instances':>11}{'MB/s':>7}{'inst/s':>9}{'MB/s wall':>10}"
        f"{'MB/cpu-s':>9}{'peak RSS MB':>12}{'largest proc':>13}"
    )
    results = {}
    for name, path, options in runs:
        output = os.path.join(work_dir, name.replace(" ", "_").replace(",", ""), "train")
        shutil.rmtree(os.path.dirname(output), ignore_errors=True)
        r = results[name] = run(path, output, vocab, options)
        r["output_dir"] = os.path.dirname(output)
        mb = r["input_bytes"] / 1e6
        print(
            f"{name:<24}{mb:>9.1f}{r['instances']:>11,}{mb / r['seconds']:>7.2f}"
            f"{r['instances'] / r['seconds']:>9,.0f}{mb / r['wall']:>10.2f}"
            f"{mb / r['cpu_seconds']:>9.2f}{r['peak_rss_mb']:>12.0f}"
            f"{r['peak_rss_one_process_mb']:>13.0f}"
        )
    print(
        "MB/s and inst/s: input bytes and instances over the run's own time (API call, after "
        "interpreter start and imports); 'MB/s wall' includes them; MB/cpu-s: input MB per "
        "CPU-second of the run's processes (does not depend on what else the machine runs)."
    )
    return results


def same_shards(a: str, b: str) -> bool:
    """The two directories hold the same shard files, byte for byte."""

    def shards(directory):
        names = sorted(n for n in os.listdir(directory) if ".tfrecord" in n)
        return {n: open(os.path.join(directory, n), "rb").read() for n in names}

    return shards(a) == shards(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="/tmp/kbert-bench-create-data")
    parser.add_argument("--target_mb", type=float, default=10.0)
    parser.add_argument("--skip_learner_comparison", action="store_true")
    parser.add_argument(
        "--reuse_corpus", action="store_true", help="keep a corpus built by an earlier run"
    )
    parser.add_argument(
        "--runner",
        choices=("local", "beam"),
        default="local",
        help="beam: the local runner beside Beam's DirectRunner engine, 2 workers each",
    )
    args = parser.parse_args()
    corpus, corpus_4x, vocab = prepare(args)
    if args.runner == "beam":
        beam = {"runner": "beam", "beam_pipeline_options": BEAM_DIRECT_RUNNER}
        runs = [
            ("local runner, 2 workers", corpus, {"num_workers": 2}),
            ("Beam FnApiRunner, 2 wkrs", corpus, beam),
        ]
        local, on_beam = run_all(runs, args.work_dir, vocab).values()
        print(
            f"Beam / local: {local['seconds'] / on_beam['seconds']:.2f}x the local runner's MB/s "
            f"(Beam's time includes starting its worker processes); shards byte-identical: "
            f"{same_shards(local['output_dir'], on_beam['output_dir'])}"
        )
        return
    runs = [
        ("1x corpus, 1 worker", corpus, {"num_workers": 1}),
        ("1x corpus, 2 workers", corpus, {"num_workers": 2}),
        ("4x corpus, 1 worker", corpus_4x, {"num_workers": 1}),
    ]
    one, two, four = run_all(runs, args.work_dir, vocab).values()
    speed_two = two["input_bytes"] / 1e6 / two["seconds"]
    print(
        f"2 workers vs 1: {one['seconds'] / two['seconds']:.2f}x; 2 workers vs "
        f"google-research/bert (quoted {GOOGLE_MB_PER_S} MB/s): "
        f"{speed_two / GOOGLE_MB_PER_S:.0f}x (goal >= 20x = 2.3 MB/s)"
    )
    print(
        f"peak RSS 4x / 1x corpus (1 worker): {four['peak_rss_mb'] / one['peak_rss_mb']:.2f} "
        "(goal <= 1.2)"
    )


if __name__ == "__main__":
    main()
