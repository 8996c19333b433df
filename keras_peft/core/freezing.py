"""Which variables train: adapters, chosen base variables, the task head."""

import keras

from keras_peft.core import layer_tree
from keras_peft.layers.adapter_layer import AdapterLayer

_BIAS_ATTRIBUTES = ("bias", "beta")


def bias_variables(layers):
    """The bias terms of `layers`: dense biases and normalization offsets.

    Args:
        layers: iterable of layers. Only each layer's own variables are
            looked at, not its sub-layers'.
    """
    found = []
    for layer in layers:
        if isinstance(layer, AdapterLayer):
            continue
        for name in _BIAS_ATTRIBUTES:
            variable = getattr(layer, name, None)
            if isinstance(variable, keras.Variable):
                found.append(variable)
    return found


def adapter_variables(layers):
    """All adapter variables of the `AdapterLayer`s among `layers`."""
    found = []
    for layer in layers:
        if isinstance(layer, AdapterLayer):
            found.extend(layer.adapter_variables)
    return found


def trainable_ids(adapter_layers, base_variable_groups):
    """Ids of the backbone variables that train once adapters are in place.

    Args:
        adapter_layers: the `AdapterLayer`s the backbone will hold.
        base_variable_groups: iterable of variable sequences that configs
            keep trainable.
    """
    ids = {id(v) for v in adapter_variables(adapter_layers)}
    for group in base_variable_groups:
        ids.update(id(v) for v in group)
    return ids


def set_backbone_trainable(backbone, keep_ids):
    """Freezes every backbone variable except those whose id is in keep_ids.

    Freezing is per variable, not per layer: a layer's `trainable=False`
    would hide the adapter variables it holds.
    """
    for variable in backbone.weights:
        variable.trainable = id(variable) in keep_ids


def snapshot_trainable(backbone):
    return {id(v): (v, v.trainable) for v in backbone.weights}


def restore_trainable(snapshot):
    for variable, trainable in snapshot.values():
        variable.trainable = trainable


def layers_of(root):
    return [layer for layer, _ in layer_tree.iter_layers(root)]
