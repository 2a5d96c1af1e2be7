"""`pretrain` and `evaluate`: learning, strategies, accumulation, XLA, bf16, NaN, run files."""

import csv
import glob
import json
import logging
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import count_traces, tiny_config, write_pretraining_records

import kbert
from kbert.train import TrainingDivergedError, evaluate, pretrain, training_input


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """64 fixed masked sequences of 16 tokens, 3 predictions each, vocab 100."""
    return write_pretraining_records(str(tmp_path_factory.mktemp("data")))


def quick(data, output_dir, **kwargs):
    """A short deterministic run of the tiny test config (dropout 0)."""
    arguments = dict(
        config=tiny_config(),
        train_files=data,
        output_dir=str(output_dir),
        steps=2,
        batch_size=8,
        seed=3,
        verbose=0,
    )
    arguments.update(kwargs)
    return pretrain(**arguments)


# Updates proportional to the gradient: weights compare at 1e-5 (Adam's normalisation would turn
# round-off in near-zero gradients into learning-rate-sized steps).
SGD = dict(optimizer="sgd", learning_rate=0.5, warmup_steps=0)


def assert_same_weights(a, b, atol):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=atol, err_msg=x.path)


def test_tiny_preset_overfits_64_fixed_sequences(data, tmp_path):
    result = pretrain(
        "tiny",
        data,
        str(tmp_path / "run"),
        steps=150,
        batch_size=16,
        eval_files=data,
        # Google's Adam has no bias correction: its first steps are up to ~30x Keras' AdamW's.
        learning_rate=1e-3,
        warmup_steps=10,
        checkpoint_interval=50,
        seed=0,
        verbose=0,
        dropout=0.0,  # memorising is the point here; dropout fights exactly that
    )
    assert result.model.bert_config.hidden_size == 128  # the tiny preset
    assert result.model.bert_config.vocab_size == 100  # from the data's metadata
    assert result.eval_results["mlm_accuracy"] > 0.9
    assert result.eval_results["nsp_accuracy"] == 1.0


def test_mirrored_over_two_cpus_trains_the_same_weights_as_one_device(data, tmp_path, two_cpus):
    single = quick(data, tmp_path / "single", steps=3, strategy="cpu", **SGD)
    mirrored = quick(
        data,
        tmp_path / "mirrored",
        steps=3,
        **SGD,
        strategy=tf.distribute.MirroredStrategy(two_cpus),
    )
    assert int(mirrored.model.optimizer.iterations.numpy()) == 3
    assert_same_weights(single.model, mirrored.model, atol=1e-5)


class _InitialWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.values = [v.numpy() for v in self.model.weights]


def test_gradient_accumulation_of_two_batches_of_b_equals_steps_of_batch_2b(data, tmp_path):
    common = dict(SGD, steps=2)
    accumulated = quick(
        data, tmp_path / "acc", batch_size=8, gradient_accumulation_steps=2, **common
    )
    initial = _InitialWeights()
    large = quick(data, tmp_path / "large", batch_size=16, callbacks=[initial], **common)
    assert int(accumulated.model.optimizer.iterations.numpy()) == 2
    assert_same_weights(accumulated.model, large.model, atol=1e-5)
    # The updates moved the weights: the match is not vacuous.
    moved = max(np.abs(a.numpy() - b).max() for a, b in zip(large.model.weights, initial.values))
    assert moved > 1e-3


def test_train_step_compiles_with_xla_and_every_dataset_shape_is_static(data, tmp_path, two_cpus):
    result = quick(data, tmp_path / "xla", jit_compile=True, steps=4, steps_per_execution=2)
    assert result.model.jit_compile is True
    assert all(math.isfinite(v) for v in result.history["loss"])
    # What a TPU is fed: static shapes on one device and per replica under a strategy.
    for strategy, batch in (
        (tf.distribute.get_strategy(), 8),
        (tf.distribute.MirroredStrategy(two_cpus), 4),
    ):
        dataset = training_input(strategy, data, 8, seed=0, start_batch=5)
        specs = tf.nest.flatten(dataset.element_spec, expand_composites=True)
        assert specs and all(spec.shape.is_fully_defined() for spec in specs), specs
        assert {spec.shape[0] for spec in specs} == {batch}


