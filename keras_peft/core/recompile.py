"""What changing a trained model's trainable weights does to `compile`."""

import warnings

import keras


def require_recompile(model, action, stacklevel=2):
    """Marks `model` as needing `compile()` again if its optimizer is built.

    Keras builds the optimizer for the trainable variables it sees in the
    first training step. Once built (the model has trained), it refuses
    others: after `apply` (new adapter variables) `fit` would fail deep
    inside the optimizer ("Unknown variable ... recreate a new optimizer
    instance"). So such a model stops counting as compiled: `fit` and
    `evaluate` ask for `compile()` up front, and a warning says why. A
    model compiled but not trained (keras-hub tasks compile themselves when
    built) needs nothing: its optimizer builds for the new variables.

    Args:
        model: the model `action` changed.
        action: str. What changed it, for the warning (`"keras_peft.apply"`).
        stacklevel: int. Where the user's call into keras-peft is, counting
            the caller of this function as 1 (as `warnings.warn` counts).
    """
    from keras_peft.core import surgery

    # A `keras_peft.multi_task` model compiled on its own trains the same
    # variables.
    for target in [model] + surgery.dependents(model):
        _require_recompile(target, action, stacklevel + 1)


def _require_recompile(model, action, stacklevel):
    if not isinstance(model, keras.Model) or not model.compiled:
        return
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not optimizer.built:
        return
    model.compiled = False
    warnings.warn(
        f"{action} changed which weights of {type(model).__name__} train "
        "after its optimizer was built for others: call `compile(...)` "
        "again (with a new optimizer) before `fit` or `evaluate`. keras-peft "
        "marked the model as not compiled.",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
