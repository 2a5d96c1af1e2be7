"""Checkpoint interop: Google TF1 checkpoints, keras-hub presets and Hugging Face folders."""

import dataclasses
import json
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from helpers import tiny_config

import kbert
import kbert.io
from kbert.checkpoints import (
    detect_source,
    init_encoder,
    init_from,
    load_google_checkpoint,
    read_source_config,
    save_encoder_preset,
    save_google_checkpoint,
)

SEQ, PRED = 16, 4
GOOGLE_POSITIONS = 512  # Google's released checkpoints always hold a 512-row position table.


def config_of(**overrides):
    fields = dict(num_hidden_layers=2)
    fields.update(overrides)
    return tiny_config(**fields)


def pretraining_model(config=None):
    return kbert.build_pretraining_model(config or config_of(), SEQ, PRED)


def weights_by_path(model):
    return {variable.path: np.asarray(variable.numpy()) for variable in model.weights}


def google_values(config, seed=0, positions=GOOGLE_POSITIONS, heads=True):
    """Random arrays under Google's variable names and shapes for `config`."""
    rng = np.random.default_rng(seed)
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {
        "bert/embeddings/word_embeddings": [v, h],
        "bert/embeddings/position_embeddings": [positions, h],
        "bert/embeddings/token_type_embeddings": [config.type_vocab_size, h],
        "bert/embeddings/LayerNorm/gamma": [h],
        "bert/embeddings/LayerNorm/beta": [h],
        "bert/pooler/dense/kernel": [h, h],
        "bert/pooler/dense/bias": [h],
    }
    for n in range(config.num_hidden_layers):
        p = f"bert/encoder/layer_{n}"
        for name in (
            "attention/self/query",
            "attention/self/key",
            "attention/self/value",
            "attention/output/dense",
        ):
            shapes[f"{p}/{name}/kernel"], shapes[f"{p}/{name}/bias"] = [h, h], [h]
        shapes[f"{p}/intermediate/dense/kernel"] = [h, i]
        shapes[f"{p}/intermediate/dense/bias"] = [i]
        shapes[f"{p}/output/dense/kernel"], shapes[f"{p}/output/dense/bias"] = [i, h], [h]
        for name in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[f"{p}/{name}/gamma"], shapes[f"{p}/{name}/beta"] = [h], [h]
    if heads:
        shapes.update(
            {
                "cls/predictions/transform/dense/kernel": [h, h],
                "cls/predictions/transform/dense/bias": [h],
                "cls/predictions/transform/LayerNorm/gamma": [h],
                "cls/predictions/transform/LayerNorm/beta": [h],
                "cls/predictions/output_bias": [v],
                "cls/seq_relationship/output_weights": [2, h],
                "cls/seq_relationship/output_bias": [2],
            }
        )
    return {name: rng.standard_normal(shape).astype("float32") for name, shape in shapes.items()}


def write_tf1_checkpoint(values, prefix, optimizer_state=True):
    """What google-research/bert's run_pretraining.py leaves: weights, Adam slots, global_step."""
    graph = tf.compat.v1.Graph()
    with graph.as_default():
        for name, value in values.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
            if optimizer_state:
                for slot in ("adam_m", "adam_v"):
                    tf.compat.v1.get_variable(
                        f"{name}/{slot}",
                        shape=value.shape,
                        initializer=tf.compat.v1.zeros_initializer(),
                    )
        if optimizer_state:
            tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, prefix)
    return prefix