def test_bf16_policy_trains_with_float32_outputs_and_a_finite_loss(data, tmp_path):
    result = quick(data, tmp_path / "bf16", mixed_precision="bf16", steps=2)
    model = result.model
    assert model.get_layer("encoder").compute_dtype == "bfloat16"
    x, _, _ = next(iter(training_input(tf.distribute.get_strategy(), data, 4, seed=0)))
    outputs = model(x)
    assert outputs["mlm"].dtype == tf.float32 and outputs["nsp"].dtype == tf.float32
    assert all(math.isfinite(v) for v in result.history["loss"])
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def recorded_settings(run_dir):
    with open(os.path.join(run_dir, "run_config.json")) as f:
        recorded = json.load(f)
    return recorded["mixed_precision"], recorded["jit_compile"]


def test_auto_settings_are_resolved_for_the_device_logged_and_recorded(
    data, tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("KBERT_MIXED_PRECISION")  # the conftest's fp32 for the other tests
    with caplog.at_level(logging.INFO, logger="kbert"):
        result = quick(data, tmp_path / "auto")
    precision, jit_compile = recorded_settings(result.output_dir)
    # Whether this CPU gets bf16 depends on its measured matmul speed; XLA is off on a CPU.
    assert jit_compile is False and result.model.jit_compile is False
    compute_dtype = {"none": "float32", "bf16": "bfloat16"}[precision]
    assert result.model.get_layer("encoder").compute_dtype == compute_dtype
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("settings:")]
    assert len(lines) == 1 and lines[0].startswith(f"settings: mixed_precision {precision} (")
    assert ", jit_compile off (CPU" in lines[0]


def test_mixed_precision_environment_variable_is_what_auto_means(data, tmp_path, monkeypatch):
    monkeypatch.setenv("KBERT_MIXED_PRECISION", "bf16")
    auto = quick(data, tmp_path / "auto")
    assert recorded_settings(auto.output_dir)[0] == "bf16"
    assert auto.model.get_layer("encoder").compute_dtype == "bfloat16"
    explicit = quick(data, tmp_path / "explicit", mixed_precision="none", jit_compile=True)
    assert recorded_settings(explicit.output_dir) == ("none", True)
    monkeypatch.setenv("KBERT_MIXED_PRECISION", "fp8")
    with pytest.raises(ValueError, match="KBERT_MIXED_PRECISION must be one of none, bf16, fp16"):
        quick(data, tmp_path / "bad")


