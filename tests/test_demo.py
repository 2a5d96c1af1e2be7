"""`kbert demo --quick`: the whole pipeline end to end, valid artifacts, and re-runs reuse it."""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from kbert.cli import main
from kbert.cli.demo import next_sentence_pairs
from kbert.finetuning import RESULTS_FILE


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One quick demo run in a fresh directory, and what it printed."""
    workdir = tmp_path_factory.mktemp("demo")
    old = os.getcwd()
    os.chdir(workdir)
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["demo", "--quick"]) == 0
        yield workdir, out.getvalue()
    finally:
        os.chdir(old)


def test_demo_writes_eval_results_with_the_metrics_and_baseline(demo_run):
    workdir, _ = demo_run
    results = json.loads((workdir / "runs/demo/run/eval_results.json").read_text())
    for key in (
        "mlm_loss",
        "mlm_accuracy",
        "nsp_loss",
        "nsp_accuracy",
        "mlm_baseline_accuracy",
        "nsp_majority_accuracy",
    ):
        assert isinstance(results[key], float), key
    assert 0.0 < results["mlm_baseline_accuracy"] < 1.0


def test_demo_summary_prints_accuracies_beside_their_baselines(demo_run):
    _, printed = demo_run
    assert "most frequent masked token" in printed
    assert "chance" in printed
    assert "fill-mask, answered by the SavedModel" in printed
    assert printed.count("    -> ") == 3


def test_demo_ends_with_both_encoders_fine_tuned_on_held_out_text(demo_run):
    workdir, printed = demo_run
    summary = printed.split("did pre-training work?")[1].splitlines()
    scores = {}
    for line in summary[2:5]:
        name, accuracy, f1 = line.rsplit(maxsplit=2)
        scores[name.strip()] = (float(accuracy), float(f1))
    assert sorted(scores) == ["majority class", "pre-trained", "random init"]
    # The printed scores are the ones each fine-tuning wrote.
    for name, folder in (("pre-trained", "pretrained"), ("random init", "random")):
        results = json.loads((workdir / "runs/demo/finetune" / folder / RESULTS_FILE).read_text())
        best = results["best"]
        assert scores[name] == (round(best["accuracy"], 3), round(best["f1"], 3))
        assert results["train_file"].endswith("runs/demo/finetune/train.tsv")


def test_next_sentence_pairs_follow_in_their_document_or_come_from_another():
    documents = [[f"d{d} s{i}." for i in range(6)] for d in range(4)]
    rows = next_sentence_pairs(documents, seed=3)
    assert len(rows) == 4 * 5
    for first, second, label in rows:
        d, i = int(first[1]), int(first.split("s")[1][:-1])
        if label == "1":
            assert second == f"d{d} s{i + 1}."
        else:
            assert not second.startswith(f"d{d} ")
    assert 5 <= sum(label == "1" for *_, label in rows) <= 15
    assert next_sentence_pairs(documents, seed=3) == rows


def test_demo_loss_curves_png_decodes_and_is_not_blank(demo_run):
    workdir, _ = demo_run
    image = tf.io.decode_png(tf.io.read_file(str(workdir / "runs/demo/loss_curves.png"))).numpy()
    assert image.shape[0] > 100 and image.std() > 10


def test_demo_savedmodel_answers_fill_mask_in_a_clean_subprocess(demo_run):
    workdir, _ = demo_run
    versions = os.listdir(workdir / "saved_models/kbert-demo")
    assert versions == ["1"]
    script = textwrap.dedent(
        """
        import sys
        import tensorflow as tf
        import tensorflow_text  # noqa: F401
        fill_mask = tf.saved_model.load(sys.argv[1]).signatures["fill_mask"]
        out = fill_mask(text_a=tf.constant(["the [MASK] is raised ."]), text_b=tf.constant([""]))
        tokens = out["mlm_top_tokens"].numpy()[0, 0]
        assert all(t for t in tokens), tokens
        print("OK", [t.decode() for t in tokens])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(workdir / "saved_models/kbert-demo/1")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("OK")


def test_demo_rerun_reuses_every_finished_stage(demo_run, capsys, monkeypatch):
    workdir, _ = demo_run
    monkeypatch.chdir(workdir)
    assert main(["demo", "--quick"]) == 0
    printed = capsys.readouterr().out
    for reused in (
        "reusing the split",
        "reusing runs/demo/data/vocab.txt",
        "reusing runs/demo/data/train/",
        "reusing the finished run",
        "reusing saved_models/kbert-demo/1",
        "reusing runs/demo/finetune/",
    ):
        assert reused in printed, reused
    assert os.listdir(workdir / "saved_models/kbert-demo") == ["1"]
