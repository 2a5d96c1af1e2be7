"""`kbert plot`: a run's CSV history becomes a PNG of its loss curves."""

import json

import pytest
import tensorflow as tf

from kbert.cli import main
from kbert.plot import plot_run


def write_history(run_dir, with_eval=True):
    header = "epoch,step,loss,mlm_loss,nsp_loss,mlm_accuracy,nsp_accuracy,learning_rate"
    if with_eval:
        header += ",val_loss,val_mlm_loss,val_nsp_loss,val_mlm_accuracy,val_nsp_accuracy"
    lines = [header]
    for epoch in range(5):
        mlm, nsp = 6.0 - epoch, 0.7 - 0.05 * epoch
        row = [epoch, 10 * (epoch + 1), mlm + nsp, mlm, nsp, 0.05 * epoch, 0.5 + 0.05 * epoch, 1e-4]
        if with_eval:
            row += [mlm + nsp + 0.2, mlm + 0.1, nsp + 0.1, 0.04 * epoch, 0.5 + 0.04 * epoch]
        lines.append(",".join(str(v) for v in row))
    (run_dir / "history.csv").write_text("\n".join(lines) + "\n")


def test_plot_writes_a_non_blank_png_of_train_and_eval_curves(tmp_path):
    write_history(tmp_path)
    (tmp_path / "eval_results.json").write_text(json.dumps({"mlm_loss": 2.0, "nsp_loss": 0.5}))
    path = plot_run(str(tmp_path))
    assert path == str(tmp_path / "loss_curves.png")
    image = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert image.shape[0] > 100 and image.shape[1] > 500
    assert image.std() > 10  # curves, titles and axes, not one flat colour


def test_plot_cli_takes_a_run_dir_and_an_output_path(tmp_path, capsys):
    write_history(tmp_path, with_eval=False)
    out = tmp_path / "curves" / "x.png"
    assert main(["plot", str(tmp_path), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert tf.io.decode_png(tf.io.read_file(str(out))).shape[-1] in (3, 4)


def test_plot_of_a_directory_without_history_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "no CSV training history" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        plot_run(str(tmp_path / "missing"))
