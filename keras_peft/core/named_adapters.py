"""Several named adapters on one backbone: list, switch, disable, delete."""

import contextlib

from keras_peft.core import architectures
from keras_peft.core import injection
from keras_peft.core import kept_copies
from keras_peft.core import layer_tree
from keras_peft.core import recompile
from keras_peft.core import scopes
from keras_peft.core import state as state_lib
from keras_peft.core import surgery
from keras_peft.core import switching
from keras_peft.core import tf_distribute
from keras_peft.layers.disabling import all_disabled
from keras_peft.layers.kept_variable import KeptVariable
from keras_peft.layers.site_host import SiteHost
from keras_peft.layers.task_head import TaskHead
from keras_peft.layers.wrapper import Wrapper


def adapter_names(model):
    """The names of the adapters applied to `model`, in the order added.

    Args:
        model: a supported keras-hub backbone or task.

    Returns:
        A tuple of str; empty when no adapter is applied.

    Example:
    ```python
    keras_peft.apply(classifier, keras_peft.LoRAConfig(), name="sst2")
    keras_peft.apply(classifier, keras_peft.LoRAConfig(), name="mnli")
    keras_peft.adapter_names(classifier)  # ("sst2", "mnli")
    ```
    """
    state = _state(model)
    return tuple(state.adapters) if state else ()


def active_adapter(model):
    """The name of the adapter that acts in `model`, or `None`.

    Args:
        model: a supported keras-hub backbone or task.
    """
    state = _state(model)
    return state.active if state else None


def set_active(model, name):
    """Makes adapter `name` the one that acts in `model`.

    The other adapters stay in the model, untouched, and add nothing to its
    outputs. Switching assigns one int32 variable per adapter layer: it
    builds no variable and retraces no compiled `predict`, `evaluate` or
    `fit` function. Every adapter's variables stay trainable; those of
    inactive adapters get zero gradients. An optimizer with state still
    moves them: Adam's moments keep an adapter trained before the switch
    moving for a while, and weight decay (`AdamW`) moves every adapter.
    To train one adapter after another, `compile` again (a fresh
    optimizer) after switching: a zero gradient then updates by exactly 0.

    Args:
        model: a supported keras-hub backbone or task.
        name: str. One of `keras_peft.adapter_names(model)`.

    Returns:
        The same `model`.

    Example:
    ```python
    keras_peft.load_adapter(classifier, "adapters/mnli", name="mnli")
    keras_peft.set_active(classifier, "mnli")
    classifier.predict(batch)  # mnli's outputs, same compiled function
    ```
    """
    context = architectures.resolve_model(model)
    state = _known(context, name, "set_active")
    for holder in state.holders(context.model):
        switching.select(holder, name)
    state.active = name
    return model


@contextlib.contextmanager
def disabled(model):
    """A context in which `model` computes what its base model computes.

    Every keras-peft layer of the model computes exactly what the layer it
    wraps computes (no prompt, prefix, update or adapter), so outputs equal
    those of the model before any adapter was applied, bit for bit. The
    flag is read when layers are traced: entering and leaving drop the
    model's compiled functions, so the next `predict` traces again. On exit,
    also through an exception, the adapters act again.

    A task's own layers outside the backbone (a classifier's head) are not
    adapters: they compute as before (the active adapter's head). An
    adapter alone in its model that trains the base model's own variables
    in place (BitFit, LoRA's `bias`, Houlsby's layer norms) cannot be
    disabled: `disabled` raises a `ValueError` for it. (Beside other
    adapters it trains copies of them, which `disabled` switches off.)

    Args:
        model: a supported keras-hub backbone or task.

    Example:
    ```python
    with keras_peft.disabled(classifier):
        base_logits = classifier.predict(batch)
    ```
    """
    context = architectures.resolve_model(model)
    state = state_lib.get_state(context.backbone)
    if state is not None and any(state.all_trainable_base_variables):
        kept = [
            config
            for adapter in state.adapters.values()
            for config, group in zip(
                adapter.configs, adapter.trainable_base_variables
            )
            if group
        ]
        raise ValueError(
            f"`disabled` cannot give the base model's outputs: "
            f"{', '.join(repr(c) for c in kept)} trains variables of the base "
            "model itself in place (BitFit's biases, LoRA's `bias`, "
            "Houlsby's layer norms), which no adapter layer can switch off."
        )
    merged = switching.merged_lora_paths(context.backbone)
    if merged:
        raise ValueError(
            "`disabled` cannot give the base model's outputs: LoRA is merged "
            f"into the base kernels ({merged[0]!r}, ...). Call "
            "`keras_peft.unmerge_lora` first."
        )
    # The backbone's layers: a task's head (one per adapter) stays the
    # active adapter's.
    layers = switching.peft_layers(context.backbone)
    surgery.forget_compiled_functions(context.model)
    try:
        with all_disabled(layers):
            yield model
    finally:
        surgery.forget_compiled_functions(context.model)


