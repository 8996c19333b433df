"""Walking a model's tree of layers."""

import re

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


def _snake_case(name):
    """A class name as Keras turns it into a default layer name."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _default_name_stem(layer):
    """The stem of the name Keras gives `layer` when none is passed, or
    `None` when `layer` carries a name of its own.

    A wrapper takes the name of the layer it holds, so the class that named
    it is the innermost held layer's.
    """
    classes = [type(layer)]
    named = layer
    while getattr(named, "wrapped_layer", None) is not None:
        named = named.wrapped_layer
        classes.append(type(named))
    for cls in reversed(classes):
        stem = _snake_case(cls.__name__)
        if re.fullmatch(rf"{re.escape(stem)}(_\d+)?", layer.name):
            return stem
    return None


def _addressed_layers(root, replacements=None):
    """Yields `(layer, address)` for every layer under `root`, pre-order.

    `address` is the chain of names from `root` (excluded) down to the
    layer, each followed by `/` (`""` for `root`); see `variable_addresses`.
    """
    replacements = replacements or {}
    seen = set()

    def visit(layer, prefix, pending):
        if id(layer) in pending:
            new = pending[id(layer)]
            pending = {k: v for k, v in pending.items() if k != id(layer)}
            layer = new
        if id(layer) in seen:
            return
        seen.add(id(layer))
        yield layer, prefix
        children = [pending.get(id(child), child) for child in layer._layers]
        ranks = {}
        for original, child in zip(layer._layers, children):
            stem = _default_name_stem(child)
            if stem is None:
                name = child.name
            else:
                name = f"{stem}[{ranks.get(stem, 0)}]"
                ranks[stem] = ranks.get(stem, 0) + 1
            yield from visit(original, f"{prefix}{name}/", pending)

    yield from visit(root, "", dict(replacements))


def layer_addresses(root, replacements=None):
    """Maps `id(layer)` to the address prefix of the layer's variables.

    A variable named `v` of the layer has the address `prefix + "v"` in
    `variable_addresses`, also for a variable the layer does not hold yet.

    Args:
        root: the model.
        replacements: optional dict from `id(old_layer)` to the new layer,
            as in `layers_in_order`.
    """
    return {
        id(layer): prefix
        for layer, prefix in _addressed_layers(root, replacements)
    }


def variable_addresses(root, replacements=None):
    """Maps `id(variable)` to an address of the variable under `root`.

    The address is the chain of layer names from `root` (excluded) down to
    the layer that owns the variable, then the variable's name:
    `"bert_backbone[0]/transformer_layer_10/self_attention_layer/query/lora_a"`.
    A layer named by Keras' default (`dense`, `dense_7`: a process-wide
    counter, different in every instance of a model) is addressed by its
    class and its rank among such siblings (`dense[1]`), so two instances of
    one model give the same addresses, whatever else was built before
    them, while names that differ only in a number (`transformer_layer_1`,
    `transformer_layer_10`) stay apart.

    Args:
        root: the model.
        replacements: optional dict from `id(old_layer)` to the new layer,
            as in `layers_in_order`.

    Raises:
        ValueError: two variables get one address (sibling layers that
            share a name).
    """
    addresses, owners = {}, {}
    for layer, prefix in _addressed_layers(root, replacements):
        for variable in (
            layer._trainable_variables + layer._non_trainable_variables
        ):
            if id(variable) in addresses:
                continue
            address = prefix + variable.name
            if address in owners:
                raise ValueError(
                    f"Two variables of {root.name!r} have the address "
                    f"{address!r} ({owners[address]!r} and "
                    f"{variable.path!r}): sibling layers share a name. Give "
                    "each layer a unique name."
                )
            owners[address] = variable.path
            addresses[id(variable)] = address
    return addresses
