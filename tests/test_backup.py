"""The resume backup (`kbert.backup`): a state holds the weights and whatever optimizer is compiled,
and a damaged or unfinished newest state falls back to the previous complete one."""

import json
import logging
import os

import keras
import numpy as np
import pytest
from helpers import compiled_tiny, random_batch

from kbert.backup import DamagedBackupError, ResumeBackup, find_state, save_state

OPTIMIZERS = {
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.01),
    "sgd_accumulating": lambda: keras.optimizers.SGD(0.1, gradient_accumulation_steps=2),
    "loss_scaled_adam": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2)),
    "lion": lambda: keras.optimizers.Lion(1e-3),
}


def train(model, steps, seed=0):
    x, y, w = random_batch(batch_size=8, num_predictions=4, seed=seed)
    model.fit(x, y, sample_weight=w, batch_size=8, epochs=steps, verbose=0, shuffle=False)


def restored(backup_dir, optimizer, seed=1):
    """A model built from another seed, then restored from `backup_dir`'s state."""
    model = compiled_tiny(optimizer, seed=seed)
    callback = ResumeBackup(backup_dir, find_state(backup_dir))
    callback.set_model(model)
    callback.on_train_begin()
    return model


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_restored_state_continues_training_exactly_whatever_the_optimizer(tmp_path, name):
    backup = str(tmp_path / "backup")
    original = compiled_tiny(OPTIMIZERS[name]())
    train(original, 3)
    save_state(backup, original, epoch=3)
    copy = restored(backup, OPTIMIZERS[name]())
    for a, b in zip(original.optimizer.variables, copy.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    # One more update on each: the same weights, so the moments and step were restored too.
    train(original, 1, seed=7)
    train(copy, 1, seed=7)
    for a, b in zip(original.weights, copy.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)


@pytest.fixture
def two_states(tmp_path):
    """A backup directory holding the states of epochs 1 and 2 (2 current) and their models."""
    backup = str(tmp_path / "backup")
    model = compiled_tiny(keras.optimizers.Adam(1e-2))
    train(model, 1)
    first = save_state(backup, model, epoch=1)
    weights_1 = [w.numpy() for w in model.weights]
    train(model, 1)
    second = save_state(backup, model, epoch=2, previous=first)
    return backup, first, second, weights_1


def damage_truncated(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def damage_flipped_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def damage_manifest_removed(path):
    os.remove(os.path.join(os.path.dirname(path), "manifest.json"))


@pytest.mark.parametrize("damage", [damage_truncated, damage_flipped_byte, damage_manifest_removed])
def test_a_damaged_newest_state_falls_back_to_the_previous_with_one_log_line(
    two_states, damage, caplog
):
    backup, first, second, weights_1 = two_states
    damage(second.weights)
    with caplog.at_level(logging.WARNING, logger="kbert.backup"):
        state = find_state(backup)
    assert (state.epoch, state.step) == (1, 1)
    [line] = [r.getMessage() for r in caplog.records]
    assert second.path in line and f"falling back to {first.path}" in line
    model = restored(backup, keras.optimizers.Adam(1e-2))
    for a, b in zip(model.weights, weights_1):
        np.testing.assert_array_equal(a.numpy(), b)


def test_a_state_never_made_current_is_not_used(two_states):
    backup, first, second, _ = two_states
    # A kill between the manifest and the pointer: current.json still names the first state.
    with open(os.path.join(backup, "current.json"), "w") as f:
        json.dump({"format": 1, "state": os.path.basename(first.path), "epoch": 1, "step": 1}, f)
    assert find_state(backup).epoch == 1


def test_a_first_backup_killed_before_its_pointer_means_a_fresh_start(tmp_path):
    backup = str(tmp_path / "backup")
    model = compiled_tiny(keras.optimizers.Adam(1e-2))
    save_state(backup, model, epoch=1)
    os.remove(os.path.join(backup, "current.json"))
    assert find_state(backup) is None


def test_saving_keeps_the_current_state_and_its_predecessor_only(two_states):
    backup, first, second, _ = two_states
    model = compiled_tiny(keras.optimizers.Adam(1e-2))
    train(model, 3)
    os.makedirs(os.path.join(backup, "interval-0000009-0badc0de"))  # a killed write's folder
    third = save_state(backup, model, epoch=3, previous=second)
    kept = {os.path.basename(s.path) for s in (second, third)}
    assert {n for n in os.listdir(backup) if n.startswith("interval-")} == kept


def test_every_state_damaged_is_one_clear_error(two_states):
    backup, first, second, _ = two_states
    damage_truncated(first.weights)
    damage_truncated(second.weights)
    with pytest.raises(DamagedBackupError, match=r"no usable resume backup in .*Remove"):
        find_state(backup)


def test_an_optimizer_step_other_than_the_manifest_is_refused(two_states):
    backup, _, second, _ = two_states
    manifest = os.path.join(second.path, "manifest.json")
    with open(manifest) as f:
        data = json.load(f)
    data["step"] = 7
    with open(manifest, "w") as f:
        json.dump(data, f)
    with pytest.raises(DamagedBackupError, match="the optimizer's step is 2, .* says 7"):
        restored(backup, keras.optimizers.Adam(1e-2))
