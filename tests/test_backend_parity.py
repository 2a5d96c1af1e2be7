"""The same kbert on both Keras backends.

Under TensorFlow (this process, one device) and under JAX (a `python -m kbert` subprocess,
data parallel over 2 forced CPU devices): the same `kbert train` gives the same per-step losses
and final weights, and `kbert export` of the JAX-trained run gives the SavedModel a TensorFlow
session exports from the same weights. The `jax_only` tests run in the JAX pass
(tests/test_jax_backend.py): `pretrain` over 2 devices writes a complete run and stops clearly.
"""

import csv
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from helpers import JAX_ENV, count_traces, random_batch, tiny_config, write_pretraining_records

from kbert.optimization import optimizer_step
from kbert.train import TrainingDivergedError, pretrain

TIMEOUT_SECONDS = 600
LOSSES = ("loss", "mlm_loss", "nsp_loss")
SEQ_LEN, PREDICTIONS, VOCAB_SIZE = 16, 3, 100


def read_history(run_dir):
    with open(os.path.join(run_dir, "history.csv")) as f:
        return list(csv.DictReader(f))


def run_facts(run_dir):
    with open(os.path.join(run_dir, "run_config.json")) as f:
        return json.load(f)["run"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny initial run, then the same `kbert train --init_from` under each backend."""
    from kbert.cli import main

    root = tmp_path_factory.mktemp("parity")
    data = write_pretraining_records(str(root / "data"), num_records=48)
    config_file = str(root / "bert_config.json")
    tiny_config().to_json_file(config_file)
    init = str(root / "init")
    pretrain(config_file, data, init, steps=2, batch_size=8, seed=1, verbose=0)
    flags = [
        "train",
        f"--config={config_file}",
        f"--train_files={data}",
        f"--init_from={init}",
        "--optimizer=sgd",
        "--dropout=0",
        "--learning_rate=0.5",
        "--warmup_steps=0",
        "--steps=4",
        "--checkpoint_interval=1",
        "--batch_size=8",
        "--seed=7",
        "--verbose=0",
    ]
    tf_run, jax_run = str(root / "tf"), str(root / "jax")
    assert main([*flags, f"--output_dir={tf_run}", "--strategy=cpu"]) == 0
    jax = subprocess.run(
        [sys.executable, "-m", "kbert", *flags, f"--output_dir={jax_run}", "--strategy=auto"],
        env=JAX_ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert jax.returncode == 0, jax.stderr[-4000:]
    return dict(root=root, data=data, init=init, tf=tf_run, jax=jax_run)


@pytest.mark.tensorflow_only
def test_kbert_train_logs_the_same_losses_and_ends_with_the_same_weights_on_both_backends(runs):
    assert {k: run_facts(runs["tf"])[k] for k in ("backend", "num_replicas")} == {
        "backend": "tensorflow",
        "num_replicas": 1,
    }
    assert {k: run_facts(runs["jax"])[k] for k in ("backend", "num_replicas")} == {
        "backend": "jax",
        "num_replicas": 2,
    }
    tf_rows, jax_rows = read_history(runs["tf"]), read_history(runs["jax"])
    assert [int(r["step"]) for r in tf_rows] == [int(r["step"]) for r in jax_rows] == [1, 2, 3, 4]
    for name in LOSSES:
        np.testing.assert_allclose(
            [float(r[name]) for r in jax_rows],
            [float(r[name]) for r in tf_rows],
            rtol=1e-4,
            err_msg=name,
        )
    tf_model, jax_model, initial = (
        keras.saving.load_model(os.path.join(runs[name], "model.keras"))
        for name in ("tf", "jax", "init")
    )
    for a, b in zip(jax_model.weights, tf_model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, err_msg=a.path)
    # The updates moved the weights: the match is not vacuous.
    moved = max(
        np.abs(a.numpy() - b.numpy()).max() for a, b in zip(tf_model.weights, initial.weights)
    )
    assert moved > 1e-3


# Loads two SavedModels in a process that never imported kbert or Keras, as TF Serving would.
SAVED_MODEL_OUTPUTS = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the text signatures' tokenizer ops)

    inputs_path, outputs_path, *export_dirs = sys.argv[1:]
    inputs = dict(np.load(inputs_path))
    results = {}
    for i, export_dir in enumerate(export_dirs):
        signatures = tf.saved_model.load(export_dir).signatures
        ids = {k: tf.constant(v) for k, v in inputs.items()}
        encoder_ids = {k: v for k, v in ids.items() if k != "masked_lm_positions"}
        texts = dict(text_a=tf.constant(["w1 [MASK] w2 .", "[MASK] w5"]),
                     text_b=tf.constant(["", "w7 [MASK]"]))
        for name, kwargs in (("serving_default", ids), ("encode", encoder_ids),
                             ("fill_mask", texts)):
            for key, value in signatures[name](**kwargs).items():
                results[f"{i}/{name}/{key}"] = value.numpy()
    np.savez(outputs_path, **results)
    """
)


