"""notebooks/colab_tpu.ipynb runs end to end on CPU, as on a TPU runtime but with 2 CPU devices.

The notebook runs unedited in a real IPython kernel (nbclient), so its `!` shell lines and
`{VAR}` expansions run as in Colab. Small settings go in a cell inserted after the one tagged
`parameters` (papermill's convention). The kernel gets `KERAS_BACKEND=jax` and two forced CPU
devices, the data-parallel proxy for a TPU's chips.
"""

import csv
import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(__file__)), "notebooks", "colab_tpu.ipynb")
SMALL_SETTINGS = dict(
    NUM_DOCUMENTS=60,
    VOCAB_SIZE=800,
    MAX_SEQ_LENGTH=32,
    MAX_PREDICTIONS_PER_SEQ=5,
    DUPE_FACTOR=1,
    BATCH_SIZE=8,
    STEPS=4,
    CHECKPOINT_INTERVAL=2,
    EVAL_INTERVAL=4,
)
CELL_TIMEOUT_SECONDS = 600


def _parameters_index(notebook: nbformat.NotebookNode) -> int:
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def _printed(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in a fresh temporary directory, and that directory."""
    workdir = tmp_path_factory.mktemp("colab")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    overrides = "\n".join(f"{name} = {value!r}" for name, value in SMALL_SETTINGS.items())
    notebook.cells.insert(_parameters_index(notebook) + 1, nbformat.v4.new_code_cell(overrides))
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        # The `kbert` command of the `!` lines: the one installed beside this Python.
        PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    )
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)
    return notebook, workdir / "kbert_colab"


def test_notebook_is_saved_as_valid_nbformat_4_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    _parameters_index(notebook)


def test_notebook_trains_with_jax_data_parallel_over_every_device(executed):
    _, workdir = executed
    run_dir = workdir / "runs" / "tiny"
    assert (run_dir / "model.keras").is_file()
    with open(run_dir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(float(row["step"])) for row in rows]
    assert steps == sorted(set(steps)) and steps[-1] == SMALL_SETTINGS["STEPS"], steps
    assert float(rows[-1]["val_loss"]) > 0, rows[-1]
    facts = json.loads((run_dir / "run_config.json").read_text())["run"]
    assert facts["backend"] == "jax" and facts["num_replicas"] == 2, facts


def test_notebook_evaluates_and_plots_the_run(executed):
    _, workdir = executed
    run_dir = workdir / "runs" / "tiny"
    results = json.loads((run_dir / "heldout_results.json").read_text())
    for name in ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"):
        assert isinstance(results[name], float), name
    assert results["num_sequences"] > 0
    assert (run_dir / "loss_curves.png").stat().st_size > 0


def test_notebook_exports_a_savedmodel_under_saved_models(executed):
    _, workdir = executed
    assert (workdir / "saved_models" / "kbert-colab" / "1" / "saved_model.pb").is_file()


def test_notebook_prints_three_fill_mask_answers_from_the_savedmodel(executed):
    notebook, _ = executed
    fill_mask_cell = [c for c in notebook.cells if 'signatures["fill_mask"]' in c.source][-1]
    printed = _printed(fill_mask_cell)
    answers = [line for line in printed.splitlines() if line.startswith("    -> ")]
    assert len(answers) == 3, printed
    assert all(len(line) > len("    -> ") for line in answers), printed