def delete_adapter(model, name):
    """Removes adapter `name` and its weights from `model`.

    Layers that held only this adapter go, giving their place back to the
    layer they wrapped; layers shared with other adapters drop its slot.
    The other adapters compute as before. The active adapter cannot be
    deleted (activate another one first). Compile the model again before
    training it.

    Args:
        model: a supported keras-hub backbone or task.
        name: str. One of `keras_peft.adapter_names(model)`, not the active
            one.

    Returns:
        The same `model`.

    Example:
    ```python
    keras_peft.set_active(classifier, "mnli")
    keras_peft.delete_adapter(classifier, "sst2")
    ```
    """
    context = architectures.resolve_model(model)
    state = _known(context, name, "delete_adapter")
    if name == state.active:
        raise ValueError(
            f"Adapter {name!r} is the active adapter of "
            f"{type(context.model).__name__}; `delete_adapter` cannot delete "
            "it. Activate another one first (`keras_peft.set_active`)"
            + ("." if len(state.adapters) > 1 else ", or add one.")
        )
    holders = state.holders(context.model)
    layers = list(
        {
            id(layer): layer
            for holder in holders
            for layer in switching.adapter_layers(holder)
        }.values()
    )
    alone = [layer for layer in layers if layer.slot_names == (name,)]
    shared = [
        layer
        for layer in layers
        if name in layer.slot_names and layer.slot_names != (name,)
    ]
    # Removing a slot remakes the layer's banks.
    with tf_distribute.creation_scope(context.model):
        for layer in shared:
            layer.remove_slot(name)
    for holder in holders:
        # Layers the holders share (the backbone's) go once.
        present = {id(layer) for layer, _ in layer_tree.iter_layers(holder)}
        _remove_layers(holder, [x for x in alone if id(x) in present])
    state = state.replaced(name, (), ())
    if len(state.adapters) == 1:
        # As if only that adapter had ever been applied: its base variables
        # train in place, no switch variables, and the task's head back in
        # place of its TaskHead.
        state = _keep_in_place(holders, state)
        for holder in holders:
            for layer in switching.adapter_layers(holder):
                layer.disable_switching()
                if isinstance(layer, TaskHead):
                    surgery.replace_layer(holder, layer, layer.release())
    injection.record_state(context.backbone, state, context.model)
    for holder in holders:
        switching.select(holder, state.active)
        surgery.forget_compiled_functions(holder)
    recompile.require_recompile(
        context.model, "keras_peft.delete_adapter", stacklevel=2
    )
    return model


def _keep_in_place(holders, state):
    """`state`'s only adapter trains its base variables in place again:
    its `KeptVariable`s' values go into them, and the modules go."""
    ((name, adapter),) = state.adapters.items()
    modules = {
        id(layer): layer
        for holder in holders
        for layer in switching.adapter_layers(holder)
        if isinstance(layer, KeptVariable)
    }
    originals = kept_copies.to_in_place(modules.values())
    for holder in holders:
        present = {id(layer) for layer, _ in layer_tree.iter_layers(holder)}
        _remove_layers(holder, [m for k, m in modules.items() if k in present])
    return state.replaced(
        name,
        adapter.configs,
        adapter.trainable_base_variables,
        originals=originals,
    )


def _remove_layers(model, layers):
    """Takes adapter `layers` out of `model`: delta modules out of their
    site hosts, replacing wrappers out of the layer they wrap."""
    removed = {id(layer) for layer in layers}
    all_hosts = [
        layer
        for layer, _ in layer_tree.iter_layers(model)
        if isinstance(layer, SiteHost)
    ]
    # Taps a remaining module reads: a tap read only by removed modules
    # goes with them.
    read = {
        id(tap)
        for host in all_hosts
        for module, tap in host.parallel
        if tap is not None and id(module) not in removed
    }
    for host in all_hosts:
        parallel = [(m, t) for m, t in host.parallel if id(m) not in removed]
        sequential = [
            m for m in host.sequential_modules if id(m) not in removed
        ]
        kept = [m for m in host.kept_modules if id(m) not in removed]
        records = tuple(tap for tap in host.records if id(tap) in read)
        if (
            len(parallel) == len(host.parallel)
            and len(sequential) == len(host.sequential_modules)
            and len(kept) == len(host.kept_modules)
            and len(records) == len(host.records)
        ):
            continue
        if not parallel and not sequential and not kept and not records:
            surgery.replace_layer(model, host, host.base_layer)
            continue
        with scopes.scope_of(host.path):
            new = SiteHost(
                host.base_layer,
                parallel=parallel,
                sequential=sequential,
                records=records,
                kept=kept,
                name=host.name,
            )
        surgery.replace_layer(model, host, new)
    for layer in layers:
        if isinstance(layer, Wrapper):
            surgery.replace_layer(model, layer, layer.release())


def _state(model):
    context = architectures.resolve_model(model)
    return state_lib.get_state(context.backbone)


def _known(context, name, action):
    """The backbone's state, once `name` is known to be one of its adapters."""
    state = state_lib.get_state(context.backbone)
    names = tuple(state.adapters) if state else ()
    if name not in names:
        held = (
            f"its adapters are {list(names)}"
            if names
            else "it has no adapter applied"
        )
        raise ValueError(
            f"`{action}`: {type(context.model).__name__} has no adapter "
            f"named {name!r}; {held}."
        )
    return state
