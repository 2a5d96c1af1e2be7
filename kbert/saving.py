"""Keras-native loading of the `.keras` files kbert writes: `load_model` and `custom_objects`.

Keras 3.15 finds a saved class by its registered name (`kbert>BertPretrainingModel`) in its global
registry of custom objects, and imports a class's module by name only for Keras' own packages, so
kbert's classes must be registered before `keras.saving.load_model` runs. `import kbert` arranges
that without importing Keras (nor TensorFlow): `register_on_keras_import` swaps Keras' registry,
as soon as Keras has created it, for one that imports `SERIALIZABLE_MODULES` on the first look-up
of a `kbert>` name it does not hold. This module imports neither Keras nor TensorFlow itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
from typing import TYPE_CHECKING, Any

from kbert.import_hooks import OnImport

if TYPE_CHECKING:
    import keras

# Every kbert module that defines a class or function with
# `@keras.saving.register_keras_serializable(package="kbert")`, and no other (tests/test_saving.py
# fails when one is missing or one registers nothing).
SERIALIZABLE_MODULES = (
    "kbert.heads",
    "kbert.losses",
    "kbert.metrics",
    "kbert.model",
    "kbert.optimization",
)
PACKAGE_PREFIX = "kbert>"
# Keras' module that owns the global registry (`GLOBAL_CUSTOM_OBJECTS`).
_KERAS_REGISTRY_MODULE = "keras.src.saving.object_registration"
_lock = threading.RLock()


def register_keras_classes() -> None:
    """Register every kbert class and function Keras may find in a `.keras` file (idempotent).

    Examples:
    >>> import keras
    >>> register_keras_classes()
    >>> keras.saving.get_registered_object("kbert>BertPretrainingModel").__name__
    'BertPretrainingModel'
    """
    from kbert.versions import check_installed_versions

    check_installed_versions()  # a clear error here, not a failed op load inside TensorFlow
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(name)


def custom_objects() -> dict[str, Any]:
    """kbert's Keras classes and functions by registered name, for `custom_object_scope`.

    Examples:
    >>> import keras, kbert
    >>> model = kbert.build_pretraining_model(kbert.BertConfig.from_preset("tiny", vocab_size=32),
    ...                                       8, 2)
    >>> model.save("model.keras")
    >>> with keras.saving.custom_object_scope(kbert.custom_objects()):
    ...     type(keras.saving.load_model("model.keras")).__name__
    'BertPretrainingModel'
    """
    import keras

    register_keras_classes()
    registry = keras.saving.get_custom_objects()
    return {name: obj for name, obj in registry.items() if name.startswith(PACKAGE_PREFIX)}


def load_model(path: str, compile: bool = True) -> keras.Model:
    """The kbert pre-training model of a run directory (its `model.keras`) or a `.keras` file.

    Equal to `keras.saving.load_model` after `import kbert`, with kbert's errors: one line naming
    the file and what was expected. With `compile=True` the optimizer (its step and state), the
    learning-rate schedule, the losses and the metrics come back, so `fit` goes on training.

    Args:
        path: a run directory or a `.keras` file (any `tf.io.gfile` path).
        compile: restore the compiled training state (False: the model only).

    Raises:
        FileNotFoundError: no model at `path`.
        ValueError: the file is not a loadable `.keras` model, or not a kbert pre-training model.

    Examples:
    >>> import kbert
    >>> config = kbert.BertConfig.from_preset("tiny", vocab_size=32)
    >>> model = kbert.build_pretraining_model(config, 8, 2)
    >>> _ = kbert.compile_for_pretraining(model, kbert.create_optimizer(1e-4, 100))
    >>> model.save("model.keras")
    >>> round(float(kbert.load_model("model.keras").optimizer.learning_rate), 6)
    0.0001
    """
    from kbert.model import load_pretraining_model

    return load_pretraining_model(path, compile=compile)


class _RegistryImportingKbert(dict):
    """Keras' global registry of custom objects, importing kbert's Keras modules the first time a
    `kbert>` name it does not hold is looked up (Keras asks `name in registry` first)."""

    def __contains__(self, name: object) -> bool:
        if super().__contains__(name):
            return True
        if isinstance(name, str) and name.startswith(PACKAGE_PREFIX):
            with _lock:
                register_keras_classes()
        return super().__contains__(name)


def _swap_registry(registration: Any) -> None:
    """Make Keras' registry one that registers kbert's classes on demand (keeping its entries)."""
    with _lock:
        registry = registration.GLOBAL_CUSTOM_OBJECTS
        if not isinstance(registry, _RegistryImportingKbert):
            registration.GLOBAL_CUSTOM_OBJECTS = _RegistryImportingKbert(registry)


def register_on_keras_import() -> None:
    """Let `keras.saving.load_model` find kbert's classes, now or once Keras is imported.

    Imports nothing: if Keras is not loaded yet, an import hook swaps its registry right after
    Keras creates it.

    Examples:
    >>> import keras
    >>> register_on_keras_import()
    >>> "kbert>WeightedSparseCrossEntropy" in keras.saving.get_custom_objects()
    True
    """
    with _lock:
        registration = sys.modules.get(_KERAS_REGISTRY_MODULE)
        if registration is not None:
            _swap_registry(registration)
        elif not any(
            isinstance(f, OnImport) and f.name == _KERAS_REGISTRY_MODULE for f in sys.meta_path
        ):
            sys.meta_path.insert(0, OnImport(_KERAS_REGISTRY_MODULE, then=_swap_registry))
