"""MultiWorkerMirroredStrategy: two workers on 127.0.0.1 (the multi-host proxy), each running
`kbert train` then, in the same process (a cluster's start costs more than its runs), `kbert
finetune` of tests/finetune_task.py's task."""

import json
import os
import shutil
import sys
import textwrap

import keras
import numpy as np
import pytest
from finetune_task import assert_same_predictions, flags, read_results
from helpers import joint_worker_batches, run_cluster, tiny_config, write_pretraining_records

import kbert
from kbert.distribute import resolve_strategy
from kbert.optimization import create_optimizer

STEPS, GLOBAL_BATCH, SEED, LEARNING_RATE = 3, 8, 3, 0.5
# Each worker: `kbert train` with the arguments before "--then", `kbert finetune` with the rest.
TRAIN_THEN_FINETUNE = textwrap.dedent("""
    import sys
    from kbert.cli import main

    split = sys.argv.index("--then")
    status = main(["train", *sys.argv[1:split]])
    sys.exit(status or main(["finetune", *sys.argv[split + 1 :]]))
""")


@pytest.fixture(scope="module")
def multi_worker_run(tmp_path_factory, finetune_task):
    """Two workers of one cluster train the tiny config for 3 SGD steps of global batch 8, then
    fine-tune the shared task's encoder (and export it): (work directory, data, each worker's
    output)."""
    work = tmp_path_factory.mktemp("multi_worker")
    data = write_pretraining_records(str(work / "data"))
    config_file = str(work / "bert_config.json")
    tiny_config().to_json_file(config_file)
    child = work / "train_then_finetune.py"
    child.write_text(TRAIN_THEN_FINETUNE)
    command = [
        sys.executable,
        str(child),
        "--config",
        config_file,
        "--train_files",
        data,
        "--output_dir",
        str(work / "run"),
        "--steps",
        str(STEPS),
        "--batch_size",
        str(GLOBAL_BATCH),
        "--seed",
        str(SEED),
        "--optimizer",
        "sgd",
        "--learning_rate",
        str(LEARNING_RATE),
        "--warmup_steps",
        "0",
        "--strategy",
        "multi_worker",
        "--eval_files",
        data,
        "--verbose",
        "0",
        "--then",
        *flags(finetune_task, str(work / "finetune")),
        "--strategy=multi_worker",
        f"--export_base={work / 'served'}",
    ]
    outputs = []
    for returncode, output in run_cluster(command):
        assert returncode == 0, output[-3000:]
        outputs.append(output)
    return work, data, outputs


def one_device_on_joint_batches(data, steps, before=None, trained=None):
    """The tiny model trained on one device for the first `trained` (default: all) SGD updates
    of a `steps`-update run, each on worker 0's batch of 4 then worker 1's, as the cluster's
    pipelines yield them."""
    joint = joint_worker_batches(data, GLOBAL_BATCH, SEED)
    keras.utils.set_random_seed(SEED)
    model = kbert.build_pretraining_model(tiny_config(), 16, 3)
    kbert.compile_for_pretraining(model, create_optimizer(LEARNING_RATE, steps, optimizer="sgd"))
    if before is not None:
        before.extend(w.numpy() for w in model.weights)
    model.fit(joint, epochs=1, steps_per_epoch=trained or steps, verbose=0, shuffle=False)
    return model


def test_two_workers_train_the_weights_of_one_device_on_their_joint_batches(multi_worker_run):
    work, data, _ = multi_worker_run
    chief = keras.saving.load_model(str(work / "run" / "model.keras"))
    assert int(chief.optimizer.iterations.numpy()) == STEPS
    # The other worker holds the same weights and wrote to its own directory.
    other = keras.saving.load_model(str(work / "run" / "workers" / "worker-1" / "model.keras"))
    for a, b in zip(chief.weights, other.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    before = []
    reference = one_device_on_joint_batches(data, STEPS, before)
    for a, b in zip(chief.weights, reference.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
    moved = max(np.abs(w.numpy() - w0).max() for w, w0 in zip(reference.weights, before))
    assert moved > 1e-3  # the updates moved the weights: the match is not vacuous


def test_multi_worker_evaluation_equals_one_device(multi_worker_run):
    work, data, _ = multi_worker_run
    with open(work / "run" / "eval_results.json") as f:
        distributed = json.load(f)
    single = kbert.evaluate(
        str(work / "run" / "model.keras"), data, batch_size=GLOBAL_BATCH, strategy="cpu", verbose=0
    )
    assert distributed["num_sequences"] == single["num_sequences"] == 64
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
        assert distributed[name] == pytest.approx(single[name], abs=1e-5), name


def test_two_workers_fine_tune_as_one_device_and_only_the_chief_writes(
    multi_worker_run, finetune_task, one_device_finetuning
):
    work, _, outputs = multi_worker_run
    output_dir = work / "finetune"
    difference = assert_same_predictions(str(output_dir), one_device_finetuning, finetune_task)
    print(f"largest dev logit difference, 2 workers against one device: {difference:.2e}")
    # The chief's files are complete; the other worker wrote none (no second export either).
    results = read_results(str(output_dir))
    assert sorted(os.listdir(output_dir)) == [
        "best_model.keras",
        "finetune_results.json",
        "finetune_results.txt",
        "test_predictions.tsv",
    ]
    assert results["export"] == str(work / "served" / "classifier" / "1")
    assert os.listdir(work / "served" / "classifier") == ["1"]
    assert os.path.exists(os.path.join(results["export"], "saved_model.pb"))
    # Both workers chose the same cell on the same dev scores.
    chosen = [
        [line for line in output.splitlines() if line.startswith('{"best"')] for output in outputs
    ]
    assert chosen[0] == chosen[1] == [json.dumps({"best": results["best"]}, sort_keys=True)]
    # Only the chief (worker 0) says where the results are: the other wrote none.
    said = [
        [line for line in output.splitlines() if line.startswith("results: ")] for output in outputs
    ]
    assert said == [[f"results: {output_dir}/finetune_results.json"], []]


@pytest.mark.parametrize(
    "tf_config, message", [(None, "needs the TF_CONFIG"), ("{not json", "not a JSON object")]
)
def test_multi_worker_without_a_usable_tf_config_is_a_named_error(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=message):
        resolve_strategy("multi_worker")


def test_auto_picks_multi_worker_only_for_a_cluster_of_workers(monkeypatch, caplog):
    workers = ["127.0.0.1:1", "127.0.0.1:2"]
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {
                "cluster": {"worker": workers, "ps": ["127.0.0.1:3"]},
                "task": {"type": "worker", "index": 0},
            }
        ),
    )
    with caplog.at_level("INFO", logger="kbert.distribute"):
        assert resolve_strategy("auto").num_replicas_in_sync == 1  # parameter servers: not ours
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}}),
    )
    # This process has run TensorFlow already: too late for collectives, and the error says so.
    with pytest.raises(ValueError, match="before TensorFlow runs anything"):
        resolve_strategy("auto")


