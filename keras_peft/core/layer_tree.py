"""Walking a model's tree of layers."""

import keras


def iter_layers(root):
    """Yields `(layer, parent)` for every layer under `root`, once each.

    `root` itself comes first with parent `None`; the order is depth-first
    through each layer's tracked sub-layers, as Keras orders `weights`.
    """
    seen = set()
    stack = [(root, None)]
    while stack:
        layer, parent = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer, parent
        children = [(child, layer) for child in layer._layers]
        stack.extend(reversed(children))


def parent_map(root):
    """Maps `id(layer)` to the layer's parent for every layer under `root`."""
    return {id(layer): parent for layer, parent in iter_layers(root)}


def is_functional(layer):
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")


def weights_in_order(root, replacements=None):
    """Lists `root.weights` as they will be once `replacements` are made.

    Mirrors `keras.layers.Layer.weights` (own variables first, then each
    tracked sub-layer's, de-duplicated), with each layer whose id is a key of
    `replacements` standing in for its replacement.

    Args:
        root: the model.
        replacements: optional dict from `id(old_layer)` to the new layer.
    """
    weights, seen = [], set()
    for layer in layers_in_order(root, replacements):
        for variable in (
            layer._trainable_variables + layer._non_trainable_variables
        ):
            if id(variable) not in seen:
                seen.add(id(variable))
                weights.append(variable)
    return weights


def layers_in_order(root, replacements=None):
    """Lists the layers under `root` (pre-order) once `replacements` are made.

    A replacement usually wraps the layer it replaces, so inside the new
    layer the old one is visited as itself.
    """
    replacements = replacements or {}
    found, seen = [], set()

    def visit(layer, pending):
        if id(layer) in pending:
            new = pending[id(layer)]
            pending = {k: v for k, v in pending.items() if k != id(layer)}
            layer = new
        if id(layer) in seen:
            return
        seen.add(id(layer))
        found.append(layer)
        for child in layer._layers:
            visit(child, pending)

    visit(root, dict(replacements))
    return found