@pytest.mark.tensorflow_only
def test_kbert_export_of_a_jax_run_gives_the_saved_model_of_a_tensorflow_session(runs, tmp_path):
    from kbert.export import export_for_serving
    from kbert.serving_tokenizer import write_vocab

    vocab = str(tmp_path / "vocab.txt")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    write_vocab(special + [f"w{i}" for i in range(VOCAB_SIZE - len(special))], vocab)
    jax_base = str(tmp_path / "from_jax")
    # The user's command, in a JAX session: it exports through a TensorFlow-backend subprocess.
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbert",
            "export",
            f"--model={runs['jax']}",
            f"--vocab_file={vocab}",
            f"--export_base={jax_base}",
        ],
        env=JAX_ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    assert exported.returncode == 0, exported.stderr[-4000:]
    jax_export = exported.stdout.splitlines()[0]
    assert jax_export == os.path.join(jax_base, "kbert", "1")
    tf_export = export_for_serving(runs["jax"], vocab, str(tmp_path / "from_tensorflow"))

    x, _, _ = random_batch(4, SEQ_LEN, PREDICTIONS, VOCAB_SIZE, seed=3)
    inputs_path, outputs_path = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    np.savez(inputs_path, **x)
    subprocess.run(
        [
            sys.executable,
            "-c",
            SAVED_MODEL_OUTPUTS,
            inputs_path,
            outputs_path,
            jax_export,
            tf_export,
        ],
        check=True,
        timeout=TIMEOUT_SECONDS,
    )
    outputs = dict(np.load(outputs_path, allow_pickle=True))
    names = sorted(key[2:] for key in outputs if key.startswith("0/"))
    assert "serving_default/nsp_probs" in names and "fill_mask/mlm_top_tokens" in names
    for name in names:
        got, expected = outputs[f"0/{name}"], outputs[f"1/{name}"]
        if got.dtype.kind in "fc":
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)
    # The export holds the trained weights: its probabilities are the JAX-trained model's.
    model = keras.saving.load_model(os.path.join(runs["jax"], "model.keras"))
    nsp = keras.ops.convert_to_numpy(keras.ops.softmax(model(x)["nsp"], axis=-1))
    np.testing.assert_allclose(outputs["0/serving_default/nsp_probs"], nsp, atol=1e-5)


def quick(data, output_dir, **settings):
    """A short deterministic run of the tiny test config (dropout 0) on every device."""
    arguments = dict(steps=2, batch_size=8, seed=3, verbose=0)
    arguments.update(settings)
    return pretrain(tiny_config(), data, str(output_dir), **arguments)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pretraining_records(str(tmp_path_factory.mktemp("data")), num_records=40)


@pytest.mark.jax_only
def test_under_jax_a_run_over_two_devices_writes_every_run_file(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    traces = count_traces(monkeypatch, "train_step")
    result = quick(
        data,
        run,
        steps=4,
        checkpoint_interval=2,
        eval_files=data,
        eval_interval=2,
        eval_batch_size=6,
    )
    assert traces == {"train_step": 1}  # one jit trace (and compilation) for both intervals
    facts = run_facts(str(run))
    assert (facts["backend"], facts["num_replicas"]) == ("jax", 2)
    with open(run / "run_config.json") as f:
        assert json.load(f)["mixed_precision"] == "none"  # "auto": fp32 in the tests
    assert sorted(os.listdir(run / "checkpoints")) == [
        "ckpt-0000002.weights.h5",
        "ckpt-0000004.weights.h5",
    ]
    rows = read_history(str(run))
    steps = [int(r["step"]) for r in rows]
    assert {2, 4} <= set(steps) and steps[-1] == 4 and steps == sorted(steps)
    assert all(math.isfinite(float(r[name])) for r in rows for name in LOSSES)
    evaluated = [float(r["val_loss"]) for r in rows if int(r["step"]) in (2, 4)]
    assert len(evaluated) == 2 and all(math.isfinite(v) for v in evaluated)
    assert os.listdir(run / "logs" / "train")  # TensorBoard events
    with open(run / "eval_results.json") as f:
        saved = json.load(f)
    assert (saved["num_sequences"], saved["step"]) == (40, 4)
    reloaded = keras.saving.load_model(str(run / "model.keras"))
    for a, b in zip(reloaded.weights, result.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=0, err_msg=a.path)


@pytest.mark.jax_only
def test_under_jax_gradient_accumulation_of_two_batches_of_b_equals_steps_of_batch_2b(
    data, tmp_path
):
    sgd = dict(optimizer="sgd", learning_rate=0.5, warmup_steps=0, steps=2)
    accumulated = quick(data, tmp_path / "acc", gradient_accumulation_steps=2, **sgd)
    large = quick(data, tmp_path / "large", batch_size=16, **sgd)
    assert optimizer_step(accumulated.model) == 2
    for a, b in zip(accumulated.model.weights, large.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)


@pytest.mark.jax_only
def test_under_jax_bf16_trains_with_a_finite_loss(data, tmp_path):
    result = quick(data, tmp_path / "bf16", mixed_precision="bf16")
    assert result.model.get_layer("encoder").compute_dtype == "bfloat16"
    assert all(math.isfinite(v) for v in result.history["loss"])


@pytest.mark.jax_only
def test_under_jax_a_diverging_loss_stops_clearly_before_the_next_checkpoint(data, tmp_path):
    run = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match=r"loss became (nan|inf)"):
        quick(data, run, steps=6, checkpoint_interval=2, optimizer="sgd", learning_rate=1e30)
    assert not (run / "model.keras").exists()


