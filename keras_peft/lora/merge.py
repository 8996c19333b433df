"""Folding LoRA updates into the base kernels and back out."""

from keras_peft.core import architectures
from keras_peft.core import injection
from keras_peft.core import layer_tree
from keras_peft.core import recompile
from keras_peft.core import surgery
from keras_peft.layers.lora_dense import LoRADense


def lora_layers(model):
    """Every `LoRADense` in `model`, in layer-tree order."""
    return [
        layer
        for layer, _ in layer_tree.iter_layers(model)
        if isinstance(layer, LoRADense)
    ]


def _required_lora_layers(model):
    layers = lora_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no LoRA layers; apply a "
            "`keras_peft.LoRAConfig` first."
        )
    return layers


def merge_lora(model, unload=False):
    """Folds every LoRA update into its base kernel.

    The model computes the same outputs with no extra inference cost.
    `unmerge_lora` takes the updates back out. With `unload=True` the
    `LoRADense` wrappers are removed as well, leaving a plain keras-hub model
    (merged weights, original trainable flags) that saves and loads like any
    other; it can no longer be unmerged.

    Args:
        model: a model LoRA was applied to (backbone or task).
        unload: bool. Also remove the wrappers. Defaults to `False`.

    Returns:
        The same `model`.

    Example:
    ```python
    keras_peft.merge_lora(classifier)
    classifier.predict(x)  # same outputs, base-model speed
    keras_peft.unmerge_lora(classifier)
    ```
    """
    model = architectures.resolve_model(model).model
    layers = _required_lora_layers(model)
    for layer in layers:
        layer.merge()
    surgery.forget_compiled_functions(model)
    if unload:
        injection.remove_method(model, LoRADense.method, LoRADense.release)
        # The base weights get their trainable flags back.
        recompile.require_recompile(model, "keras_peft.merge_lora(unload=True)")
    return model


def unmerge_lora(model):
    """Takes every merged LoRA update back out of its base kernel.

    Args:
        model: a model whose LoRA layers were merged with `merge_lora`.

    Returns:
        The same `model`.

    Example:
    ```python
    keras_peft.merge_lora(classifier)
    keras_peft.unmerge_lora(classifier)  # kernels exactly as before merging
    classifier.fit(x, y)                 # training needs unmerged layers
    ```
    """
    model = architectures.resolve_model(model).model
    for layer in _required_lora_layers(model):
        layer.unmerge()
    surgery.forget_compiled_functions(model)
    return model
