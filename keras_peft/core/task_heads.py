"""One head per named adapter: the task's trainable layers outside its
backbone (a classifier's logits layer), kept per adapter by `TaskHead`."""

import keras

from keras_peft.core import layer_tree
from keras_peft.core import method as method_lib
from keras_peft.core import scopes
from keras_peft.layers.task_head import TaskHead


def plan(context, name, others):
    """What gives adapter `name` its own head beside adapters `others`.

    Every trainable `Dense` of the task outside the backbone gets a new
    slot for `name` holding a freshly initialized kernel and bias, as a new
    task head would start; the first time, the layer is wrapped by a
    `TaskHead` whose slot 0 (its current weights) belongs to `others[0]`
    and which gives each of `others[1:]` a copy of them.

    Returns:
        `(replacements, absorbed)`, as `composition.compose` returns them.

    Raises:
        ValueError: the task has trainable layers outside its backbone that
            are not dense layers (they cannot be kept per adapter).
    """
    if context.model is context.backbone:
        return (), ()
    inside = {
        id(layer) for layer, _ in layer_tree.iter_layers(context.backbone)
    }
    replacements, absorbed, unsupported = [], [], []
    for layer, parent in layer_tree.iter_layers(context.model):
        if (
            layer is context.model
            or id(layer) in inside
            or isinstance(parent, TaskHead)
        ):
            continue
        if isinstance(layer, TaskHead):
            absorbed.append(
                method_lib.Replacement(layer, _fresh_head(layer.base_layer))
            )
            continue
        trainable = [
            v
            for v in layer._trainable_variables + layer._non_trainable_variables
            if v.trainable
        ]
        if not trainable:
            continue
        if type(layer) is not keras.layers.Dense:
            unsupported.append(layer)
            continue
        with scopes.scope_of(layer.path):
            head = TaskHead(layer)
        # The head served every adapter so far: each keeps a copy of it.
        head.set_slot_names([others[0]])
        for other in others[1:]:
            head.add_slot(other, TaskHead(layer))
        replacements.append(method_lib.Replacement(layer, head))
        absorbed.append(method_lib.Replacement(head, _fresh_head(layer)))
    if unsupported:
        listing = ", ".join(
            f"{layer.path or layer.name!r} ({type(layer).__name__})"
            for layer in unsupported
        )
        raise ValueError(
            f"Cannot add adapter {name!r} beside {list(others)}: each adapter "
            f"gets its own copy of the task's trainable layers outside the "
            f"backbone, which keras-peft does for Dense layers only; "
            f"{type(context.model).__name__} trains {listing}. Freeze them "
            "(`layer.trainable = False`) to share them between adapters."
        )
    return tuple(replacements), tuple(absorbed)


def _fresh_head(dense):
    """A detached `TaskHead` around a newly initialized copy of `dense`."""
    clone = keras.layers.Dense.from_config(dense.get_config())
    with scopes.scope_of(dense.path):
        clone.build(dense.get_build_config()["input_shape"])
    return TaskHead(clone)


def head_names(model):
    """The adapter names whose heads `model` keeps, slot order; `()` when
    its head is not kept per adapter."""
    for layer, _ in layer_tree.iter_layers(model):
        if isinstance(layer, TaskHead):
            return layer.slot_names
    return ()


def restore(model, names):
    """Wraps a rebuilt task's heads again for adapters `names` (what
    `head_names` gave when it was saved), before its weights load."""
    from keras_peft.core import architectures
    from keras_peft.core import state as state_lib
    from keras_peft.core import surgery

    context = architectures.resolve_model(model)
    for index, name in enumerate(names[1:], start=1):
        replacements, absorbed = plan(context, name, tuple(names[:index]))
        for replacement in replacements:
            surgery.replace_layer(model, replacement.old, replacement.new)
        for replacement in absorbed:
            replacement.old.add_slot(name, replacement.new)
    heads = [
        layer
        for layer, _ in layer_tree.iter_layers(model)
        if isinstance(layer, TaskHead)
    ]
    state = state_lib.get_state(context.backbone)
    for head in heads:
        head.enable_switching()
        if state is not None and state.active in head.slot_names:
            head.select(state.active)
