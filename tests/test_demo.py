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
    ):
        assert reused in printed, reused
    assert os.listdir(workdir / "saved_models/kbert-demo") == ["1"]