class _PoisonWeightsAt(keras.callbacks.Callback):
    """Divergence on demand: sets the NSP kernel to NaN before the given step."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            kernel = self.model.get_layer("nsp").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_nan_loss_stops_training_clearly_and_keeps_the_last_good_checkpoint(data, tmp_path):
    run = tmp_path / "nan"
    # `stopped` keeps the error's frames, so the callbacks, alive while the files are read.
    with pytest.raises(
        TrainingDivergedError, match=r"loss became nan by step 7.*ckpt-0000005"
    ) as stopped:
        quick(data, run, steps=20, checkpoint_interval=5, callbacks=[_PoisonWeightsAt(6)])
    assert [os.path.basename(p) for p in glob.glob(str(run / "checkpoints" / "*"))] == [
        "ckpt-0000005.weights.h5"
    ]
    assert not (run / "model.keras").exists()
    model = kbert.build_pretraining_model(tiny_config(), 16, 3)
    model.load_weights(str(run / "checkpoints" / "ckpt-0000005.weights.h5"))
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    # The resume backup is the one of step 5 too, not the diverged state.
    with open(run / "backup" / "current.json") as f:
        current = json.load(f)
    assert (current["epoch"], current["step"]) == (1, 5)
    backup = kbert.build_pretraining_model(tiny_config(), 16, 3)
    backup.load_weights(str(run / "backup" / current["state"] / "model.weights.h5"))
    assert_same_weights(model, backup, atol=0)
    # TensorBoard holds the scalars of every row written, up to the one before the NaN.
    steps = [
        event.step
        for path in glob.glob(str(run / "logs" / "train" / "events.out.tfevents.*"))
        for event in map(
            tf.compat.v1.Event.FromString, tf.data.TFRecordDataset(path).as_numpy_iterator()
        )
        for value in event.summary.value
        if value.tag == "loss"
    ]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6], stopped


def numpy_evaluation(model, files):
    """Google's evaluation in numpy over every record: weighted CE means and accuracies."""
    mlm_ce = mlm_w = mlm_hit = nsp_ce = nsp_hit = nsp_n = 0.0
    dataset = kbert.pretraining_dataset(files, 16, is_training=False)
    for x, y, w in dataset.as_numpy_iterator():
        out = model(x)
        for name in ("mlm", "nsp"):
            logits = out[name].numpy().astype("float64")
            logits -= logits.max(-1, keepdims=True)
            log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            ce = -np.take_along_axis(log_p, y[name][..., None], -1)[..., 0]
            hit = (logits.argmax(-1) == y[name]).astype("float64")
            if name == "mlm":
                mlm_ce += (w[name] * ce).sum()
                mlm_w += w[name].sum()
                mlm_hit += (w[name] * hit).sum()
            else:
                nsp_ce += (w[name] * ce).sum()
                nsp_n += w[name].sum()
                nsp_hit += (w[name] * hit).sum()
    return {
        "mlm_loss": mlm_ce / mlm_w,
        "mlm_accuracy": mlm_hit / mlm_w,
        "nsp_loss": nsp_ce / nsp_n,
        "nsp_accuracy": nsp_hit / nsp_n,
    }


