"""`keras.saving.load_model` after `import kbert`: every `.keras` file kbert writes loads in a
fresh process, compiled or not, on either backend, and training goes on from it."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import compiled_tiny, random_batch, tiny_config, write_pretraining_records

import kbert
from kbert.cli import main
from kbert.saving import SERIALIZABLE_MODULES

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_python(code, backend="tensorflow"):
    """Run `code` in a fresh Python process on `backend`; its last stdout line as JSON."""
    environment = dict(os.environ, KERAS_BACKEND=backend)
    environment["PYTHONPATH"] = os.pathsep.join(
        [TESTS_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished `kbert train` run of the tiny config (4 updates, AdamW with warmup)."""
    tmp = tmp_path_factory.mktemp("saving")
    data = write_pretraining_records(str(tmp / "data"), num_records=24, seq_len=16)
    config = tmp / "bert_config.json"
    tiny_config().to_json_file(str(config))
    run = tmp / "run"
    flags = ["--config", str(config), "--train-files", data, "--output-dir", str(run)]
    flags += ["--steps", "4", "--batch-size", "8", "--warmup-steps", "2", "--verbose", "0"]
    assert main(["train", *flags]) == 0
    return str(run)


@pytest.fixture(scope="module")
def fresh_start():
    """One fresh process: which of Keras, TensorFlow and JAX `import kbert` and `kbert --help`
    start; then, on the first look-up of a kbert name, the kbert classes Keras knows, and after
    importing every kbert module, all of them and `kbert.custom_objects()`."""
    return run_python(
        "import json, sys, contextlib, io\n"
        "import kbert\n"
        "after_import = sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules)\n"
        "from kbert.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "after_help = sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules)\n"
        "import importlib, pkgutil\n"
        "import keras\n"
        "from kbert.saving import PACKAGE_PREFIX\n"
        "keras.saving.get_registered_object('kbert>BertPretrainingModel')\n"
        "def names():\n"
        "    registry = keras.saving.get_custom_objects()\n"
        "    return {k: v.__module__ for k, v in registry.items()\n"
        "            if k.startswith(PACKAGE_PREFIX)}\n"
        "on_lookup = names()\n"
        "custom = sorted(kbert.custom_objects())\n"
        "for info in pkgutil.walk_packages(kbert.__path__, 'kbert.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        "print(json.dumps({'started': [after_import, after_help],\n"
        "                  'registered': [on_lookup, names(), custom]}))"
    )


def test_import_kbert_and_kbert_help_start_neither_keras_nor_tensorflow(fresh_start):
    assert fresh_start["started"] == [[], []]


LOAD = """
import json, sys
import keras, kbert, numpy as np
from helpers import random_batch
results = {{}}
for compile in (False, True):
    model = keras.saving.load_model({path!r}, compile=compile)
    np.savez({weights!r}.format(compile), *[keras.ops.convert_to_numpy(w) for w in model.weights])
    result = results[str(compile)] = {{"class": type(model).__name__, "compiled": model.compiled}}
    if compile:
        optimizer = model.optimizer
        result["optimizer"] = keras.saving.get_registered_name(type(optimizer))
        result["iterations"] = int(keras.ops.convert_to_numpy(optimizer.iterations))
        result["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        x, y, w = random_batch(batch_size=8, seq_len=16, num_predictions=3)
        history = model.fit(x, y, sample_weight=w, batch_size=8, epochs=1, verbose=0).history
        result["fit_logs"] = sorted(history)
        result["fit_loss"] = history["loss"][0]
        result["iterations_after_fit"] = int(keras.ops.convert_to_numpy(optimizer.iterations))
print(json.dumps(results))
"""


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def loaded_in_fresh_process(request, run_dir, tmp_path_factory):
    """The run's model.keras loaded uncompiled, then compiled (and fitted one step), in one fresh
    process of each backend: {compile: (what it reported, its weights' .npz file)}."""
    weights = str(tmp_path_factory.mktemp("loaded") / "weights-{}.npz")
    path = os.path.join(run_dir, "model.keras")
    results = run_python(LOAD.format(path=path, weights=weights), request.param)
    return {compile: (results[str(compile)], weights.format(compile)) for compile in (False, True)}


@pytest.mark.parametrize("compile", [False, True], ids=["uncompiled", "compiled"])
def test_fresh_process_loads_a_kbert_train_model(run_dir, loaded_in_fresh_process, compile):
    loaded, weights = loaded_in_fresh_process[compile]
    assert loaded["class"] == "BertPretrainingModel"
    # The weights are the run's own: those of its last weight checkpoint (an .h5 Keras wrote).
    config = kbert.BertConfig.from_json_file(os.path.join(run_dir, "bert_config.json"))
    reference = kbert.build_pretraining_model(config, 16, 3)
    reference.load_weights(sorted(glob.glob(os.path.join(run_dir, "checkpoints", "*.h5")))[-1])
    with np.load(weights) as arrays:
        assert len(arrays.files) == len(reference.weights)
        for i, variable in enumerate(reference.weights):
            np.testing.assert_array_equal(arrays[f"arr_{i}"], variable.numpy(), variable.path)
    assert loaded["compiled"] is compile
    if not compile:
        return
    assert loaded["optimizer"].startswith("kbert>")
    assert loaded["iterations"] == 4
    # history.csv logs the learning rate of the next update: the schedule came back with it.
    with open(os.path.join(run_dir, "history.csv")) as f:
        header, *rows = [line.strip().split(",") for line in f]
    assert loaded["learning_rate"] == pytest.approx(float(rows[-1][header.index("learning_rate")]))
    assert {"loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"} <= set(
        loaded["fit_logs"]
    )
    assert np.isfinite(loaded["fit_loss"])
    assert loaded["iterations_after_fit"] == 5


def test_a_reloaded_compiled_model_trains_on_as_the_original_would(tmp_path):
    optimizer = kbert.create_optimizer(1e-2, num_train_steps=10, num_warmup_steps=2)
    model = compiled_tiny(optimizer)
    x, y, w = random_batch(batch_size=8, seq_len=16, num_predictions=4)
    model.fit(x, y, sample_weight=w, batch_size=8, epochs=3, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    model.fit(x, y, sample_weight=w, batch_size=8, epochs=1, verbose=0)
    continued = run_python(
        "import json, keras, kbert, numpy as np\n"
        "from helpers import random_batch\n"
        f"model = keras.saving.load_model({path!r})\n"
        "x, y, w = random_batch(batch_size=8, seq_len=16, num_predictions=4)\n"
        "model.fit(x, y, sample_weight=w, batch_size=8, epochs=1, verbose=0)\n"
        "print(json.dumps({v.path: np.asarray(v.numpy()).tolist() for v in model.weights}))"
    )
    for variable in model.weights:
        np.testing.assert_allclose(
            continued[variable.path], variable.numpy(), rtol=1e-5, atol=1e-7, err_msg=variable.path
        )


def test_custom_objects_loads_inside_a_custom_object_scope(tmp_path):
    import keras

    path = str(tmp_path / "model.keras")
    compiled_tiny(kbert.create_optimizer(1e-3, num_train_steps=10)).save(path)
    with keras.saving.custom_object_scope(kbert.custom_objects()):
        loaded = keras.saving.load_model(path)
    assert type(loaded) is kbert.BertPretrainingModel
    assert loaded.compiled


def test_every_registered_kbert_class_registers_on_the_first_lookup(fresh_start):
    """A class registered in a module that kbert.saving.SERIALIZABLE_MODULES misses fails here."""
    registered = fresh_start["registered"]
    on_lookup, everything, custom = registered
    missed = {name: module for name, module in everything.items() if name not in on_lookup}
    assert not missed, f"add their modules to kbert.saving.SERIALIZABLE_MODULES: {missed}"
    assert set(everything.values()) == set(SERIALIZABLE_MODULES), "modules that register nothing"
    assert custom == sorted(everything)
    assert "kbert>BertPretrainingModel" in everything


def test_load_model_names_the_file_when_it_is_not_a_model(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match=r"model\.keras: not a loadable \.keras model"):
        kbert.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no model to load"):
        kbert.load_model(str(tmp_path / "absent"))
