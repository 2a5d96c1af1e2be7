"""`BertConfig`: Google's `bert_config.json`, its named size presets, and their validation."""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from kbert.errors import InputError, SettingError
from kbert.io import check_positive_int, read_json, write_json

# Google's "gelu" is the tanh approximation; HF calls the same function "gelu_new".
# keras-hub's BertBackbone uses exactly that one, so these are the activations it can build.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new")

# name: (num_hidden_layers, hidden_size, num_attention_heads); intermediate = 4H.
PRESET_SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclasses.dataclass
class BertConfig:
    """BERT hyper-parameters under the field names of Google's `bert_config.json`.

    Args:
        vocab_size: number of WordPiece ids.
        hidden_size: width H of the encoder.
        num_hidden_layers: number of transformer layers L.
        num_attention_heads: attention heads A; must divide `hidden_size`.
        intermediate_size: width of the feed-forward layer (Google: 4H).
        hidden_act: "gelu" (Google's tanh approximation; "gelu_new" is HF's name for it).
        hidden_dropout_prob: dropout on embeddings and layer outputs.
        attention_probs_dropout_prob: dropout on attention probabilities.
        max_position_embeddings: longest sequence the position table holds.
        type_vocab_size: number of segment ids.
        initializer_range: stddev of the truncated-normal initializer.

    Examples:
    >>> config = BertConfig.from_preset("tiny", vocab_size=1000)
    >>> config.hidden_size, config.intermediate_size
    (128, 512)
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid field."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            check_positive_int(f"BertConfig.{name}", getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise SettingError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise SettingError(
                f"BertConfig.hidden_act {self.hidden_act!r} is not supported: the encoder "
                f"(keras-hub BertBackbone) uses {' / '.join(SUPPORTED_ACTIVATIONS)} "
                "(Google's tanh-approximated GELU)"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise SettingError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if self.hidden_dropout_prob != self.attention_probs_dropout_prob:
            raise SettingError(
                "BertConfig.attention_probs_dropout_prob "
                f"({self.attention_probs_dropout_prob}) must equal hidden_dropout_prob "
                f"({self.hidden_dropout_prob}): keras-hub's BertBackbone has one dropout rate"
            )
        if (
            isinstance(self.initializer_range, bool)
            or not isinstance(self.initializer_range, (int, float))
            or self.initializer_range <= 0
        ):
            raise SettingError(
                f"BertConfig.initializer_range must be a positive number, "
                f"got {self.initializer_range!r}"
            )

    @property
    def dropout(self) -> float:
        """The single dropout rate the encoder uses."""
        return float(self.hidden_dropout_prob)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        """Build from a dict of Google's field names; an unknown field is a ValueError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingError(
                f"Unknown BertConfig field(s): {', '.join(unknown)} "
                f"(expected Google's bert_config.json names: {', '.join(sorted(names))})"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, in Google's order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json_file(cls, path: str) -> BertConfig:
        """Read Google's `bert_config.json` (any `tf.io.gfile` path)."""
        data = read_json(path, "BERT config file")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise InputError(f"{path}: {e}") from None

    def to_json_file(self, path: str) -> None:
        """Write Google's `bert_config.json` layout, atomically."""
        write_json(path, self.to_dict(), sort_keys=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BertConfig:
        """One of the named sizes (`tiny` … `large`), with any field overridden."""
        if name not in PRESET_SIZES:
            raise SettingError(
                f"Unknown BertConfig preset {name!r}; choose one of {', '.join(PRESET_SIZES)}"
            )
        layers, hidden, heads = PRESET_SIZES[name]
        fields = dict(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
        )
        fields.update(overrides)
        return cls.from_dict(fields)


def resolve_config(config: BertConfig | str, **overrides: Any) -> BertConfig:
    """A BertConfig from a config object, a preset name or a `bert_config.json` path."""
    if isinstance(config, BertConfig):
        return dataclasses.replace(config, **overrides) if overrides else config
    if config in PRESET_SIZES:
        return BertConfig.from_preset(config, **overrides)
    if tf.io.gfile.exists(config):
        loaded = BertConfig.from_json_file(config)
        return dataclasses.replace(loaded, **overrides) if overrides else loaded
    raise SettingError(
        f"config {config!r} is neither a preset ({', '.join(PRESET_SIZES)}) "
        "nor an existing bert_config.json"
    )