@pytest.mark.tf_compat
def test_run_directory_holds_history_checkpoints_logs_model_and_evaluation(data, tmp_path):
    run = tmp_path / "run"
    eval_data = write_pretraining_records(str(tmp_path / "eval"), num_records=21, seed=9)
    result = quick(
        data,
        run,
        steps=6,
        checkpoint_interval=2,
        keep_checkpoints=2,
        eval_files=eval_data,
        eval_interval=4,
        learning_rate=1e-3,
        warmup_steps=2,
        eval_batch_size=16,
        log_interval=2,
    )
    # Weight checkpoints: the last two intervals only.
    assert sorted(os.listdir(run / "checkpoints")) == [
        "ckpt-0000004.weights.h5",
        "ckpt-0000006.weights.h5",
    ]
    # A history row every log_interval updates, with the step, the metrics and the learning rate.
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
        assert all(math.isfinite(float(r[name])) for r in rows), name
    # The rate of the next update: Google's warmup over 2 steps, then 1e-3 · (1 − t/6).
    expected_lr = [1e-3 * (1 - s / 6) for s in (2, 4, 6)]
    np.testing.assert_allclose([float(r["learning_rate"]) for r in rows], expected_lr, rtol=1e-5)
    assert [r["val_mlm_loss"] != "" for r in rows] == [False, True, False]

    # TensorBoard scalars, learning rate included, at the history's steps; the evaluation under
    # the same names in validation/, so both curves share a chart.
    def scalars(split):
        found = {}
        for path in glob.glob(str(run / "logs" / split / "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    found.setdefault(value.tag, set()).add(event.step)
        return found

    train = scalars("train")
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate"):
        assert train[name] == {2, 4, 6}, name
    assert scalars("validation")["mlm_loss"] == {4}
    # The final model reloads; the encoder weights load into a keras-hub BertBackbone.
    reloaded = keras.saving.load_model(str(run / "model.keras"))
    x, _, _ = next(iter(kbert.pretraining_dataset(data, 4, is_training=False)))
    np.testing.assert_allclose(reloaded(x)["mlm"], result.model(x)["mlm"], atol=1e-5)
    encoder = reloaded.get_layer("encoder")
    encoder.load_weights(str(run / "encoder.weights.h5"))
    # eval_results.json: Google's evaluation over all 21 records, and perplexity = exp(MLM loss).
    with open(run / "eval_results.json") as f:
        saved = json.load(f)
    expected = numpy_evaluation(result.model, eval_data)
    for name, value in expected.items():
        assert saved[name] == pytest.approx(value, abs=1e-5), name
    assert saved["mlm_perplexity"] == pytest.approx(math.exp(saved["mlm_loss"]), rel=1e-9)
    assert saved["num_sequences"] == 21 and saved["step"] == 6
    # `evaluate` alone, from the run directory, gives the same numbers.
    again = evaluate(str(run), eval_data, batch_size=5, strategy="cpu", verbose=0)
    for name in expected:
        assert again[name] == pytest.approx(saved[name], abs=1e-5), name


def test_rerunning_a_finished_run_trains_nothing_and_changed_arguments_are_refused(data, tmp_path):
    first = quick(data, tmp_path / "run", steps=2, eval_files=data)
    with pytest.raises(ValueError, match=r"batch_size changed \(batch_size: 8 -> 16\)"):
        quick(data, tmp_path / "run", steps=2, batch_size=16)
    again = quick(data, tmp_path / "run", steps=2, eval_files=data)
    assert again.history == {}
    assert int(again.model.optimizer.iterations.numpy()) == 2
    assert again.eval_results["mlm_loss"] == pytest.approx(first.eval_results["mlm_loss"], abs=1e-6)


def test_an_interval_that_does_not_divide_the_steps_ends_with_a_shorter_one(data, tmp_path):
    run = tmp_path / "uneven"
    uneven = quick(data, run, steps=10, checkpoint_interval=4, **SGD)
    assert int(uneven.model.optimizer.iterations.numpy()) == 10
    assert sorted(os.listdir(run / "checkpoints")) == [
        f"ckpt-{step:07d}.weights.h5" for step in (4, 8, 10)
    ]
    with open(run / "history.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, 11))
    # The intervals do not change the numbers: the weights of intervals of 5.
    even = quick(data, tmp_path / "even", steps=10, checkpoint_interval=5, **SGD)
    assert_same_weights(uneven.model, even.model, atol=1e-6)


def test_each_step_function_is_traced_once_in_a_run_of_several_intervals(
    data, tmp_path, monkeypatch
):
    """A traced step runs its Python once per trace. Keras builds an unbuilt optimizer inside
    the first train step on one device, and a tf.function whose first trace creates variables is
    traced again: twice the start-up, unless `pretrain` builds it before `fit`."""
    traces = count_traces(monkeypatch, "train_step", "test_step")
    result = quick(data, tmp_path / "run", steps=3, checkpoint_interval=1, eval_files=data)
    assert result.history["step"] == [1, 2, 3]
    assert traces == {"train_step": 1, "test_step": 1}


def test_bad_arguments_are_named(data, tmp_path):
    with pytest.raises(
        ValueError, match=r"checkpoint_interval \(30\) must be at most steps \(10\)"
    ):
        quick(data, tmp_path / "a", steps=10, checkpoint_interval=30)
    with pytest.raises(ValueError, match="config vocab_size 50 does not match"):
        quick(data, tmp_path / "b", config=tiny_config(vocab_size=50))
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        quick(data, tmp_path / "c", mixed_precision="fp8")


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_a_history_row_is_the_mean_over_the_updates_since_the_previous_row(data, tmp_path):
    quick(data, tmp_path / "a", steps=6, log_interval=1, **SGD)
    quick(data, tmp_path / "b", steps=6, log_interval=3, **SGD)
    every_step, every_3 = _history(tmp_path / "a"), _history(tmp_path / "b")
    assert [int(r["step"]) for r in every_3] == [3, 6]
    # Every record has 3 predictions: equal weights per step, so the window mean is the mean of
    # the steps' own values.
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
        steps = [float(r[name]) for r in every_step]
        expected = [np.mean(steps[:3]), np.mean(steps[3:])]
        np.testing.assert_allclose([float(r[name]) for r in every_3], expected, rtol=1e-5)
