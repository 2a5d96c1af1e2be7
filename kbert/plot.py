"""Loss curves of a run: total, MLM and NSP loss and both accuracies against the step."""

from __future__ import annotations

import csv
import io
import os

import tensorflow as tf

from kbert.errors import InputError, MissingFileError
from kbert.io import read_json, write_atomically

PANELS = (
    ("loss", "total loss (MLM + NSP)"),
    ("mlm_loss", "MLM loss"),
    ("nsp_loss", "NSP loss"),
    ("mlm_accuracy", "MLM accuracy"),
    ("nsp_accuracy", "NSP accuracy"),
)
HISTORY_NAMES = ("history.csv", "training_log.csv", "log.csv")
EVAL_RESULTS = "eval_results.json"


def find_history(run_dir: str) -> str:
    """The CSV history of a run directory (the CSVLogger file), or a clear error."""
    if not tf.io.gfile.isdir(run_dir):
        if tf.io.gfile.exists(run_dir) and run_dir.endswith(".csv"):
            return run_dir
        raise MissingFileError(f"{run_dir}: no such run directory")
    for name in HISTORY_NAMES:
        path = tf.io.gfile.join(run_dir, name)
        if tf.io.gfile.exists(path):
            return path
    found = sorted(tf.io.gfile.glob(tf.io.gfile.join(run_dir, "*.csv")))
    if not found:
        raise MissingFileError(f"{run_dir}: no CSV training history (expected {HISTORY_NAMES[0]})")
    return found[0]


def read_history(path: str) -> list[dict[str, float]]:
    """Rows of a CSV history as floats (empty cells are skipped)."""
    with tf.io.gfile.GFile(path, "r") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    if not rows:
        raise InputError(f"{path}: the training history has no rows yet")
    parsed = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            parsed.append({k: float(v) for k, v in row.items() if k and v not in ("", None)})
        except ValueError:
            raise InputError(f"{path}: line {number} holds a value that is not a number") from None
    return parsed


def plot_run(run_dir: str, output: str | None = None) -> str:
    """Draw the run's loss curves to a PNG (default `<run_dir>/loss_curves.png`); returns its path.

    Train curves come from the CSV history (x axis: its `step` column, else the epoch; a row
    every `log_interval` updates); eval curves from its `val_*` columns (the rows of the
    evaluation intervals), and the final evaluation in `eval_results.json` is marked.

    Examples:
    >>> plot_run("runs/demo")  # doctest: +SKIP
    'runs/demo/loss_curves.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history_path = find_history(run_dir)
    rows = read_history(history_path)
    directory = run_dir if tf.io.gfile.isdir(run_dir) else os.path.dirname(history_path)
    x_key = "step" if "step" in rows[0] else "epoch"
    final_eval = _final_eval(directory)
    last_step = max(r.get(x_key, 0.0) for r in rows)

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.4))
    for ax, (key, title) in zip(axes, PANELS):
        for prefix, label, style in (("", "train", "-"), ("val_", "eval", "--")):
            points = [(r[x_key], r[prefix + key]) for r in rows if prefix + key in r]
            if points:
                xs, ys = zip(*points)
                # Dots only where they stay apart (history.csv has ~100 rows per run).
                marker = "o" if len(points) <= 50 else None
                ax.plot(xs, ys, style, marker=marker, markersize=3, label=label)
        if key in final_eval:
            ax.plot([last_step], [final_eval[key]], "r*", markersize=12, label="final eval")
        ax.set_title(title)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()

    output = output or tf.io.gfile.join(directory, "loss_curves.png")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    tf.io.gfile.makedirs(os.path.dirname(output) or ".")
    write_atomically(output, buffer.getvalue())
    return output


def _final_eval(directory: str) -> dict[str, float]:
    path = tf.io.gfile.join(directory, EVAL_RESULTS)
    if not tf.io.gfile.exists(path):
        return {}
    results = read_json(path, "evaluation results file")
    if "loss" not in results and {"mlm_loss", "nsp_loss"} <= set(results):
        results["loss"] = results["mlm_loss"] + results["nsp_loss"]
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
