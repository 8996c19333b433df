"""Folding what can be folded into the base before serving."""

import os
import tempfile

import keras

from keras_peft.lora import merge
from keras_peft.prefix_tuning import eject


def copy_model(model):
    """A copy of `model` with the same weights, through a `.keras` file.

    Args:
        model: a Keras model that `model.save` can write.

    Returns:
        The copy, not compiled.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "copy.keras")
        try:
            model.save(path)
            copy = keras.saving.load_model(path, compile=False)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Cannot fold the adapters of this {type(model).__name__} "
                "into a copy: the copy is made through a `.keras` file, and "
                f"saving or loading it failed ({error}). Export the model as "
                "it is with `merge=False`."
            ) from error
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is not None:
        # The same preprocessor, not a copy: it holds no weights, and
        # keras-hub's seq2seq preprocessors do not save their sequence
        # lengths in their config.
        copy.preprocessor = preprocessor
    return copy


def folded_copy(model):
    """`model`, or a copy of it with LoRA merged in and prefix MLPs ejected.

    The caller's model is never changed: when there is something to fold,
    the folding happens on a copy. A copy of a model holding several named
    adapters keeps only the active one (their weights share each kernel).

    Args:
        model: a model keras-peft methods may have been applied to.

    Returns:
        `model` itself if nothing can be folded, else the folded copy.
    """
    from keras_peft.core import named_adapters

    names = named_adapters.adapter_names(model)
    lora = bool(merge.lora_layers(model))
    prefix_mlp = bool(eject.reparametrized_prefixes(model))
    if len(names) < 2 and not (lora or prefix_mlp):
        return model
    copy = copy_model(model)
    # Several adapters share each kernel: the copy keeps the active one.
    active = named_adapters.active_adapter(model)
    for name in names:
        if name != active:
            named_adapters.delete_adapter(copy, name)
    lora = bool(merge.lora_layers(copy))
    prefix_mlp = bool(eject.reparametrized_prefixes(copy))
    if lora:
        # Unloaded, not just merged: the export holds no `A` or `B`.
        merge.merge_lora(copy, unload=True)
    if prefix_mlp:
        eject.eject_prefix(copy)
    return copy
