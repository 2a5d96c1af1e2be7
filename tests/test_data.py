"""kbert.data: pre-training TFRecords -> (x, y, sample_weight) for fit and evaluate."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config, write_metadata, write_records

from kbert import features
from kbert.data import describe, pretraining_dataset

SEQ = 16
PRED = 4
VOCAB = 100
CLS, SEP, MASK = 2, 3, 4


def make_instances(n, seq=SEQ, pred=PRED, seed=0, masked=True):
    """Random well-formed instances (numpy), each with 1..pred real predictions."""
    rng = np.random.default_rng(seed)
    instances = []
    for _ in range(n):
        real = int(rng.integers(6, seq + 1))
        input_ids = np.zeros(seq, np.int64)
        input_ids[:real] = rng.integers(5, VOCAB, real)
        input_ids[0], input_ids[real - 1] = CLS, SEP
        split = int(rng.integers(2, real - 1))
        instance = {
            "input_ids": input_ids,
            "input_mask": (np.arange(seq) < real).astype(np.int64),
            "segment_ids": ((np.arange(seq) >= split) & (np.arange(seq) < real)).astype(np.int64),
            "next_sentence_labels": np.array([rng.integers(0, 2)], np.int64),
        }
        if masked:
            k = int(rng.integers(1, pred + 1))
            positions = np.sort(rng.choice(np.arange(1, real - 1), k, replace=False))
            instance["masked_lm_positions"] = np.pad(positions, (0, pred - k))
            instance["masked_lm_ids"] = np.pad(input_ids[positions], (0, pred - k))
            instance["masked_lm_weights"] = np.pad(np.ones(k, np.float32), (0, pred - k))
            input_ids[positions] = MASK
        instances.append(instance)
    return instances


def stacked(instances, name):
    return np.stack([instance[name] for instance in instances])


def collect(dataset):
    """Concatenate every batch of a dataset into numpy arrays keyed like the batch."""
    parts = {}
    for x, y, w in dataset:
        flat = {**x, **{f"y_{k}": v for k, v in y.items()}, **{f"w_{k}": v for k, v in w.items()}}
        for key, value in flat.items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def sequence_keys(arrays):
    return sorted(tuple(row) for row in arrays["input_ids"])


def test_records_round_trip_to_the_exact_tensors(tmp_path):
    instances = make_instances(8)
    path = write_records(tmp_path / "eval.tfrecord", instances)

    dataset = pretraining_dataset(path, global_batch_size=4, is_training=False)
    got = collect(dataset)

    for name in ("input_ids", "input_mask", "segment_ids", "masked_lm_positions"):
        np.testing.assert_array_equal(got[name], stacked(instances, name))
    np.testing.assert_array_equal(got["y_mlm"], stacked(instances, "masked_lm_ids"))
    np.testing.assert_array_equal(got["y_nsp"], stacked(instances, "next_sentence_labels")[:, 0])
    np.testing.assert_array_equal(got["w_mlm"], stacked(instances, "masked_lm_weights"))
    np.testing.assert_array_equal(got["w_nsp"], np.ones(8, np.float32))


@pytest.mark.parametrize("is_training", [True, False])
def test_element_spec_is_fully_static_with_int32_ids_and_float32_weights(tmp_path, is_training):
    path = write_records(tmp_path / "a.tfrecord", make_instances(10))

    dataset = pretraining_dataset(path, global_batch_size=4, is_training=is_training, seed=1)

    x, y, w = dataset.element_spec
    assert set(x) == {"input_ids", "segment_ids", "input_mask", "masked_lm_positions"}
    for name in ("input_ids", "segment_ids", "input_mask"):
        assert x[name].shape == (4, SEQ) and x[name].dtype == tf.int32
    positions = x["masked_lm_positions"]
    assert positions.shape == (4, PRED) and positions.dtype == tf.int32
    assert y["mlm"].shape == (4, PRED) and y["mlm"].dtype == tf.int32
    assert y["nsp"].shape == (4,) and y["nsp"].dtype == tf.int32
    assert w["mlm"].shape == (4, PRED) and w["mlm"].dtype == tf.float32
    assert w["nsp"].shape == (4,) and w["nsp"].dtype == tf.float32


def test_gzip_shards_are_read_like_plain_ones(tmp_path):
    instances = make_instances(12, seed=3)
    write_records(tmp_path / "part-0.tfrecord", instances[:6])
    write_records(tmp_path / "part-1.tfrecord.gz", instances[6:], compression="GZIP")

    got = collect(pretraining_dataset(str(tmp_path / "part-*"), 4, is_training=False))

    assert sequence_keys(got) == sorted(tuple(i["input_ids"]) for i in instances)


def test_evaluation_pads_the_last_batch_with_zero_weight_rows_and_knows_its_cardinality(tmp_path):
    instances = make_instances(10, seed=4)
    path = write_records(tmp_path / "eval.tfrecord", instances)

    dataset = pretraining_dataset(path, global_batch_size=4, is_training=False)
    got = collect(dataset)

    assert int(dataset.cardinality()) == 3
    assert got["input_ids"].shape == (12, SEQ)
    np.testing.assert_array_equal(got["w_nsp"], [1.0] * 10 + [0.0] * 2)
    assert got["w_mlm"][10:].sum() == 0 and got["input_mask"][10:].sum() == 0
    assert sequence_keys({"input_ids": got["input_ids"][:10]}) == sorted(
        tuple(i["input_ids"]) for i in instances
    )


def test_evaluation_order_is_deterministic(tmp_path):
    for i in range(3):
        write_records(tmp_path / f"s{i}.tfrecord", make_instances(5, seed=10 + i))

    first = collect(pretraining_dataset(str(tmp_path), 4, is_training=False))
    second = collect(pretraining_dataset(str(tmp_path), 4, is_training=False))

    np.testing.assert_array_equal(first["input_ids"], second["input_ids"])


def test_evaluation_cardinality_comes_from_metadata_counts(tmp_path):
    write_records(tmp_path / "a.tfrecord", make_instances(7, seed=5))
    write_metadata(tmp_path, {"a.tfrecord": 7}, SEQ, PRED, VOCAB)

    dataset = pretraining_dataset(str(tmp_path / "*.tfrecord"), 2, is_training=False)

    assert int(dataset.cardinality()) == 4
    assert collect(dataset)["w_nsp"].sum() == 7


def test_training_repeats_shuffles_and_is_reproducible_with_a_seed(tmp_path):
    instances = make_instances(12, seed=6)
    for i in range(3):
        write_records(tmp_path / f"s{i}.tfrecord", instances[4 * i : 4 * i + 4])
    pattern = str(tmp_path / "*.tfrecord")

    def first_batches(seed):
        dataset = pretraining_dataset(pattern, 4, seed=seed, shuffle_buffer_size=12)
        return collect(dataset.take(6))["input_ids"]

    same_a, same_b, other = first_batches(7), first_batches(7), first_batches(8)

    np.testing.assert_array_equal(same_a, same_b)
    assert not np.array_equal(same_a, other)
    # 24 sequences = two epochs: every record twice, in a different order each epoch.
    assert sequence_keys({"input_ids": same_a}) == sorted(
        2 * [tuple(i["input_ids"]) for i in instances]
    )
    assert not np.array_equal(same_a[:12], same_a[12:])


def test_finite_training_has_its_true_cardinality(tmp_path):
    path = write_records(tmp_path / "a.tfrecord", make_instances(10, seed=7))

    dataset = pretraining_dataset(path, 4, seed=1, num_epochs=2)

    assert int(dataset.cardinality()) == 5
    assert len(list(dataset)) == 5


def test_two_input_pipelines_read_disjoint_files_that_cover_all(tmp_path):
    shards = {}
    for i in range(5):
        instances = make_instances(3, seed=20 + i)
        write_records(tmp_path / f"s{i}.tfrecord", instances)
        shards.update({tuple(inst["input_ids"]): i for inst in instances})

    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        dataset = pretraining_dataset(str(tmp_path), 4, seed=3, input_context=context, num_epochs=1)
        assert dataset.element_spec[0]["input_ids"].shape == (2, SEQ)
        rows = collect(dataset)["input_ids"]
        seen.append({shards[tuple(row)] for row in rows})

    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(5))


def test_evaluation_pipelines_share_records_and_run_the_same_number_of_batches(tmp_path):
    instances = make_instances(11, seed=21)
    write_records(tmp_path / "a.tfrecord", instances[:8])
    write_records(tmp_path / "b.tfrecord", instances[8:])

    rows, cardinalities = [], []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        dataset = pretraining_dataset(str(tmp_path), 4, is_training=False, input_context=context)
        got = collect(dataset)
        cardinalities.append(int(dataset.cardinality()))
        rows += [tuple(r) for r, w in zip(got["input_ids"], got["w_nsp"]) if w == 1.0]

    assert cardinalities == [3, 3]
    assert sorted(rows) == sorted(tuple(i["input_ids"]) for i in instances)


def test_an_evaluation_pipeline_feeding_two_replicas_yields_a_batch_for_each_per_step(tmp_path):
    instances = make_instances(10, seed=22)
    path = write_records(tmp_path / "a.tfrecord", instances)
    # One worker, two devices: MirroredStrategy's input context.
    context = tf.distribute.InputContext(1, 0, 2)

    dataset = pretraining_dataset(path, 4, is_training=False, input_context=context)
    got = collect(dataset)

    # ceil(10 / 4) = 3 global steps of two per-replica batches of 2.
    assert int(dataset.cardinality()) == 6
    np.testing.assert_array_equal(got["w_nsp"], [1.0] * 10 + [0.0] * 2)
    assert sequence_keys({"input_ids": got["input_ids"][:10]}) == sorted(
        tuple(i["input_ids"]) for i in instances
    )


def test_lengths_come_from_metadata(tmp_path):
    write_records(tmp_path / "a.tfrecord", make_instances(4))
    write_metadata(tmp_path, {"a.tfrecord": 4}, SEQ, PRED, VOCAB)

    x, _, _ = pretraining_dataset(str(tmp_path), 2, seed=0).element_spec

    assert x["input_ids"].shape == (2, SEQ) and x["masked_lm_positions"].shape == (2, PRED)


def test_a_length_that_disagrees_with_metadata_names_both_numbers(tmp_path):
    write_records(tmp_path / "a.tfrecord", make_instances(4))
    write_metadata(tmp_path, {"a.tfrecord": 4}, SEQ, PRED, VOCAB)

    with pytest.raises(ValueError, match=r"max_seq_length=32.*max_seq_length 16"):
        pretraining_dataset(str(tmp_path), 2, max_seq_length=32)


def test_lengths_are_inferred_from_the_first_record_without_metadata(tmp_path):
    path = write_records(tmp_path / "google.tfrecord", make_instances(4, seq=24, pred=5))

    x, y, _ = pretraining_dataset(path, 2, seed=0).element_spec

    assert x["input_ids"].shape == (2, 24) and y["mlm"].shape == (2, 5)


def test_records_of_the_wrong_length_name_the_file(tmp_path):
    write_records(tmp_path / "a.tfrecord", make_instances(4))
    write_records(tmp_path / "b.tfrecord", make_instances(4, seq=32))

    with pytest.raises(ValueError, match=r"b\.tfrecord.*input_ids of length 32, expected 16"):
        pretraining_dataset(str(tmp_path), 2, max_seq_length=16)


def test_a_pattern_matching_nothing_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TFRecord files match.*nothing-"):
        pretraining_dataset(str(tmp_path / "nothing-*"), 2)


def test_an_unreadable_shard_names_the_file(tmp_path):
    write_records(tmp_path / "a.tfrecord", make_instances(4))
    (tmp_path / "b.tfrecord").write_bytes(b"this is not a TFRecord file at all" * 10)

    with pytest.raises(ValueError, match=r"b\.tfrecord: not a readable TFRecord file"):
        pretraining_dataset(str(tmp_path), 2)


def test_a_truncated_shard_names_the_file(tmp_path):
    path = write_records(tmp_path / "a.tfrecord", make_instances(6))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-20])

    with pytest.raises(ValueError, match=r"a\.tfrecord: damaged TFRecord file.*truncated"):
        pretraining_dataset(path, 2, is_training=False)


def test_unmasked_records_without_dynamic_masking_say_what_to_pass(tmp_path):
    path = write_records(tmp_path / "a.tfrecord", make_instances(4, masked=False))

    with pytest.raises(ValueError, match="carry no masks.*dynamic_masking="):
        pretraining_dataset(path, 2)


def test_metadata_and_vocab_beside_the_shards_are_not_read_as_records(tmp_path):
    write_records(tmp_path / "a.tfrecord", make_instances(4))
    write_metadata(tmp_path, {"a.tfrecord": 4}, SEQ, PRED, VOCAB)
    (tmp_path / "vocab.txt").write_text("[PAD]\n")

    assert describe(str(tmp_path / "*"))["files"] == [str(tmp_path / "a.tfrecord")]


def test_describe_reports_counts_and_lengths(tmp_path):
    write_records(tmp_path / "a-0.tfrecord", make_instances(5))
    write_records(tmp_path / "a-1.tfrecord", make_instances(3), compression="GZIP")
    write_metadata(tmp_path, {"a-0.tfrecord": 5}, SEQ, PRED, VOCAB)

    info = describe(str(tmp_path))

    assert info["num_files"] == 2 and info["num_records"] == 8
    assert info["records_per_file"] == {
        str(tmp_path / "a-0.tfrecord"): 5,
        str(tmp_path / "a-1.tfrecord"): 3,
    }
    assert (info["max_seq_length"], info["max_predictions_per_seq"]) == (SEQ, PRED)
    assert info["masked"] is True and info["vocab_size"] == VOCAB
    assert info["compression"] == ["GZIP", "none"]


@pytest.fixture(scope="module")
def mirrored():
    """MirroredStrategy over the two logical CPUs, reducing without collective ops.

    With the default collective all-reduce, a MirroredStrategy that trains after another one
    evaluated in the same process aborts (collective instance keys collide, TF 2.21), which
    would break other modules' strategy tests run after these.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def tiny_model():
    import keras

    import kbert

    keras.utils.set_random_seed(0)
    model = kbert.build_pretraining_model(tiny_config(vocab_size=VOCAB, dropout=0.1), SEQ, PRED)
    kbert.compile_for_pretraining(model, keras.optimizers.SGD(0.01))
    return model


