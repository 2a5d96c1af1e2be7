"""`kbert.export`: a SavedModel TF Serving loads — signatures, servable ops, warm-up, errors."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import random_batch, tiny_config

L, P, K = 32, 4, 5
WORDS = (
    "the of and is a it was in to paris france capital city cat sat dog big small hello world "
    "cafe creme naive resume elan quoted text km un ##aff ##able ##s ##ed ##ing 3 5 中 文"
).split()
PUNCTUATION = list(".,!?'-—“”():;")
SENTENCES = [
    "Paris is the [MASK] of France.",
    "Café crème, naïve RÉSUMÉS!",
    "Hello,world!! It's 3.5 km — “quoted” text (unaffable)",
    "中文 ÉLAN\u00a0cats [MASK][MASK]x",
]
PAIRS = [
    ("The cat sat.", "It was [MASK]."),
    ("Paris is the [MASK] of France.", ""),
    ("Hello world!", "The dog is big."),
]
ENCODER_INPUTS = ("input_ids", "segment_ids", "input_mask")

# Op types of the exported graphs that the stock TF Serving model server can run.
# TensorFlow core ops used by the encoder, the heads, the saver and the string / ragged / table
# ops of the in-graph tokenizer:
CORE_OPS = {
    "Add",
    "AddV2",
    "All",
    "Any",
    "Assert",
    "AssignVariableOp",
    "BatchMatMulV2",
    "BatchMatMulV3",
    "BiasAdd",
    "BroadcastArgs",
    "BroadcastTo",
    "Cast",
    "ConcatV2",
    "Const",
    "Cumsum",
    "DisableCopyOnRead",
    "Einsum",
    "Equal",
    "Erf",
    "Exp",
    "ExpandDims",
    "Fill",
    "FloorDiv",
    "FloorMod",
    "GatherV2",
    "Greater",
    "GreaterEqual",
    "HashTableV2",
    "Identity",
    "IdentityN",
    "If",
    "InitializeTableFromTextFileV2",
    "Less",
    "LessEqual",
    "LogicalAnd",
    "LogicalNot",
    "LogicalOr",
    "LookupTableFindV2",
    "MatMul",
    "Max",
    "Maximum",
    "Mean",
    "MergeV2Checkpoints",
    "Min",
    "Minimum",
    "Mul",
    "Neg",
    "NoOp",
    "NotEqual",
    "OnesLike",
    "Pack",
    "PartitionedCall",
    "Placeholder",
    "Pow",
    "Prod",
    "RaggedGather",
    "RaggedRange",
    "RaggedTensorToTensor",
    "Range",
    "ReadVariableOp",
    "RealDiv",
    "Relu",
    "Reshape",
    "RestoreV2",
    "Rsqrt",
    "SaveV2",
    "Select",
    "SelectV2",
    "Shape",
    "ShardedFilename",
    "Size",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Square",
    "SquaredDifference",
    "Squeeze",
    "StatefulPartitionedCall",
    "StatelessIf",
    "StaticRegexFullMatch",
    "StaticRegexReplace",
    "StopGradient",
    "StridedSlice",
    "StringJoin",
    "StringLower",
    "Sub",
    "Sum",
    "Tanh",
    "Tile",
    "TopKV2",
    "Transpose",
    "Unpack",
    "UnsortedSegmentSum",
    "VarHandleOp",
    "VarIsInitializedOp",
    "Where",
    "ZerosLike",
}
# tensorflow-text's BertTokenizer-family kernels, in tensorflow_text:ops_lib, which the model
# server links (tensorflow_serving/model_servers: SUPPORTED_TENSORFLOW_OPS). Not the Fast* ops.
TF_TEXT_OPS = {
    "CaseFoldUTF8",
    "NormalizeUTF8",
    "RegexSplitWithOffsets",
    "WordpieceTokenizeWithOffsets",
}


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    from kbert.serving_tokenizer import SPECIAL_TOKENS, write_vocab

    tokens = list(SPECIAL_TOKENS) + WORDS + PUNCTUATION
    tokens += [f"w{i}" for i in range(120 - len(tokens))]
    path = str(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    write_vocab(tokens, path)
    return path


@pytest.fixture(scope="module")
def tokens(vocab_file):
    return open(vocab_file, encoding="utf-8").read().splitlines()


@pytest.fixture(scope="module")
def model(tokens):
    import keras

    import kbert

    keras.utils.set_random_seed(0)
    return kbert.build_pretraining_model(tiny_config(vocab_size=len(tokens)), L, P)


@pytest.fixture(scope="module")
def export_dir(model, vocab_file, tmp_path_factory):
    from kbert.export import export_for_serving

    base = str(tmp_path_factory.mktemp("exports") / "saved_models")
    return export_for_serving(model, vocab_file, base, top_k=K)


@pytest.fixture(scope="module")
def hf_tokenizer(vocab_file):
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(vocab_file, lowercase=True)


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def keras_predictions(model, x):
    """What serving_default should return, computed from the Keras model's logits."""
    outputs = model({k: np.asarray(v, "int32") for k, v in x.items()}, training=False)
    probs = softmax(np.asarray(outputs["mlm"], "float64"))
    top_ids = np.argsort(-probs, axis=-1, kind="stable")[..., :K]
    return {
        "mlm_top_ids": top_ids,
        "mlm_top_probs": np.take_along_axis(probs, top_ids, -1),
        "nsp_probs": softmax(np.asarray(outputs["nsp"], "float64")),
    }