@pytest.mark.jax_only
def test_under_jax_a_global_batch_the_devices_cannot_share_is_a_clear_error(data, tmp_path):
    with pytest.raises(ValueError, match=r"global batch size \(7\) must be a multiple .* \(2: "):
        quick(data, tmp_path / "odd", batch_size=7)
    with pytest.raises(ValueError, match=r"global batch size \(5\) must be a multiple"):
        quick(
            data,
            tmp_path / "odd_eval",
            steps=4,
            checkpoint_interval=2,
            eval_files=data,
            eval_interval=2,
            eval_batch_size=5,
        )
    with pytest.raises(ValueError, match="'mirrored' is a TensorFlow strategy"):
        quick(data, tmp_path / "mirrored", strategy="mirrored")


@pytest.mark.jax_only
def test_under_jax_exporting_a_model_object_writes_its_saved_model_and_errors_stay_clear(tmp_path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the text signatures' tokenizer ops)

    from kbert.export import export_for_serving
    from kbert.model import build_pretraining_model
    from kbert.serving_tokenizer import write_vocab

    vocab = str(tmp_path / "vocab.txt")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    write_vocab(special + [f"w{i}" for i in range(VOCAB_SIZE - len(special))], vocab)
    keras.utils.set_random_seed(4)
    model = build_pretraining_model(tiny_config(), SEQ_LEN, PREDICTIONS)
    base = str(tmp_path / "saved_models")
    path = export_for_serving(model, vocab, base)
    assert path == os.path.join(base, "kbert", "1")
    x, _, _ = random_batch(4, SEQ_LEN, PREDICTIONS, VOCAB_SIZE, seed=5)
    served = tf.saved_model.load(path).signatures["serving_default"](
        **{k: tf.constant(v) for k, v in x.items()}
    )
    nsp = keras.ops.convert_to_numpy(keras.ops.softmax(model(x)["nsp"], axis=-1))
    np.testing.assert_allclose(served["nsp_probs"].numpy(), nsp, atol=1e-5)
    with pytest.raises(ValueError, match=r"kbert/1: this version already exists.*subprocess"):
        export_for_serving(model, vocab, base, version=1)


@pytest.mark.jax_only
def test_under_jax_the_current_placement_is_the_distribution_in_scope(tmp_path):
    import tensorflow as tf

    from kbert.distribute import as_placement, resolve_distribution

    placement = resolve_distribution("auto")
    with placement.scope():
        inside = as_placement(None)
    assert (inside.num_replicas, as_placement(None).num_replicas) == (2, 1)
    assert not placement.on_tpu
    assert placement.worker_directory(str(tmp_path)) == str(tmp_path)  # process 0 writes the run
    with pytest.raises(ValueError, match=r"global batch size \(5\) must be a multiple"):
        inside.check_evaluation_batch_size(5)
    with pytest.raises(ValueError, match="tf.distribute strategy .* TensorFlow backend"):
        pretrain(
            tiny_config(),
            str(tmp_path),
            str(tmp_path / "run"),
            strategy=tf.distribute.get_strategy(),
        )


@pytest.mark.tensorflow_only
def test_under_tensorflow_a_strategy_is_a_placement_with_its_meaning(two_cpus, tmp_path):
    import tensorflow as tf

    from kbert.distribute import as_placement

    placement = as_placement(tf.distribute.MirroredStrategy(two_cpus))
    assert (placement.backend, placement.num_replicas, placement.on_tpu) == ("tensorflow", 2, False)
    placement.check_evaluation_batch_size(5)  # tf.distribute splits an uneven batch itself
    with pytest.raises(ValueError, match=r"global batch size \(5\) must be a multiple"):
        placement.check_global_batch_size(5)
    assert placement.worker_directory(str(tmp_path)) == str(tmp_path)
    assert as_placement(None).num_replicas == 1
