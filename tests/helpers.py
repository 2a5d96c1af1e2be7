"""Small fixtures shared by the tests: a tiny BertConfig, a count of step traces, one batch as the
pipeline yields it, records on disk, a walk through a traced step's graph (its function calls and
XLA calls), and a cluster of processes on 127.0.0.1, the environment of a JAX subprocess over 2
CPU devices."""

import os


def count_traces(monkeypatch, *names: str) -> dict[str, int]:
    """{name: calls} of `BertPretrainingModel`'s step methods `names`, counted from now on: a
    traced step (tf.function, jax.jit) runs its Python once per trace."""
    from kbert.model import BertPretrainingModel

    traces = dict.fromkeys(names, 0)

    def counted(name):
        step = getattr(BertPretrainingModel, name)

        def counting(self, *args):
            traces[name] += 1
            return step(self, *args)

        return counting

    for name in names:
        monkeypatch.setattr(BertPretrainingModel, name, counted(name))
    return traces


def tiny_config(vocab_size: int = 100, dropout: float = 0.0, **overrides):
    """A BertConfig small enough for a test to train in seconds."""
    from kbert.config import BertConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    fields.update(overrides)
    return BertConfig(**fields)


def random_batch(batch_size=8, seq_len=16, num_predictions=4, vocab_size=100, seed=0):
    """One `(x, y, sample_weight)` batch as kbert's pipeline yields it, with ragged MLM weights."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(num_predictions + 2, seq_len + 1, batch_size)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype("int32")
    ids = rng.integers(5, vocab_size, (batch_size, seq_len)).astype("int32") * mask
    segments = ((np.arange(seq_len)[None, :] >= lengths[:, None] // 2) * mask).astype("int32")
    # Sequence i has 1 + i % num_predictions real predictions; the rest are padding.
    real = 1 + np.arange(batch_size) % num_predictions
    weights = (np.arange(num_predictions)[None, :] < real[:, None]).astype("float32")
    positions = np.stack(
        [np.sort(rng.choice(np.arange(1, n), num_predictions, replace=False)) for n in lengths]
    ).astype("int32") * weights.astype("int32")
    labels = rng.integers(5, vocab_size, (batch_size, num_predictions)).astype("int32")
    labels = labels * weights.astype("int32")
    x = {
        "input_ids": ids,
        "segment_ids": segments,
        "input_mask": mask,
        "masked_lm_positions": positions,
    }
    y = {"mlm": labels, "nsp": rng.integers(0, 2, batch_size).astype("int32")}
    sample_weight = {"mlm": weights, "nsp": np.ones(batch_size, "float32")}
    return x, y, sample_weight


def write_records(path, rows, compression=None):
    """Google's writer layout: one tf.train.Example per row (a dict of feature values, or bytes
    already serialized). Returns the path as a string."""
    import tensorflow as tf

    from kbert import features

    with tf.io.TFRecordWriter(str(path), options=compression) as writer:
        for row in rows:
            writer.write(
                row if isinstance(row, bytes) else features.to_example(row).SerializeToString()
            )
    return str(path)


def write_metadata(
    directory, shards, max_seq_length, max_predictions_per_seq, vocab_size=100, **fields
):
    """`kbert_metadata.json` for `shards` ({file name: records}) in `directory`; `fields`
    override the rest (masked, nsp_label_counts, num_masked_predictions, seed...)."""
    from kbert import features

    values = dict(
        max_seq_length=max_seq_length,
        max_predictions_per_seq=max_predictions_per_seq,
        vocab_size=vocab_size,
        vocab_sha256="0" * 64,
        do_lower_case=True,
        num_instances=sum(shards.values()),
        nsp_label_counts={"0": 1, "1": 1},
        seed=12345,
        tool_version="test",
        shards=dict(shards),
    )
    values.update(fields)
    features.write_metadata(str(directory), features.Metadata(**values))


def write_pretraining_records(
    directory, num_records=64, seq_len=16, num_predictions=3, vocab_size=100, seed=0
):
    """Masked pre-training TFRecords (one shard + kbert_metadata.json) in `directory`.

    Every record has `num_predictions` real predictions (weights 1), [MASK] (id 4) at those
    positions in the input, and NSP label i % 2. Returns the directory.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    rows = []
    for i in range(num_records):
        ids = rng.integers(5, vocab_size, seq_len)
        ids[0], ids[-1] = 2, 3
        positions = np.sort(rng.choice(np.arange(1, seq_len - 1), num_predictions, replace=False))
        labels = ids[positions].copy()
        ids[positions] = 4
        rows.append(
            {
                "input_ids": ids,
                "input_mask": [1] * seq_len,
                "segment_ids": [0] * (seq_len // 2) + [1] * (seq_len - seq_len // 2),
                "masked_lm_positions": positions,
                "masked_lm_ids": labels,
                "masked_lm_weights": [1.0] * num_predictions,
                "next_sentence_labels": [i % 2],
            }
        )
    write_records(os.path.join(directory, "shard-00000.tfrecord"), rows)
    write_metadata(
        directory,
        {"shard-00000.tfrecord": num_records},
        seq_len,
        num_predictions,
        vocab_size,
        nsp_label_counts={"0": (num_records + 1) // 2, "1": num_records // 2},
        seed=seed,
        num_masked_predictions=num_records * num_predictions,
    )
    return directory


def compiled_tiny(optimizer=None, seed=0, **kwargs):
    """The tiny config's pre-training model from `seed`, compiled by kbert (SGD 0.5 by default)."""
    import keras

    import kbert

    keras.utils.set_random_seed(seed)
    model = kbert.build_pretraining_model(tiny_config(), 16, 4)
    kbert.compile_for_pretraining(model, optimizer or keras.optimizers.SGD(0.5), **kwargs)
    return model


CALL_OPS = ("PartitionedCall", "StatefulPartitionedCall")


def function_op_types(graph_def, name: str) -> list[str]:
    """The type of every op the graph's library function `name` runs, nested calls included."""
    library = {f.signature.name: f for f in graph_def.library.function}

    def types(function: str) -> list[str]:
        return [
            op
            for node in library[function].node_def
            for op in (types(node.attr["f"].func.name) if node.op in CALL_OPS else [node.op])
        ]

    return types(name)


def is_xla_call(op) -> bool:
    """Whether graph op `op` calls a function that XLA compiles."""
    return op.type in CALL_OPS and (
        op.get_attr("_XlaMustCompile") if "_XlaMustCompile" in op.node_def.attr else False
    )


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_cluster(command, workers=2, timeout=300):
    """Run `command` as every worker of a TF_CONFIG cluster on 127.0.0.1: [(return code,
    output)]; every worker is killed after `timeout` seconds."""
    import json
    import subprocess

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    processes = []
    for index in range(workers):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(task), TF_CPP_MIN_LOG_LEVEL="2")
        processes.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [(process.returncode, output) for process, output in zip(processes, outputs)]


def joint_worker_batches(data, global_batch, seed, workers=2):
    """The global batches a cluster of `workers` trains on, as one dataset: each is worker 0's
    share of the batch, then worker 1's, ... as their pipelines yield them."""
    import tensorflow as tf

    from kbert.data import pretraining_dataset
    from kbert.train import _without_global_tf_seed

    with _without_global_tf_seed():
        pipelines = [
            pretraining_dataset(
                data,
                global_batch,
                is_training=True,
                seed=seed,
                input_context=tf.distribute.InputContext(workers, index, workers),
            )
            for index in range(workers)
        ]
    return tf.data.Dataset.zip(tuple(pipelines)).map(
        lambda *shares: tf.nest.map_structure(lambda *parts: tf.concat(parts, 0), *shares)
    )


# A subprocess on Keras' JAX backend over 2 CPU devices (set before JAX starts).
JAX_ENV = dict(
    os.environ,
    KERAS_BACKEND="jax",
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    TF_CPP_MIN_LOG_LEVEL="2",
)