def numpy_log_softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("replicas", [1, 2])
def test_evaluate_reports_whole_set_weighted_means(tmp_path, request, replicas):
    instances = make_instances(10, seed=30)
    path = write_records(tmp_path / "eval.tfrecord", instances)
    dataset = pretraining_dataset(path, global_batch_size=4, is_training=False)
    real_predictions = [collect(dataset.skip(i).take(1))["w_mlm"].sum() for i in range(3)]
    assert len(set(real_predictions)) > 1

    if replicas == 2:
        with request.getfixturevalue("mirrored").scope():
            model = tiny_model()
    else:
        model = tiny_model()
    logs = model.evaluate(dataset, return_dict=True, verbose=0)

    x = {name: stacked(instances, name).astype(np.int32) for name in features.MODEL_INPUTS}
    outputs = model(x, training=False)
    mlm_logp = numpy_log_softmax(np.asarray(outputs["mlm"], np.float64))
    nsp_logp = numpy_log_softmax(np.asarray(outputs["nsp"], np.float64))
    labels = stacked(instances, "masked_lm_ids")
    weights = stacked(instances, "masked_lm_weights")
    nsp_labels = stacked(instances, "next_sentence_labels")[:, 0]
    mlm_ce = -np.take_along_axis(mlm_logp, labels[..., None], axis=-1)[..., 0]
    nsp_ce = -nsp_logp[np.arange(10), nsp_labels]
    expected = {
        "mlm_loss": (weights * mlm_ce).sum() / weights.sum(),
        "mlm_accuracy": (weights * (mlm_logp.argmax(-1) == labels)).sum() / weights.sum(),
        "nsp_loss": nsp_ce.mean(),
        "nsp_accuracy": (nsp_logp.argmax(-1) == nsp_labels).mean(),
    }
    expected["loss"] = expected["mlm_loss"] + expected["nsp_loss"]
    for name, value in expected.items():
        assert logs[name] == pytest.approx(value, abs=1e-5), name