def hf_features(hf_tokenizer, pairs):
    """[CLS] A [SEP] (B [SEP]) padded to L, and the first P [MASK] positions, by HF tokenizers."""
    mask_id = hf_tokenizer.token_to_id("[MASK]")
    x = {name: np.zeros((len(pairs), L), "int32") for name in ENCODER_INPUTS}
    x["masked_lm_positions"] = np.zeros((len(pairs), P), "int32")
    for row, (a, b) in enumerate(pairs):
        encoding = hf_tokenizer.encode(a, b) if b else hf_tokenizer.encode(a)
        n = len(encoding.ids)
        assert n <= L, "test sentences must fit in L"
        x["input_ids"][row, :n] = encoding.ids
        x["segment_ids"][row, :n] = encoding.type_ids
        x["input_mask"][row, :n] = 1
        masks = [i for i, token in enumerate(encoding.ids) if token == mask_id][:P]
        x["masked_lm_positions"][row, : len(masks)] = masks
    return x


def keras_fill_mask(model, hf_tokenizer, tokens, pairs):
    """What fill_mask should return: HF tokenization, then the Keras model."""
    x = hf_features(hf_tokenizer, pairs)
    expected = keras_predictions(model, x)
    real = x["masked_lm_positions"][:, :, None] > 0
    return {
        "mlm_top_tokens": np.where(real, np.array(tokens, object)[expected["mlm_top_ids"]], ""),
        "mlm_top_probs": np.where(real, expected["mlm_top_probs"], 0.0),
        "masked_lm_positions": x["masked_lm_positions"],
        "nsp_probs": expected["nsp_probs"],
    }