def expected_from_google(values, config):
    """kbert weight path -> the value Google's variable must give it (written out independently)."""
    h, a = config.hidden_size, config.num_attention_heads
    g = values
    expected = {
        "token_embedding/embeddings": g["bert/embeddings/word_embeddings"],
        "position_embedding/embeddings": g["bert/embeddings/position_embeddings"][
            : config.max_position_embeddings
        ],
        "segment_embedding/embeddings": g["bert/embeddings/token_type_embeddings"],
        "embeddings_layer_norm/gamma": g["bert/embeddings/LayerNorm/gamma"],
        "embeddings_layer_norm/beta": g["bert/embeddings/LayerNorm/beta"],
        "pooled_dense/kernel": g["bert/pooler/dense/kernel"],
        "pooled_dense/bias": g["bert/pooler/dense/bias"],
    }
    for n in range(config.num_hidden_layers):
        p, k = f"bert/encoder/layer_{n}", f"transformer_layer_{n}"
        for name in ("query", "key", "value"):
            expected[f"{k}/self_attention_layer/{name}/kernel"] = g[
                f"{p}/attention/self/{name}/kernel"
            ].reshape(h, a, h // a)
            expected[f"{k}/self_attention_layer/{name}/bias"] = g[
                f"{p}/attention/self/{name}/bias"
            ].reshape(a, h // a)
        expected[f"{k}/self_attention_layer/attention_output/kernel"] = g[
            f"{p}/attention/output/dense/kernel"
        ].reshape(a, h // a, h)
        expected[f"{k}/self_attention_layer/attention_output/bias"] = g[
            f"{p}/attention/output/dense/bias"
        ]
        for ours, theirs in (
            ("self_attention_layer_norm", "attention/output/LayerNorm"),
            ("feedforward_layer_norm", "output/LayerNorm"),
        ):
            expected[f"{k}/{ours}/gamma"] = g[f"{p}/{theirs}/gamma"]
            expected[f"{k}/{ours}/beta"] = g[f"{p}/{theirs}/beta"]
        for ours, theirs in (
            ("feedforward_intermediate_dense", "intermediate/dense"),
            ("feedforward_output_dense", "output/dense"),
        ):
            expected[f"{k}/{ours}/kernel"] = g[f"{p}/{theirs}/kernel"]
            expected[f"{k}/{ours}/bias"] = g[f"{p}/{theirs}/bias"]
    if "cls/predictions/output_bias" in g:
        expected.update(
            {
                "mlm_head/intermediate_dense/kernel": g["cls/predictions/transform/dense/kernel"],
                "mlm_head/intermediate_dense/bias": g["cls/predictions/transform/dense/bias"],
                "mlm_head/intermediate_layer_norm/gamma": g[
                    "cls/predictions/transform/LayerNorm/gamma"
                ],
                "mlm_head/intermediate_layer_norm/beta": g[
                    "cls/predictions/transform/LayerNorm/beta"
                ],
                "mlm_head/output_bias": g["cls/predictions/output_bias"],
                "nsp/kernel": g["cls/seq_relationship/output_weights"].T,
                "nsp/bias": g["cls/seq_relationship/output_bias"],
            }
        )
    return expected


@pytest.fixture(scope="module")
def google_checkpoint(tmp_path_factory):
    """A Google-layout TF1 checkpoint (with Adam slots and a 512-row position table)."""
    config = config_of()
    values = google_values(config)
    directory = tmp_path_factory.mktemp("google")
    prefix = write_tf1_checkpoint(values, str(directory / "bert_model.ckpt"))
    return config, values, prefix


def test_google_checkpoint_fills_every_weight_of_the_model(google_checkpoint):
    config, values, prefix = google_checkpoint
    model = pretraining_model(config)
    report = load_google_checkpoint(model, prefix)

    expected = expected_from_google(values, config)
    weights = weights_by_path(model)
    assert sorted(weights) == sorted(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(weights[path], value, err_msg=path)
    assert report.missing == [] and report.unused == []
    assert sorted(report.loaded) == sorted(values)
    assert len(report.ignored) == 2 * len(values) + 1  # adam_m, adam_v per variable, global_step
    assert report.parts == ["encoder", "MLM head", "NSP head"]
    assert any(
        f"{GOOGLE_POSITIONS} to the model's {config.max_position_embeddings}" in note
        for note in report.notes
    )


def test_save_google_checkpoint_then_load_is_the_identity(tmp_path):
    config = config_of()
    source = pretraining_model(config)
    prefix = save_google_checkpoint(source, str(tmp_path / "out" / "bert_model.ckpt"))
    target = pretraining_model(config)
    assert not np.array_equal(
        target.get_layer("nsp").kernel.numpy(), source.get_layer("nsp").kernel.numpy()
    )

    report = load_google_checkpoint(target, prefix)

    before, after = weights_by_path(source), weights_by_path(target)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert report.missing == [] and report.unused == [] and report.ignored == []


def test_saved_checkpoint_restores_in_tf1_under_googles_names(tmp_path):
    config = config_of()
    model = pretraining_model(config)
    vocab = tmp_path / "vocab_in.txt"
    vocab.write_text("\n".join(f"w{i}" for i in range(config.vocab_size)) + "\n")
    prefix = save_google_checkpoint(model, str(tmp_path / "bert_model.ckpt"), vocab_file=str(vocab))
    google_shapes = {
        name: value.shape
        for name, value in google_values(config, positions=config.max_position_embeddings).items()
    }

    graph = tf.compat.v1.Graph()
    with graph.as_default():
        variables = {
            name: tf.compat.v1.get_variable(name, shape=shape)
            for name, shape in google_shapes.items()
        }
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            saver.restore(session, prefix)
            restored = session.run(variables)

    assert set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map()) == set(google_shapes)
    expected = expected_from_google(restored, config)
    for path, value in weights_by_path(model).items():
        np.testing.assert_array_equal(expected[path], value, err_msg=path)
    with open(tmp_path / "bert_config.json") as f:
        assert json.load(f) == config.to_dict()
    assert (tmp_path / "vocab.txt").read_text() == vocab.read_text()


@pytest.mark.parametrize(
    "checkpoint_overrides, match",
    [
        (
            dict(hidden_size=64, intermediate_size=128),
            r"bert/embeddings/word_embeddings .*hidden_size=32",
        ),
        (dict(vocab_size=120), r"bert/embeddings/word_embeddings .*vocab_size=100"),
        (
            dict(intermediate_size=128),
            r"bert/encoder/layer_0/intermediate/dense/kernel .*intermediate_size=64",
        ),
        (dict(num_hidden_layers=3), r"bert/encoder/layer_2/.* num_hidden_layers=2"),
        (dict(num_hidden_layers=1), r"no variable bert/encoder/layer_1/"),
    ],
)
def test_checkpoint_of_another_config_fails_naming_the_variable(
    tmp_path, checkpoint_overrides, match
):
    values = google_values(config_of(**checkpoint_overrides))
    prefix = write_tf1_checkpoint(values, str(tmp_path / "bert_model.ckpt"), optimizer_state=False)
    model = pretraining_model()
    before = weights_by_path(model)

    with pytest.raises(ValueError, match=match):
        load_google_checkpoint(model, prefix)
    after = weights_by_path(model)
    assert all(np.array_equal(before[path], after[path]) for path in before)


@pytest.mark.parametrize("damaged", ["index", "data"])
def test_a_damaged_checkpoint_fails_naming_it(google_checkpoint, tmp_path, damaged):
    _, values, _ = google_checkpoint
    prefix = write_tf1_checkpoint(values, str(tmp_path / "bert_model.ckpt"), optimizer_state=False)
    if damaged == "index":
        (tmp_path / "bert_model.ckpt.index").write_bytes(b"not an index")
    else:
        (data,) = tmp_path.glob("bert_model.ckpt.data-*")
        data.write_bytes(data.read_bytes()[:100])

    message = r"bert_model\.ckpt: (not a readable|damaged) TF checkpoint"
    with pytest.raises(ValueError, match=message):
        load_google_checkpoint(pretraining_model(), prefix)


def test_head_count_differing_from_bert_config_json_fails_naming_the_field(
    google_checkpoint, tmp_path
):
    config, values, _ = google_checkpoint
    prefix = write_tf1_checkpoint(values, str(tmp_path / "bert_model.ckpt"), optimizer_state=False)
    kbert.BertConfig(**{**config.to_dict(), "num_attention_heads": 4}).to_json_file(
        str(tmp_path / "bert_config.json")
    )

    with pytest.raises(ValueError, match="num_attention_heads=4"):
        load_google_checkpoint(pretraining_model(config), prefix)


def test_checkpoint_without_heads_leaves_them_initialised_and_reports_them(tmp_path):
    config = config_of()
    values = google_values(config, heads=False)
    prefix = write_tf1_checkpoint(values, str(tmp_path / "bert_model.ckpt"))
    model = pretraining_model(config)
    nsp_before = model.get_layer("nsp").kernel.numpy()

    report = load_google_checkpoint(model, prefix)

    assert report.parts == ["encoder"]
    assert sorted(report.missing) == sorted(set(google_values(config)) - set(values))
    np.testing.assert_array_equal(model.get_layer("nsp").kernel.numpy(), nsp_before)
    np.testing.assert_array_equal(
        model.get_layer("encoder").pooled_dense.kernel.numpy(), values["bert/pooler/dense/kernel"]
    )


def encoder_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(0, 100, (3, SEQ)).astype("int32"),
        "segment_ids": rng.integers(0, 2, (3, SEQ)).astype("int32"),
        "padding_mask": np.ones((3, SEQ), "int32"),
    }


def keras_hub_backbone(config, max_sequence_length=None):
    return keras_hub.models.BertBackbone(
        vocabulary_size=config.vocab_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        hidden_dim=config.hidden_size,
        intermediate_dim=config.intermediate_size,
        dropout=0.0,
        max_sequence_length=max_sequence_length or config.max_position_embeddings,
    )


def test_keras_hub_preset_round_trips_into_the_encoder_with_identical_outputs(tmp_path):
    config = config_of()
    backbone = keras_hub_backbone(config)
    backbone.save_to_preset(str(tmp_path / "preset"))
    model = pretraining_model(config)
    mlm_before = model.get_layer("mlm_head").weights[0].numpy()

    report = init_encoder(model, str(tmp_path / "preset"))

    inputs = encoder_inputs()
    ours, theirs = model.get_layer("encoder")(inputs), backbone(inputs)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(ours[key]), keras.ops.convert_to_numpy(theirs[key])
        )
    assert report.parts == ["encoder"]
    assert len(report.missing) == 7  # both heads: the preset carries none
    np.testing.assert_array_equal(model.get_layer("mlm_head").weights[0].numpy(), mlm_before)


def hf_tensors(config, positions, seed=0):
    """Random arrays under Hugging Face BertForPreTraining names ([out, in] linear weights)."""
    rng = np.random.default_rng(seed)
    h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {
        "bert.embeddings.word_embeddings.weight": [v, h],
        "bert.embeddings.position_embeddings.weight": [positions, h],
        "bert.embeddings.token_type_embeddings.weight": [config.type_vocab_size, h],
        "bert.pooler.dense.weight": [h, h],
        "bert.pooler.dense.bias": [h],
        "cls.predictions.transform.dense.weight": [h, h],
        "cls.predictions.transform.dense.bias": [h],
        "cls.predictions.bias": [v],
        "cls.seq_relationship.weight": [2, h],
        "cls.seq_relationship.bias": [2],
    }
    norms = ["bert.embeddings.LayerNorm", "cls.predictions.transform.LayerNorm"]
    for n in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{n}."
        for name in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = [h, h], [h]
        shapes[p + "intermediate.dense.weight"], shapes[p + "intermediate.dense.bias"] = [i, h], [i]
        shapes[p + "output.dense.weight"], shapes[p + "output.dense.bias"] = [h, i], [h]
        norms += [p + "attention.output.LayerNorm", p + "output.LayerNorm"]
    for name in norms:
        shapes[name + ".weight"], shapes[name + ".bias"] = [h], [h]
    tensors = {name: rng.standard_normal(shape).astype("float32") for name, shape in shapes.items()}
    tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    return tensors


def write_hf_folder(directory, config, positions=128, heads=True):
    from safetensors.numpy import save_file

    tensors = hf_tensors(config, positions)
    if not heads:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("cls.")}
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    hf_config = {
        "architectures": ["BertForPreTraining"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": positions,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
    }
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
    return tensors


def test_hf_folder_initialises_encoder_and_heads(tmp_path):
    config = config_of()
    t = write_hf_folder(str(tmp_path / "hf"), config)
    model = pretraining_model(config)

    report = init_encoder(model, str(tmp_path / "hf"))

    h, a = config.hidden_size, config.num_attention_heads
    weights = weights_by_path(model)
    expected = {
        "token_embedding/embeddings": t["bert.embeddings.word_embeddings.weight"],
        "position_embedding/embeddings": t["bert.embeddings.position_embeddings.weight"][:64],
        "embeddings_layer_norm/gamma": t["bert.embeddings.LayerNorm.weight"],
        "transformer_layer_1/self_attention_layer/query/kernel": t[
            "bert.encoder.layer.1.attention.self.query.weight"
        ].T.reshape(h, a, h // a),
        "transformer_layer_1/self_attention_layer/attention_output/kernel": t[
            "bert.encoder.layer.1.attention.output.dense.weight"
        ].T.reshape(a, h // a, h),
        "transformer_layer_0/feedforward_intermediate_dense/kernel": t[
            "bert.encoder.layer.0.intermediate.dense.weight"
        ].T,
        "pooled_dense/kernel": t["bert.pooler.dense.weight"].T,
        "mlm_head/intermediate_dense/kernel": t["cls.predictions.transform.dense.weight"].T,
        "mlm_head/intermediate_layer_norm/beta": t["cls.predictions.transform.LayerNorm.bias"],
        "mlm_head/output_bias": t["cls.predictions.bias"],
        "nsp/kernel": t["cls.seq_relationship.weight"].T,
        "nsp/bias": t["cls.seq_relationship.bias"],
    }
    for path, value in expected.items():
        np.testing.assert_array_equal(weights[path], value, err_msg=path)
    assert report.parts == ["encoder", "MLM head", "NSP head"] and report.missing == []
    assert any("128 to the model's 64" in note for note in report.notes)


def test_hf_folder_of_another_config_fails_naming_the_field(tmp_path):
    other = config_of(hidden_size=64, intermediate_size=128)
    write_hf_folder(str(tmp_path / "hf"), other, heads=False)
    with pytest.raises(ValueError, match="hidden_size=64 does not fit the model's hidden_size=32"):
        init_encoder(pretraining_model(), str(tmp_path / "hf"))


def test_encoder_preset_fine_tunes_as_a_bert_text_classifier(tmp_path):
    config = config_of()
    model = pretraining_model(config)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    preset = save_encoder_preset(model, str(tmp_path / "preset"), str(tmp_path / "vocab.txt"))

    classifier = keras_hub.models.BertTextClassifier.from_preset(preset, num_classes=2)
    np.testing.assert_array_equal(
        classifier.backbone.token_embedding.embeddings.numpy(),
        model.get_layer("encoder").token_embedding.embeddings.numpy(),
    )
    history = classifier.fit(
        x=["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w3 w1"],
        y=np.array([0, 1, 1, 0]),
        batch_size=4,
        epochs=1,
        verbose=0,
    )
    assert np.isfinite(history.history["loss"][0])
    assert classifier.preprocessor.sequence_length == config.max_position_embeddings


def write_vocab(directory):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return str(directory / "vocab.txt")


def preset_token_embeddings(preset):
    """The token embeddings of the classifier a preset builds (tokenizer and preprocessor too)."""
    classifier = keras_hub.models.BertTextClassifier.from_preset(preset, num_classes=2)
    return classifier.backbone.token_embedding.embeddings.numpy()


def token_embeddings(model):
    return model.get_layer("encoder").token_embedding.embeddings.numpy()


def test_replacing_an_encoder_preset_leaves_the_new_one_and_no_temporary_siblings(tmp_path):
    vocab, preset = write_vocab(tmp_path), str(tmp_path / "preset")
    old, new = pretraining_model(), pretraining_model()
    assert not np.array_equal(token_embeddings(old), token_embeddings(new))
    save_encoder_preset(old, preset, vocab)

    save_encoder_preset(new, preset, vocab)

    np.testing.assert_array_equal(preset_token_embeddings(preset), token_embeddings(new))
    assert sorted(os.listdir(tmp_path)) == ["preset", "vocab.txt"]


@pytest.mark.parametrize("swap", [True, False], ids=["atomic_swap", "two_renames"])
def test_a_preset_replacement_failing_at_the_last_rename_keeps_the_old_preset(
    tmp_path, monkeypatch, swap
):
    vocab, preset = write_vocab(tmp_path), str(tmp_path / "preset")
    old, new = pretraining_model(), pretraining_model()
    save_encoder_preset(old, preset, vocab)
    rename, exchange = kbert.io._rename_directory, kbert.io._exchange

    def failing_into_place(rename_or_exchange):
        def fail(source, destination):
            if destination == preset and ".tmp-" in source:
                raise OSError(f"injected failure renaming {source}")
            return rename_or_exchange(source, destination)

        return fail

    if swap:  # as on Linux's local file systems
        monkeypatch.setattr(kbert.io, "_exchange", failing_into_place(exchange))
    else:  # as on gs:// or where the file system cannot swap
        monkeypatch.setattr(kbert.io, "_exchange", lambda a, b: False)
        monkeypatch.setattr(kbert.io, "_rename_directory", failing_into_place(rename))
    with pytest.raises(OSError, match="injected failure"):
        save_encoder_preset(new, preset, vocab)
    monkeypatch.undo()

    np.testing.assert_array_equal(preset_token_embeddings(preset), token_embeddings(old))
    assert sorted(os.listdir(tmp_path)) == ["preset", "vocab.txt"]


def test_init_from_detects_each_kind_of_source(google_checkpoint, tmp_path):
    config, _, prefix = google_checkpoint
    write_hf_folder(str(tmp_path / "hf"), config)
    keras_hub_backbone(config).save_to_preset(str(tmp_path / "preset"))
    sources = {
        prefix: "Google TF1 checkpoint",
        os.path.dirname(prefix): "Google TF1 checkpoint",
        str(tmp_path / "hf"): "Hugging Face BERT folder",
        str(tmp_path / "preset"): "keras-hub preset",
    }
    model = pretraining_model(config)
    for source, kind in sources.items():
        assert init_from(model, source).startswith(f"{kind} "), source


def test_read_source_config_gives_the_config_a_preset_or_hf_folder_fits(tmp_path):
    config = config_of()
    write_hf_folder(str(tmp_path / "hf"), config, positions=128)
    keras_hub_backbone(config).save_to_preset(str(tmp_path / "preset"))
    assert read_source_config(str(tmp_path / "hf")) == dataclasses.replace(
        config, max_position_embeddings=128
    )
    assert read_source_config(str(tmp_path / "preset")) == config


def test_read_source_config_of_a_google_checkpoint_skips_fields_kbert_does_not_use(tmp_path):
    config = config_of()
    prefix = save_google_checkpoint(pretraining_model(config), str(tmp_path / "bert_model.ckpt"))
    with open(tmp_path / "bert_config.json", "w") as f:
        json.dump(
            {**config.to_dict(), "directionality": "bidi", "pooler_type": "first_token_transform"},
            f,
        )
    assert read_source_config(prefix) == config


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_thing: not found; expected a Google"):
        detect_source(str(tmp_path / "no_such_thing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no TF checkpoint here"):
        detect_source(str(tmp_path / "empty"))


def test_keras_hub_masked_lm_preset_also_gives_the_mlm_head(tmp_path):
    config = config_of()
    task = keras_hub.models.BertMaskedLM(keras_hub_backbone(config), preprocessor=None)
    task.save_to_preset(str(tmp_path / "masked_lm"))
    model = pretraining_model(config)

    report = init_encoder(model, str(tmp_path / "masked_lm"))

    assert report.parts == ["encoder", "MLM head"]
    assert sorted(report.missing) == ["nsp/bias", "nsp/kernel"]
    theirs = {v.path: v.numpy() for v in task.masked_lm_head.weights if "mlm_head" in v.path}
    ours = weights_by_path(model)
    assert len(theirs) == 5
    for path, value in theirs.items():
        np.testing.assert_array_equal(ours[path], value, err_msg=path)


def test_hf_folder_without_safetensors_is_a_clear_error(tmp_path):
    write_hf_folder(str(tmp_path / "hf"), config_of())
    os.rename(tmp_path / "hf" / "model.safetensors", tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        init_encoder(pretraining_model(), str(tmp_path / "hf"))


@pytest.mark.tensorflow_only
def test_checkpoints_load_and_save_under_mirrored_strategy(google_checkpoint, tmp_path, two_cpus):
    config, values, prefix = google_checkpoint
    with tf.distribute.MirroredStrategy(two_cpus).scope():
        model = pretraining_model(config)
        load_google_checkpoint(model, prefix)
    kernel = model.get_layer("nsp").kernel
    nsp_weights = values["cls/seq_relationship/output_weights"]
    for replica_value in kernel.value.values:
        np.testing.assert_array_equal(replica_value.numpy(), nsp_weights.T)

    saved = save_google_checkpoint(model, str(tmp_path / "bert_model.ckpt"))
    reader = tf.train.load_checkpoint(saved)
    np.testing.assert_array_equal(
        reader.get_tensor("cls/seq_relationship/output_weights"), nsp_weights
    )


def write_pretraining_records(directory, num_records=16, seed=0):
    """A few masked pre-training records (Google's layout) for a short `pretrain` run."""
    from kbert import features

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "train.tfrecord")) as writer:
        for i in range(num_records):
            ids = [2, *rng.integers(5, 100, 3), 3, *rng.integers(5, 100, 2), 3]
            writer.write(
                features.to_example(
                    {
                        "input_ids": ids,
                        "input_mask": [1] * 8,
                        "segment_ids": [0] * 5 + [1] * 3,
                        "masked_lm_positions": [1, 5],
                        "masked_lm_ids": [ids[1], ids[5]],
                        "masked_lm_weights": [1.0, 1.0],
                        "next_sentence_labels": [i % 2],
                    }
                ).SerializeToString()
            )
    return directory


class _WeightsAtTrainBegin(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = weights_by_path(self.model)


def test_pretraining_continues_from_a_google_checkpoint(tmp_path, caplog):
    from kbert.train import pretrain

    config = config_of()
    source = kbert.build_pretraining_model(config, 8, 2)
    for variable in source.weights:  # no fresh initialisation can match these
        variable.assign(variable + 1.0)
    prefix = save_google_checkpoint(source, str(tmp_path / "google" / "bert_model.ckpt"))
    data = write_pretraining_records(str(tmp_path / "data"))
    start = _WeightsAtTrainBegin()

    with caplog.at_level("INFO", logger="kbert"):
        result = pretrain(
            config,
            data,
            str(tmp_path / "run"),
            steps=2,
            batch_size=8,
            strategy="cpu",
            init_from=prefix,
            callbacks=[start],
            verbose=0,
        )

    for path, value in weights_by_path(source).items():
        np.testing.assert_array_equal(start.weights[path], value, err_msg=path)
    assert np.all(np.isfinite(result.history["loss"]))
    trained = weights_by_path(result.model)
    assert not np.array_equal(trained["pooled_dense/kernel"], start.weights["pooled_dense/kernel"])
    assert f"init from Google TF1 checkpoint {prefix}" in caplog.text


def test_kbert_train_init_from_flag_continues_from_a_checkpoint_and_says_what_it_found(
    tmp_path, caplog
):
    import csv

    from kbert.cli import main

    config = config_of()
    source = kbert.build_pretraining_model(config, 8, 2)
    prefix = save_google_checkpoint(source, str(tmp_path / "google" / "bert_model.ckpt"))
    data = write_pretraining_records(str(tmp_path / "data"))
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="kbert"):
        code = main(
            [
                "train",
                "--config",
                str(tmp_path / "google" / "bert_config.json"),
                "--init-from",
                prefix,
                "--train-files",
                data,
                "--output-dir",
                str(run),
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--strategy",
                "cpu",
                "--verbose",
                "0",
            ]
        )
    assert code == 0
    assert f"init from Google TF1 checkpoint {prefix}" in caplog.text
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert rows and all(np.isfinite(float(r["loss"])) for r in rows)


@pytest.fixture(scope="module")
def kbert_run(tmp_path_factory):
    """A finished two-interval kbert run (8-token records) and its trained model."""
    from kbert.train import pretrain

    tmp = tmp_path_factory.mktemp("kbert_run")
    data = write_pretraining_records(str(tmp / "data"))
    result = pretrain(
        tiny_config(),
        data,
        str(tmp / "run"),
        steps=2,
        batch_size=8,
        checkpoint_interval=1,
        strategy="cpu",
        verbose=0,
    )
    return str(tmp / "run"), result.model


def assert_same_weights(model, source):
    assert len(model.weights) == len(source.weights)
    for variable, expected in zip(model.weights, source.weights):
        np.testing.assert_array_equal(variable.numpy(), expected.numpy(), err_msg=variable.path)


@pytest.mark.parametrize("source", ["run directory", "model.keras"])
def test_init_from_a_kbert_run_loads_every_weight_into_longer_sequences(kbert_run, source):
    run_dir, trained = kbert_run
    # BERT's second phase: longer sequences and more predictions, the same weights.
    model = kbert.build_pretraining_model(tiny_config(), 32, 5)
    path = run_dir if source == "run directory" else os.path.join(run_dir, "model.keras")

    described = init_from(model, path)

    assert_same_weights(model, trained)
    assert "(encoder, MLM head, NSP head)" in described
    assert "left as initialised" not in described and "unused" not in described


def test_init_from_a_kbert_run_without_model_keras_takes_its_newest_checkpoint(kbert_run, tmp_path):
    import shutil

    run_dir, trained = kbert_run
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(run_dir, unfinished)
    os.remove(os.path.join(unfinished, "model.keras"))
    model = kbert.build_pretraining_model(tiny_config(), 32, 5)

    described = init_from(model, unfinished)

    assert_same_weights(model, trained)
    assert "checkpoints/ckpt-0000002.weights.h5" in described


def test_init_from_a_kbert_model_of_another_hidden_size_is_a_clear_error(kbert_run):
    run_dir, _ = kbert_run
    model = kbert.build_pretraining_model(tiny_config(hidden_size=64), 16, 3)
    before = weights_by_path(model)

    with pytest.raises(ValueError, match="hidden_size=32 does not fit the model's hidden_size=64"):
        init_from(model, os.path.join(run_dir, "model.keras"))

    for path, value in weights_by_path(model).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)