# A 6-step run killed twice: both workers once their step-2 checkpoint and backup are on disk;
# then, rerun, once both workers' step-4 backups are current, after worker 1 has put its pointer
# back on its step-2 state, as a kill between its step-4 manifest and pointer would have left it:
# the workers stop one interval apart.
KILLED_TWICE_CHILD = textwrap.dedent("""
    import json, logging, os, signal, sys
    import keras
    sys.path.insert(0, {tests!r})
    from helpers import tiny_config
    from kbert.train import pretrain

    logging.basicConfig(level=logging.INFO)
    data, run_dir, markers = sys.argv[1:4]
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    class KillAtSteps2And4(keras.callbacks.Callback):
        # Runs after kbert's callbacks: this worker's checkpoint and backup are on disk.
        def on_epoch_end(self, epoch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            marker = os.path.join(markers, f"killed-{{step}}-{{index}}")
            if step not in (2, 4) or os.path.exists(marker):
                return
            open(marker, "w").close()
            if step == 4 and index == 1:
                backup = os.path.join(run_dir, "workers", "worker-1", "backup")
                pointer = os.path.join(backup, "current.json")
                with open(pointer) as f:
                    current = json.load(f)
                [previous] = [n for n in os.listdir(backup)
                              if n.startswith("interval-") and n != current["state"]]
                with open(pointer, "w") as f:
                    json.dump({{"format": 1, "state": previous, "epoch": 1, "step": 2}}, f)
            os.kill(os.getpid(), signal.SIGKILL)

    pretrain(tiny_config(), data, run_dir, steps=6, checkpoint_interval=2, batch_size={batch},
             seed={seed}, optimizer="sgd", learning_rate={learning_rate}, warmup_steps=0,
             strategy="multi_worker", callbacks=[KillAtSteps2And4()], verbose=0)
""")


@pytest.fixture(scope="module")
def killed_twice(multi_worker_run, tmp_path_factory):
    """The cluster killed after step 2, rerun and killed after step 4 with its workers one
    interval apart, rerun to the end: (run directory, the second run's outputs, its step-4
    checkpoint, the last run's outputs). One chain: a cluster's start costs more than its run."""
    _, data, _ = multi_worker_run
    work = tmp_path_factory.mktemp("killed_twice")
    child = work / "child.py"
    child.write_text(
        KILLED_TWICE_CHILD.format(
            tests=os.path.dirname(__file__),
            batch=GLOBAL_BATCH,
            seed=SEED,
            learning_rate=LEARNING_RATE,
        )
    )
    run = work / "run"
    command = [sys.executable, str(child), data, str(run), str(work)]
    for returncode, output in run_cluster(command):
        assert returncode == -9, output[-3000:]  # both killed by SIGKILL after step 2
    second = run_cluster(command)
    for returncode, output in second:
        assert returncode == -9, output[-3000:]  # both killed by SIGKILL after step 4
    step_4 = str(work / "ckpt-0000004.weights.h5")
    shutil.copy(run / "checkpoints" / "ckpt-0000004.weights.h5", step_4)
    last = run_cluster(command)
    for returncode, output in last:
        assert returncode == 0, output[-3000:]
    return run, [output for _, output in second], step_4, [output for _, output in last]


def test_a_killed_cluster_rerun_resumes_where_it_stopped(multi_worker_run, killed_twice):
    _, data, _ = multi_worker_run
    _, second, step_4, _ = killed_twice
    for output in second:
        assert "from step 2 " in output, output[-3000:]
    # Steps 3 and 4 ran once each on the batches a straight run would have used.
    resumed = kbert.build_pretraining_model(tiny_config(), 16, 3)
    resumed.load_weights(step_4)
    reference = one_device_on_joint_batches(data, 6, trained=4)
    for a, b in zip(resumed.weights, reference.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)


def test_workers_killed_at_different_intervals_resume_from_the_one_both_finished(
    multi_worker_run, killed_twice
):
    _, data, _ = multi_worker_run
    run, _, _, last = killed_twice
    for output in last:
        assert "from step 2 " in output, output[-3000:]  # worker 0 too, from its previous state
    resumed = keras.saving.load_model(str(run / "model.keras"))
    assert int(resumed.optimizer.iterations.numpy()) == 6
    reference = one_device_on_joint_batches(data, 6)
    for a, b in zip(resumed.weights, reference.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)