def test_evaluate_over_per_replica_pipelines_equals_the_single_pipeline(tmp_path, mirrored):
    path = write_records(tmp_path / "eval.tfrecord", make_instances(10, seed=30))
    with mirrored.scope():
        model = tiny_model()
    # The single pipeline's numbers are checked against numpy above.
    single = model.evaluate(
        pretraining_dataset(path, 4, is_training=False), return_dict=True, verbose=0
    )

    distributed = mirrored.distribute_datasets_from_function(
        lambda context: pretraining_dataset(path, 4, is_training=False, input_context=context)
    )
    logs = model.evaluate(distributed, return_dict=True, verbose=0)

    for name, value in single.items():
        assert logs[name] == pytest.approx(value, abs=1e-6), name


def test_fit_over_n_finite_batches_takes_exactly_n_steps(tmp_path):
    path = write_records(tmp_path / "a.tfrecord", make_instances(10, seed=31))
    evaluation = pretraining_dataset(path, 4, is_training=False)
    training = pretraining_dataset(path, 4, seed=2, num_epochs=2)
    model = tiny_model()

    model.fit(evaluation, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 3
    model.fit(training, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 3 + 5


def test_fit_runs_under_mirrored_strategy(tmp_path, mirrored):
    for i in range(2):
        write_records(tmp_path / f"s{i}.tfrecord", make_instances(8, seed=40 + i))
    with mirrored.scope():
        model = tiny_model()

    history = model.fit(
        pretraining_dataset(str(tmp_path), 4, seed=3), steps_per_epoch=3, epochs=1, verbose=0
    )
    distributed = mirrored.distribute_datasets_from_function(
        lambda context: pretraining_dataset(str(tmp_path), 4, seed=3, input_context=context)
    )
    model.fit(distributed, steps_per_epoch=2, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"]).all()
    assert int(model.optimizer.iterations.numpy()) == 5


def test_records_written_by_tfrecords_tools_are_read_masked_gzip_and_unmasked(tmp_path):
    from kbert.masking import DynamicMasking
    from tfrecords_tools import corpora, vocab
    from tfrecords_tools.create_pretraining_data import create_pretraining_data

    documents = [
        [f"Document {d} says {s} things about {d * s % 7}." for s in range(6)] for d in range(12)
    ]
    vocab_file = str(tmp_path / "vocab.txt")
    vocab.learn_vocab(corpora.sentences_of(documents), vocab_file, vocab_size=200)
    settings = dict(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=2, num_shards=2)
    masked = create_pretraining_data(
        documents, str(tmp_path / "masked" / "train"), vocab_file, compression="gzip", **settings
    )
    unmasked = create_pretraining_data(
        documents, str(tmp_path / "unmasked" / "train"), vocab_file, mask=False, **settings
    )

    info = describe(str(tmp_path / "masked"), count_records=False)
    assert info["num_records"] == masked.num_instances and info["compression"] == ["GZIP"]
    got = collect(pretraining_dataset(str(tmp_path / "masked"), 4, is_training=False))
    assert got["w_nsp"].sum() == masked.num_instances
    assert got["w_mlm"].sum() == info["num_masked_predictions"]

    dynamic = pretraining_dataset(
        str(tmp_path / "unmasked"),
        4,
        is_training=False,
        dynamic_masking=DynamicMasking.from_vocab_file(vocab_file),
    )
    got = collect(dynamic)
    assert dynamic.element_spec[1]["mlm"].shape == (4, PRED)
    assert got["w_nsp"].sum() == unmasked.num_instances
    assert (got["w_mlm"].sum(axis=1)[got["w_nsp"] == 1] >= 1).all()
