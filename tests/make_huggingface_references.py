"""Make the Hugging Face reference files that tests/test_huggingface.py checks kbert against.

transformers (PyTorch) computes them, so the default test run needs neither torch nor
transformers. Run it after installing the extra, from the checkout:

    pip install -e ".[huggingface-test]"
    python tests/make_huggingface_references.py

It writes into tests/data/huggingface/ (texts.json, the test texts, is its input):

    vocab.txt            a cased WordPiece vocabulary learned from texts.json
    tokenization.json    BertTokenizerFast's ids of every text, from kbert's exported folders
                         (uncased and cased)
    random/              transformers' own save_pretrained of a random BertForPreTraining
    trained/             kbert's export of a tiny `kbert train` run on records made from the texts
    references.npz       the inputs, and transformers' MLM log-probabilities at the masked
                         positions and NSP log-probabilities for random/ and trained/
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent / "data" / "huggingface"
HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS = 32, 2, 2, 64, 64
BATCH, SEQ_LEN, PREDICTIONS = 6, 24, 4


def reference_inputs(vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Pre-training inputs with padding (sequences of 8 to 24 tokens), two segments each, and
    padded predictions (position 0, as the data contract pads them)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([24, 8, 17, 24, 12, 20])
    mask = (np.arange(SEQ_LEN)[None, :] < lengths[:, None]).astype("int32")
    ids = rng.integers(5, vocab_size, (BATCH, SEQ_LEN)).astype("int32")
    ids[:, 0] = 2  # [CLS]
    ids[np.arange(BATCH), lengths - 1] = 3  # [SEP]
    ids *= mask
    segments = ((np.arange(SEQ_LEN)[None, :] >= lengths[:, None] // 2) * mask).astype("int32")
    real = np.array([4, 2, 3, 4, 1, 3])
    positions = np.zeros((BATCH, PREDICTIONS), "int32")
    for row, (length, count) in enumerate(zip(lengths, real)):
        chosen = np.sort(rng.choice(np.arange(1, length - 1), count, replace=False))
        positions[row, :count] = chosen
        ids[row, chosen] = 4  # [MASK]
    return {
        "input_ids": ids,
        "segment_ids": segments,
        "input_mask": mask,
        "masked_lm_positions": positions,
    }


def transformers_log_probs(folder: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers' MLM log-probabilities at the masked positions and NSP log-probabilities."""
    import torch
    from transformers import BertForPreTraining

    model = BertForPreTraining.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(inputs["input_ids"]).long(),
            token_type_ids=torch.from_numpy(inputs["segment_ids"]).long(),
            attention_mask=torch.from_numpy(inputs["input_mask"]).long(),
        )
    positions = torch.from_numpy(inputs["masked_lm_positions"]).long()
    logits = out.prediction_logits.gather(
        1, positions[..., None].expand(-1, -1, out.prediction_logits.shape[-1])
    )
    return {
        "mlm": torch.log_softmax(logits, -1).numpy(),
        "nsp": torch.log_softmax(out.seq_relationship_logits, -1).numpy(),
    }


def random_transformers_model(folder: str, vocab_size: int) -> None:
    """A BertForPreTraining with every weight drawn at random (seeded), saved by transformers."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        hidden_act="gelu_new",
        layer_norm_eps=1e-12,
    )
    model = BertForPreTraining(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # LayerNorm scales around 1, everything else (biases included) away from its init.
            centre = 1.0 if "LayerNorm.weight" in name else 0.0
            parameter.copy_(centre + 0.3 * torch.randn_like(parameter))
    model.save_pretrained(folder)


def trained_kbert_run(workdir: str, texts_file: str, vocab_file: str) -> str:
    """A tiny `kbert train` run on masked records that `kbert create-data` made from the texts."""
    from kbert.cli import main
    from kbert.config import BertConfig

    config = os.path.join(workdir, "bert_config.json")
    BertConfig(
        vocab_size=sum(1 for _ in open(vocab_file, encoding="utf-8")),
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
    ).to_json_file(config)
    data = os.path.join(workdir, "data", "train")
    create = ["create-data", "--input_file", texts_file, "--output_file", data]
    create += ["--vocab_file", vocab_file, "--nodo_lower_case", "--max_seq_length", "32"]
    create += ["--max_predictions_per_seq", "5", "--dupe_factor", "20", "--quiet"]
    run = os.path.join(workdir, "run")
    train = ["train", "--config", config, "--train_files", os.path.dirname(data)]
    train += ["--output_dir", run, "--steps", "60", "--batch_size", "16", "--verbose", "0"]
    train += ["--learning_rate", "1e-2", "--mixed_precision", "none"]
    for command in (create, train):
        if main(command) != 0:
            sys.exit(f"kbert {command[0]} failed")
    return run


def main() -> None:
    from transformers import BertTokenizerFast

    import kbert
    from tfrecords_tools.vocab import learn_vocab

    texts = json.loads((DATA / "texts.json").read_text(encoding="utf-8"))
    vocab_file = str(DATA / "vocab.txt")
    learn_vocab(texts * 3, vocab_file, vocab_size=600, do_lower_case=False, min_frequency=2)
    vocab_size = sum(1 for _ in open(vocab_file, encoding="utf-8"))

    with tempfile.TemporaryDirectory() as workdir:
        ids = {}
        model = kbert.build_pretraining_model(
            kbert.BertConfig(
                vocab_size=vocab_size,
                hidden_size=HIDDEN,
                num_hidden_layers=1,
                num_attention_heads=HEADS,
                intermediate_size=INTERMEDIATE,
            ),
            8,
            2,
        )
        for case, lower in (("uncased", True), ("cased", False)):
            folder = os.path.join(workdir, case)
            kbert.save_huggingface(model, folder, vocab_file, do_lower_case=lower)
            tokenizer = BertTokenizerFast.from_pretrained(folder)
            ids[case] = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        (DATA / "tokenization.json").write_text(json.dumps(ids) + "\n", encoding="utf-8")

        for name in ("random", "trained"):
            shutil.rmtree(DATA / name, ignore_errors=True)
        random_transformers_model(str(DATA / "random"), vocab_size)
        # Google's layout: one sentence per line, a blank line between documents.
        texts_file = os.path.join(workdir, "texts.txt")
        with open(texts_file, "w", encoding="utf-8") as f:
            for i in range(0, len(texts), 3):
                f.write("\n".join(t for t in texts[i : i + 3] if t.strip()) + "\n\n")
        run = trained_kbert_run(workdir, texts_file, vocab_file)
        kbert.save_huggingface(run, str(DATA / "trained"), vocab_file)

    inputs = reference_inputs(vocab_size)
    arrays = dict(inputs)
    for name in ("random", "trained"):
        for output, value in transformers_log_probs(str(DATA / name), inputs).items():
            arrays[f"{name}_{output}"] = value
    np.savez(DATA / "references.npz", **arrays)


if __name__ == "__main__":
    main()