def read_saved_model(export_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the text signatures' tokenizer ops)

    export_dir, inputs_path, outputs_path = sys.argv[1:]
    inputs = np.load(inputs_path, allow_pickle=True)
    signatures = tf.saved_model.load(export_dir).signatures
    texts = {k: tf.constant(inputs[k].astype(bytes)) for k in ("text_a", "text_b")}
    ids = {k: tf.constant(inputs[k]) for k in ("input_ids", "segment_ids", "input_mask")}
    positions = inputs["masked_lm_positions"]
    results = {}
    calls = {
        "serving_default": dict(ids, masked_lm_positions=tf.constant(positions)),
        "encode": ids,
        "fill_mask": texts,
        "tokenize": texts,
    }
    for name, kwargs in calls.items():
        for key, value in signatures[name](**kwargs).items():
            results[f"{name}/{key}"] = value.numpy()
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("kbert", "keras_hub"))
    results["leaked_modules"] = np.array(leaked, dtype=object)
    np.savez(outputs_path, **results)
    """
)


def test_export_writes_the_first_version_with_vocab_and_warmup(export_dir):
    assert export_dir.endswith(os.path.join("saved_models", "kbert", "1"))
    for name in ("saved_model.pb", "assets/vocab.txt", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(export_dir, name)), name
    assert [e for e in os.listdir(os.path.dirname(export_dir)) if e != "1"] == []


@pytest.mark.tf_compat
def test_fresh_process_signatures_equal_the_keras_model(
    export_dir, model, hf_tokenizer, tokens, tmp_path
):
    x, _, _ = random_batch(batch_size=4, seq_len=L, num_predictions=P, vocab_size=len(tokens))
    inputs_path, outputs_path = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
    np.savez(
        inputs_path,
        text_a=np.array([a for a, _ in PAIRS], dtype=object),
        text_b=np.array([b for _, b in PAIRS], dtype=object),
        **x,
    )
    subprocess.run(
        [sys.executable, "-c", CHILD, export_dir, inputs_path, outputs_path],
        check=True,
        timeout=300,
    )
    got = dict(np.load(outputs_path, allow_pickle=True))
    assert list(got.pop("leaked_modules")) == []

    expected = keras_predictions(model, x)
    np.testing.assert_array_equal(got["serving_default/mlm_top_ids"], expected["mlm_top_ids"])
    for key in ("mlm_top_probs", "nsp_probs"):
        np.testing.assert_allclose(got[f"serving_default/{key}"], expected[key], atol=1e-5)

    encoded = model.get_layer("encoder")(
        {
            "token_ids": x["input_ids"],
            "segment_ids": x["segment_ids"],
            "padding_mask": x["input_mask"],
        }
    )
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(got[f"encode/{key}"], np.asarray(encoded[key]), atol=1e-5)

    expected = keras_fill_mask(model, hf_tokenizer, tokens, PAIRS)
    decoded = np.vectorize(bytes.decode, otypes=[object])(got["fill_mask/mlm_top_tokens"])
    np.testing.assert_array_equal(decoded, expected["mlm_top_tokens"])
    np.testing.assert_array_equal(
        got["fill_mask/masked_lm_positions"], expected["masked_lm_positions"]
    )
    for key in ("mlm_top_probs", "nsp_probs"):
        np.testing.assert_allclose(got[f"fill_mask/{key}"], expected[key], atol=1e-5)

    features = hf_features(hf_tokenizer, PAIRS)
    for key, value in features.items():
        np.testing.assert_array_equal(got[f"tokenize/{key}"], value, err_msg=key)


def test_fill_mask_tokens_equal_hf_bert_wordpiece_tokenizer(export_dir, hf_tokenizer, tokens):
    import tensorflow as tf

    tokenize = tf.saved_model.load(export_dir).signatures["tokenize"]
    got = tokenize(text_a=tf.constant(SENTENCES), text_b=tf.constant([""] * len(SENTENCES)))
    for row, sentence in enumerate(SENTENCES):
        expected = hf_tokenizer.encode(sentence).tokens
        n = int(got["input_mask"][row].numpy().sum())
        assert [tokens[i] for i in got["input_ids"][row, :n].numpy()] == expected, sentence
    assert tokens.index("[MASK]") in got["input_ids"][0].numpy()


def test_tokenize_truncates_the_longer_segment_first_like_google(export_dir, tokens):
    import tensorflow as tf

    def google_truncate_seq_pair(a, b, max_length):
        # google-research/bert run_classifier.py `_truncate_seq_pair`, transcribed.
        a, b = list(a), list(b)
        while len(a) + len(b) > max_length:
            (a if len(a) > len(b) else b).pop()
        return a, b

    pairs = [(9, 9), (3, 20), (20, 3), (7, 8), (8, 7), (20, 0)]
    tokenize = tf.saved_model.load(export_dir).signatures["tokenize"]
    got = tokenize(
        text_a=tf.constant([" ".join(["cat"] * a) for a, _ in pairs]),
        text_b=tf.constant([" ".join(["dog"] * b) for _, b in pairs]),
    )
    cls, sep, cat, dog = (tokens.index(t) for t in ("[CLS]", "[SEP]", "cat", "dog"))
    for row, (len_a, len_b) in enumerate(pairs):
        budget = L - 3 if len_b else L - 2
        a, b = google_truncate_seq_pair([cat] * len_a, [dog] * len_b, budget)
        expected = [cls] + a + [sep] + (b + [sep] if len_b else [])
        n = len(expected)
        assert list(got["input_ids"][row, :n].numpy()) == expected, (len_a, len_b)
        segments = [0] * (len(a) + 2) + [1] * (n - len(a) - 2)
        assert list(got["segment_ids"][row, :n].numpy()) == segments
        assert got["input_mask"][row].numpy().sum() == n


def test_saved_model_cli_lists_the_signatures_with_names_dtypes_shapes(export_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--all", "--dir", export_dir],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    sections = dict(
        re.findall(r"signature_def\['(\w+)'\]:\n(.*?)(?=\nsignature_def|\Z)", shown, re.S)
    )
    ids, positions = ("DT_INT32", f"(-1, {L})"), ("DT_INT32", f"(-1, {P})")
    top_probs, nsp = ("DT_FLOAT", f"(-1, {P}, {K})"), ("DT_FLOAT", "(-1, 2)")
    hidden = 32
    model_inputs = {"input_ids": ids, "segment_ids": ids, "input_mask": ids}
    text_inputs = {"text_a": ("DT_STRING", "(-1)"), "text_b": ("DT_STRING", "(-1)")}
    expected = {
        "serving_default": (
            dict(model_inputs, masked_lm_positions=positions),
            {
                "mlm_top_ids": ("DT_INT32", f"(-1, {P}, {K})"),
                "mlm_top_probs": top_probs,
                "nsp_probs": nsp,
            },
        ),
        "encode": (
            model_inputs,
            {
                "sequence_output": ("DT_FLOAT", f"(-1, {L}, {hidden})"),
                "pooled_output": ("DT_FLOAT", f"(-1, {hidden})"),
            },
        ),
        "fill_mask": (
            text_inputs,
            {
                "mlm_top_tokens": ("DT_STRING", f"(-1, {P}, {K})"),
                "mlm_top_probs": top_probs,
                "masked_lm_positions": positions,
                "nsp_probs": nsp,
            },
        ),
        "tokenize": (text_inputs, dict(model_inputs, masked_lm_positions=positions)),
    }
    assert set(sections) - {"__saved_model_init_op"} == set(expected)
    for name, (inputs, outputs) in expected.items():
        inputs_text, outputs_text = sections[name].split("contains the following output(s):")
        for text, tensors in ((inputs_text, inputs), (outputs_text, outputs)):
            listed = re.findall(
                r"\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))", text
            )
            assert {key: (dtype, shape) for key, dtype, shape in listed} == tensors, name
        assert "Method name is: tensorflow/serving/predict" in sections[name]


def test_predict_request_feeds_serving_default_by_signature_tensor_names(export_dir, model, tokens):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    x, _, _ = random_batch(3, seq_len=L, num_predictions=P, vocab_size=len(tokens), seed=1)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kbert"
    request.model_spec.signature_name = "serving_default"
    for key, value in x.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())

    # As the C++ server: a session over the MetaGraph, fed and fetched by SignatureDef names.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta_graph.signature_def[request.model_spec.signature_name]
        feed = {signature.inputs[k].name: tf.make_ndarray(v) for k, v in request.inputs.items()}
        fetch = {k: v.name for k, v in signature.outputs.items()}
        got = session.run(fetch, feed)

    expected = keras_predictions(model, x)
    np.testing.assert_array_equal(got["mlm_top_ids"], expected["mlm_top_ids"])
    for key in ("mlm_top_probs", "nsp_probs"):
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


def test_warmup_records_are_prediction_logs_matching_every_signature(export_dir):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    signature_defs = read_saved_model(export_dir).meta_graphs[0].signature_def
    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    records = tf.data.TFRecordDataset(path)
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    requests = [log.predict_log.request for log in logs]
    assert {r.model_spec.signature_name for r in requests} == {
        "serving_default",
        "encode",
        "fill_mask",
        "tokenize",
    }
    for request in requests:
        signature = signature_defs[request.model_spec.signature_name]
        assert set(request.inputs) == set(signature.inputs)
        batch = {tuple(v.tensor_shape.dim)[0].size for v in request.inputs.values()}
        assert len(batch) == 1
        for key, tensor in request.inputs.items():
            spec = signature.inputs[key]
            assert tensor.dtype == spec.dtype, key
            shape = [d.size for d in tensor.tensor_shape.dim]
            assert shape[1:] == [d.size for d in spec.tensor_shape.dim][1:], key

    # TF Serving replays them at load; they must run.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        for request in requests:
            signature = meta_graph.signature_def[request.model_spec.signature_name]
            feed = {signature.inputs[k].name: tf.make_ndarray(v) for k, v in request.inputs.items()}
            session.run({k: v.name for k, v in signature.outputs.items()}, feed)


def test_graph_op_types_are_all_servable(export_dir):
    import tensorflow as tf

    saved_model = read_saved_model(export_dir)
    op_types = set()
    for meta_graph in saved_model.meta_graphs:
        op_types |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            op_types |= {node.op for node in function.node_def}
    assert op_types - CORE_OPS - TF_TEXT_OPS == set()
    assert op_types & TF_TEXT_OPS, "the text signatures tokenize in the graph"
    # Every other op is one of TensorFlow's own (tensorflow-text's are not in tf.raw_ops).
    assert [op for op in op_types - TF_TEXT_OPS if not hasattr(tf.raw_ops, op)] == []


def test_existing_version_is_a_clear_error(export_dir, model, vocab_file):
    from kbert.export import export_for_serving

    base = os.path.dirname(os.path.dirname(export_dir))
    with pytest.raises(ValueError, match=r"kbert/1: this version already exists"):
        export_for_serving(model, vocab_file, base, version=1)


def test_an_export_to_an_object_store_copies_saved_model_pb_last(model, vocab_file, monkeypatch):
    # ram:// stands for gs://: a path with a scheme, where a folder rename is no atomic step.
    import tensorflow as tf

    from kbert.export import SIGNATURES, WARMUP_FILE, export_for_serving

    base = "ram://object_store/saved_models"
    tf.io.gfile.makedirs(f"{base}/kbert/1/variables")  # what a killed copy left: no saved_model.pb
    copy, written = tf.io.gfile.copy, []

    def recording_copy(source, target, overwrite=False):
        written.append(target)
        copy(source, target, overwrite)

    monkeypatch.setattr(tf.io.gfile, "copy", recording_copy)
    export_dir = export_for_serving(model, vocab_file, base, top_k=K)
    monkeypatch.undo()
    assert export_dir == f"{base}/kbert/1"
    # Each file once; saved_model.pb, by which TF Serving loads a version, after all the others.
    names = [path.removeprefix(export_dir + "/") for path in written]
    assert len(set(names)) == len(names) and names[-1] == "saved_model.pb"
    assert {"variables/variables.index", "assets/vocab.txt", WARMUP_FILE} <= set(names)
    assert sorted(tf.saved_model.load(export_dir).signatures) == sorted(SIGNATURES)


def test_missing_checkpoint_is_a_clear_error(vocab_file, tmp_path):
    from kbert.export import export_for_serving

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=r"run/model.keras: no model to export"):
        export_for_serving(str(run_dir), vocab_file, str(tmp_path / "saved_models"))
    with pytest.raises(FileNotFoundError, match=r"gone.keras: no model to export"):
        export_for_serving(str(tmp_path / "gone.keras"), vocab_file, str(tmp_path / "saved_models"))
    assert not (tmp_path / "saved_models").exists()


def test_a_file_that_is_not_a_keras_model_is_a_clear_error(vocab_file, tmp_path):
    from kbert.export import export_for_serving

    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"broken.keras: not a loadable .keras model"):
        export_for_serving(str(path), vocab_file, str(tmp_path / "saved_models"))


def test_missing_vocab_is_a_clear_error(model, tmp_path):
    from kbert.export import export_for_serving

    with pytest.raises(FileNotFoundError, match=r"nope.txt: no such vocabulary file"):
        export_for_serving(model, str(tmp_path / "nope.txt"), str(tmp_path / "saved_models"))


def test_vocab_of_another_size_than_the_model_is_a_clear_error(model, tokens, tmp_path):
    from kbert.export import export_for_serving
    from kbert.serving_tokenizer import write_vocab

    path = str(tmp_path / "vocab.txt")
    write_vocab(tokens[:-1], path)
    message = rf"{len(tokens) - 1} tokens, but the model's vocab_size is {len(tokens)}"
    with pytest.raises(ValueError, match=message):
        export_for_serving(model, path, str(tmp_path / "saved_models"))


def test_next_version_follows_the_largest_integer_directory(tmp_path):
    from kbert.export import next_version

    assert next_version(str(tmp_path / "absent")) == 1
    for name in ("1", "7", "tmp", ".tmp-8-abc"):
        (tmp_path / name).mkdir()
    assert next_version(str(tmp_path)) == 8


def test_cli_export_from_a_run_directory(model, vocab_file, tmp_path, capsys):
    from kbert.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(str(run_dir / "model.keras"))
    base = str(tmp_path / "saved_models")
    assert (
        main(
            [
                "export",
                "--model",
                str(run_dir),
                "--vocab_file",
                vocab_file,
                "--export-base",
                base,
                "--name",
                "tiny",
                "--version",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == os.path.join(base, "tiny", "3")
    assert os.path.exists(os.path.join(printed[0], "saved_model.pb"))


def test_cli_export_takes_the_model_as_a_named_flag_like_predict(capsys):
    from kbert.cli import build_parser

    for command in ("export", "predict"):
        rest = ["--vocab-file", "vocab.txt"] if command == "export" else ["a [MASK]."]
        args = build_parser(command).parse_args([command, "--model", "runs/x", *rest])
        assert args.model == "runs/x"
    with pytest.raises(SystemExit):
        build_parser("export").parse_args(["export", "runs/x", "--vocab-file", "vocab.txt"])
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_cli_predict_prints_fillings_and_nsp_from_the_saved_model(
    export_dir, model, hf_tokenizer, tokens, capsys
):
    from kbert.cli import main

    text, text_b = PAIRS[0]
    assert main(["predict", "--model", export_dir, text, "--text_b", text_b]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = keras_fill_mask(model, hf_tokenizer, tokens, [(text, text_b)])
    position = expected["masked_lm_positions"][0, 0]
    top = zip(expected["mlm_top_tokens"][0, 0], expected["mlm_top_probs"][0, 0])
    fillings = "  ".join(f"{t} {p:.4f}" for t, p in top)
    assert lines[0] == f"[MASK] 1 (token {position}): {fillings}"
    assert lines[1] == f"P(text_b follows text) = {expected['nsp_probs'][0, 0]:.4f}"
    assert len(lines) == 2


def test_cli_predict_on_a_missing_export_is_a_clear_error(tmp_path, capsys):
    from kbert.cli import main

    assert main(["predict", "--model", str(tmp_path / "none"), "a [MASK]"]) == 1
    assert "kbert predict: error:" in capsys.readouterr().err


def test_cased_text_encoder_keeps_case_and_accents_like_hf(tmp_path):
    import tensorflow as tf
    from tokenizers import BertWordPieceTokenizer

    from kbert.serving_tokenizer import SPECIAL_TOKENS, ServingTextEncoder, write_vocab

    tokens = list(SPECIAL_TOKENS) + "Paris paris is the Café cafe ##s , . ! ΣΑΣ σας".split()
    path = str(tmp_path / "vocab.txt")
    write_vocab(tokens, path)
    encoder = ServingTextEncoder(path, tokens, L, P, do_lower_case=False)
    hf = BertWordPieceTokenizer(path, lowercase=False)
    sentences = ["Paris is the [MASK], Cafés!", "paris cafe Café.", "ΣΑΣ σας [mask]"]
    got = encoder.tokenize(tf.constant(sentences)).to_list()
    for sentence, pieces in zip(sentences, got):
        expected = hf.encode(sentence, add_special_tokens=False).tokens
        assert [p.decode() for p in pieces] == expected, sentence


def test_read_vocab_ends_lines_at_newlines_only_like_the_lookup_tables(tmp_path):
    from kbert.serving_tokenizer import SPECIAL_TOKENS, read_vocab

    # U+2028 and U+0085 are line breaks to str.splitlines, not to Google's or TF's readers.
    tokens = list(SPECIAL_TOKENS) + ["a\u2028b", "c\x85d", "e"]
    path = tmp_path / "vocab.txt"
    path.write_bytes("\r\n".join(tokens).encode("utf-8") + b"\r\n")

    assert read_vocab(str(path)) == tokens


def test_read_vocab_ignores_a_byte_order_mark(tmp_path):
    from kbert.serving_tokenizer import SPECIAL_TOKENS, read_vocab

    path = tmp_path / "vocab.txt"
    path.write_bytes("\n".join(SPECIAL_TOKENS).encode("utf-8-sig"))

    assert read_vocab(str(path)) == list(SPECIAL_TOKENS)
