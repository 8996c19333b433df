"""Swapping one layer for another everywhere a model refers to it."""

import weakref

import keras

from keras_peft.core import layer_tree


def _references(root, old):
    """Finds every place under `root` that refers to the layer `old`.

    Returns a list of `(kind, holder, key)` tuples: `"tracked"` (a parent's
    tracked sub-layer list), `"attr"` (an attribute), `"list"` (a layer's
    list attribute `key` that holds `old`), `"item"` (an element of a dict
    attribute, or of a list inside one) and `"node"` (the operation of a
    functional graph node).
    """
    refs = []
    for layer, _ in layer_tree.iter_layers(root):
        if any(child is old for child in layer._layers):
            refs.append(("tracked", layer, None))
        for name, value in list(vars(layer).items()):
            # `_self_unconditional_*`: TensorFlow's own record of tracked
            # attributes, which it updates when the attribute is assigned
            # below; edited here, one of its two records would disagree
            # with the other and `tf.saved_model.save` miss the new layer.
            if name in (
                "_layers",
                "_operations",
                "_tracker",
            ) or name.startswith("_self_unconditional"):
                continue
            if value is old:
                refs.append(("attr", layer, name))
            elif isinstance(value, tuple):
                for index, item in enumerate(value):
                    if item is old:
                        refs.append(("item", value, index))
            elif isinstance(value, list):
                if any(item is old for item in value):
                    refs.append(("list", layer, name))
            elif isinstance(value, dict):
                for key, item in value.items():
                    if item is old:
                        refs.append(("item", value, key))
        if layer_tree.is_functional(layer):
            refs.extend(_graph_references(layer, old))
    return refs


def _graph_references(functional, old):
    """References to `old` in a functional model's graph of operations."""
    refs = []
    for nodes in functional._nodes_by_depth.values():
        for node in nodes:
            if node.operation is old:
                refs.append(("node", node, "operation"))
    if any(operation is old for operation in functional._operations):
        refs.append(("list", functional, "_operations"))
    for operations in functional._operations_by_depth.values():
        for index, operation in enumerate(operations):
            if operation is old:
                refs.append(("item", operations, index))
    return refs


def _selected_references(root, old, graph_of):
    if graph_of is None:
        return _references(root, old)
    refs = _graph_references(graph_of, old)
    if any(child is old for child in graph_of._layers):
        refs.append(("tracked", graph_of, None))
    return refs


def check_replaceable(root, old, graph_of=None):
    """Raises a `ValueError` if `old` cannot be swapped out under `root`.

    Args:
        root: the model that holds `old`.
        old: the layer to swap out.
        graph_of: optional functional model: only its graph would change.
    """
    refs = _selected_references(root, old, graph_of)
    if not any(kind == "tracked" for kind, _, _ in refs):
        raise ValueError(
            f"Layer {old.path or old.name!r} is not a tracked sub-layer of "
            f"{type(root).__name__}; keras-peft cannot replace it."
        )
    for kind, holder, _ in refs:
        if kind == "item" and isinstance(holder, tuple):
            raise ValueError(
                f"Layer {old.path or old.name!r} is held in a tuple, which "
                "keras-peft cannot edit in place."
            )


def replace_layer(root, old, new, graph_of=None):
    """Makes `root` use the layer `new` wherever it used `old`.

    Updates the tracked sub-layer lists (so `weights` and saving see `new`),
    attributes and list/dict attributes (so Python `call` code uses `new`) and
    functional graph nodes (so a functional model's graph calls `new`).

    Args:
        root: the model that holds `old`.
        old: the layer to swap out.
        new: a built layer with the same call signature.
        graph_of: optional functional model. Swap `old` only in its graph of
            operations (and its tracked layers), leaving every other
            reference, such as a tied output head's, on `old`.
    """
    check_replaceable(root, old, graph_of)
    refs = _selected_references(root, old, graph_of)
    # Tracked sub-layer lists first: `new` is then tracked wherever `old`
    # was, and assigning a list that holds it below tracks it nowhere again.
    refs.sort(key=lambda ref: ref[0] != "tracked")
    for kind, holder, key in refs:
        if kind == "tracked":
            holder._tracker.replace_tracked_value("layers", old, new)
        elif kind == "list":
            _replace_in_list(holder, key, old, new)
        elif kind == "item":
            holder[key] = new
        else:  # an attribute, or a functional node's `operation`
            setattr(holder, key, new)
    forget_compiled_functions(root)


def _replace_in_list(holder, name, old, new):
    items = getattr(holder, name)
    if holder._tracker.is_in_store("layers", new):
        # A new list, assigned as Keras assigns it: on TensorFlow, an
        # element replaced in place marks the tracking list wrapper as
        # edited, and `tf.saved_model.save` then refuses the model.
        setattr(holder, name, [new if item is old else item for item in items])
    else:
        # A list of layers the holder does not own: assigning it would make
        # the holder track `new`, so it is edited in place.
        for index, item in enumerate(items):
            if item is old:
                items[index] = new


# Models that run another model's layers in their own compiled functions
# (a `MultiTaskModel`), by the model they run.
_DEPENDENTS = weakref.WeakKeyDictionary()


def register_dependent(model, dependent):
    """Makes `forget_compiled_functions(model)` forget `dependent`'s too."""
    _DEPENDENTS.setdefault(model, weakref.WeakSet()).add(dependent)


def dependents(model):
    """The models registered as running `model` (`register_dependent`)."""
    return list(_DEPENDENTS.get(model, ()))


def forget_compiled_functions(model):
    """Drops traced functions that would still run the old layers: the
    model's, and those of models registered as running it."""
    for dependent in dependents(model):
        _forget(dependent)
    _forget(model)


def _forget(model):
    if not isinstance(model, keras.Model):
        return
    for name in (
        "train_function",
        "test_function",
        "predict_function",
        "generate_function",
        # A `MultiTaskModel`'s routed generation, traced once per sampler.
        "_generate_function",
    ):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
