"""TensorFlow-only: create adapter variables under the model's strategy."""

import contextlib

import keras


def _strategy_of(model):
    for variable in model.weights:
        return getattr(variable.value, "_distribute_strategy", None)
    return None


def creation_scope(model):
    """The `tf.distribute` scope new variables of `model` must be made in.

    A model built under `strategy.scope()` has distributed variables; adapter
    variables created outside that scope would be plain ones, and training
    would fail much later with an obscure error. Applying a method outside the
    scope enters it here; applying inside another strategy's scope is an
    error.

    Args:
        model: the model that receives new variables.

    Returns:
        A context manager.
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    model_strategy = _strategy_of(model)
    current = (
        tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
    )
    if model_strategy is current:
        return contextlib.nullcontext()
    if current is None:
        return model_strategy.scope()
    raise ValueError(
        f"The model's variables were created under "
        f"{type(model_strategy).__name__ if model_strategy else 'no strategy'}"
        f" but keras-peft was called inside {type(current).__name__}.scope(). "
        "Apply or load adapters in the scope the model was built in."
    )
