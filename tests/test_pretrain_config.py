"""`PretrainConfig`: a run's settings validate themselves, derive their defaults and round-trip
through run_config.json."""

import dataclasses
import json

import pytest
from helpers import tiny_config

from kbert.pretrain_config import PretrainConfig


def settings(**overrides):
    return PretrainConfig(
        **{
            "config": "tiny",
            "train_files": "data/",
            "output_dir": "run/",
            "steps": 100,
            **overrides,
        }
    )


def test_defaults_derived_from_steps_are_filled_in_once():
    assert settings(steps=2500).with_defaults().warmup_steps == 250
    # The largest divisor of steps up to 1000, so every interval ends with a checkpoint.
    assert settings(steps=2500).with_defaults().checkpoint_interval == 625  # 1250 > 1000
    # A prime: no divisor from 100 to 1000, so intervals of 1000 and a last one of 9.
    assert settings(steps=1009).with_defaults().checkpoint_interval == 1000
    assert settings(steps=2018).with_defaults().checkpoint_interval == 1000  # 2 x 1009
    assert settings(steps=99).with_defaults().checkpoint_interval == 99
    assert settings(steps=40).with_defaults().checkpoint_interval == 40
    given = settings(steps=40, warmup_steps=0, checkpoint_interval=8).with_defaults()
    assert (given.warmup_steps, given.checkpoint_interval) == (0, 8)


@pytest.mark.parametrize(
    "steps, log_interval", [(40, 1), (120, 1), (5_000, 50), (10_000, 100), (1_000_000, 100)]
)
def test_default_log_interval_gives_about_100_rows_and_one_at_least_every_100_updates(
    steps, log_interval
):
    assert settings(steps=steps).with_defaults().log_interval == log_interval
    assert settings(steps=steps, log_interval=7).with_defaults().log_interval == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(steps=0), "steps must be a positive integer, got 0"),
        (dict(batch_size=True), "batch_size must be a positive integer, got True"),
        (dict(keep_checkpoints=-1), "keep_checkpoints must be a positive integer"),
        (dict(optimizer="adam"), "optimizer must be one of adamw, lamb, .*, got 'adam'"),
        (dict(clip_norm=-1.0), "clip_norm must be >= 0, got -1.0"),
        (dict(mixed_precision="fp8"), "mixed_precision must be one of auto, none, bf16, fp16"),
        (dict(strategy="gpu"), "strategy must be one of auto, cpu, mirrored"),
        (dict(warmup_steps=101), r"warmup_steps must be between 0 and steps \(100\), got 101"),
        (
            dict(checkpoint_interval=300),
            r"checkpoint_interval \(300\) must be at most steps \(100\)",
        ),
        (dict(eval_interval=10), "eval_interval needs eval_files"),
        (
            dict(eval_files="heldout/", checkpoint_interval=20, eval_interval=30),
            r"eval_interval \(30\) must be a multiple of checkpoint_interval \(20\)",
        ),
        (dict(eval_batch_size=0), "eval_batch_size must be a positive integer"),
        (dict(log_interval=0), "log_interval must be a positive integer"),
    ],
)
def test_a_bad_setting_is_named_when_the_config_is_made(overrides, message):
    with pytest.raises(ValueError, match=message):
        settings(**overrides)


def test_run_config_json_round_trips_with_a_bert_config_and_the_run_facts(tmp_path):
    config = settings(config=tiny_config(), train_files=("a/*", "b/*"), jit_compile=True)
    path = str(tmp_path / "run_config.json")

    config.to_json(path, run={"num_replicas": 2})

    written = json.loads(open(path).read())
    assert written["train_files"] == ["a/*", "b/*"] and written["run"] == {"num_replicas": 2}
    assert written["config"]["hidden_size"] == 32
    again = PretrainConfig.from_json(path)
    assert again.config == tiny_config() and again.to_dict() == config.to_dict()


def test_a_run_config_json_with_an_unknown_setting_is_named(tmp_path):
    path = tmp_path / "run_config.json"
    path.write_text(json.dumps({**settings().to_dict(), "stpes": 3}))
    with pytest.raises(
        ValueError, match=r"run_config.json: unknown PretrainConfig field\(s\): stpes"
    ):
        PretrainConfig.from_json(str(path))


def test_the_settings_that_fix_data_order_schedule_and_numbers_are_resume_invariants():
    assert set(PretrainConfig.resume_invariants()) == {
        "weight_decay",
        "mixed_precision",
        "max_predictions_per_seq",
        "dynamic_masking_vocab",
        "train_files",
        "batch_size",
        "steps",
        "warmup_steps",
        "learning_rate",
        "checkpoint_interval",
        "gradient_accumulation_steps",
        "seed",
        "optimizer",
        "clip_norm",
    }


def test_every_field_has_help_and_a_group():
    for field in dataclasses.fields(PretrainConfig):
        assert len(field.metadata["help"]) > 10, field.name
        assert field.metadata["group"], field.name
