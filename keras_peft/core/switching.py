"""Named adapters in one model: names, slots, and which variables are whose.

Every `AdapterLayer` records the names of the adapters whose weights it
holds (`slot_names`). While a model holds one adapter, its layers compute
with their own variables, as they always did. Once it holds several, every
adapter layer gets an `active_slot` variable; `set_active` assigns each one
the slot of the chosen adapter (or none: the layer then adds nothing).
"""

import re

from keras_peft.core import kept_copies
from keras_peft.core import layer_tree
from keras_peft.core import state as state_lib
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.site_host import SiteHost
from keras_peft.layers.task_head import TaskHead
from keras_peft.layers.wrapper import Wrapper

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_name(name):
    """Returns `name` (`"default"` for `None`) or raises a `ValueError`."""
    if name is None:
        return state_lib.DEFAULT_NAME
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"An adapter name is a non-empty string of letters, digits, '_' "
            f"and '-', starting with a letter or digit. Received: {name!r}"
        )
    return name


def adapter_layers(root):
    """The `AdapterLayer`s under `root`, in tree order."""
    return [
        layer
        for layer, _ in layer_tree.iter_layers(root)
        if isinstance(layer, AdapterLayer)
    ]


def peft_layers(root):
    """The keras-peft layers under `root` (wrappers, site hosts and adapter
    layers): what `disabled` switches off."""
    return [
        layer
        for layer, _ in layer_tree.iter_layers(root)
        if isinstance(layer, (Wrapper, AdapterLayer))
    ]


def unswitchable_kinds(layers):
    """The class names of the adapter layers among `layers` (and inside
    them) that cannot be switched off, as text; `""` if none."""
    fixed = {
        type(layer).__name__
        for root in layers
        for layer in adapter_layers(root)
        if not layer.switchable
    }
    return ", ".join(sorted(fixed))


def merged_lora_paths(root):
    """The paths of the LoRA layers under `root` merged into their base."""
    return [
        layer.path
        for layer in adapter_layers(root)
        if getattr(layer, "merged", False)
    ]


def _check_not_fixed(name, others, kinds, whose):
    if kinds:
        raise ValueError(
            f"Cannot add adapter {name!r} beside {others}: {whose} {kinds} "
            "layers cannot be switched off while another adapter acts. A "
            "model holding several named adapters takes layers that "
            "switch between adapters (every keras-peft method's)."
        )


def check_joinable(context, name, others):
    """Raises a `ValueError` unless the adapters already in the model can
    share it with a new adapter `name`."""
    state = state_lib.get_state(context.backbone)
    _check_not_fixed(
        name, others, unswitchable_kinds([context.backbone]), "their"
    )
    merged = merged_lora_paths(context.backbone)
    if merged:
        raise ValueError(
            f"Cannot add adapter {name!r} beside {others}: LoRA is merged "
            f"into the base kernels ({merged[0]!r}, ...), so it would act "
            "whichever adapter is active. Call `keras_peft.unmerge_lora` "
            "first."
        )
    for other in others:
        adapter = state.adapters[other]
        if not (state.in_place and adapter.kept_variables):
            continue
        if adapter.originals is None:
            raise ValueError(
                f"Cannot add adapter {name!r} beside {other!r}: {other!r} "
                "trained variables of the base model in place (BitFit's "
                "biases, LoRA's `bias`, Houlsby's layer norms), and this "
                "model, restored from a file, no longer knows their "
                "original values, which the new adapter needs. Save it "
                f"(`keras_peft.save_adapter(model, path, name={other!r})`) "
                "and load it by name into the base model beside the new "
                "one."
            )
        kept_copies.check_keepable_variables(
            context, adapter.kept_variables, other
        )


def check_plans_joinable(context, name, others, configs, method_plans):
    """Raises a `ValueError` unless adapter `name`'s planned layers can be
    switched off while one of `others` acts, and every adapter can keep
    its own copy of the base variables it trains."""
    built = []
    for plan in method_plans:
        built += [r.new for r in plan.replacements]
        built += [d.module for d in plan.deltas]
    _check_not_fixed(name, others, unswitchable_kinds(built), "its")
    kept_copies.check_keepable_variables(
        context,
        [v for plan in method_plans for v in plan.trainable_base_variables],
        name,
    )


def name_slots(model, state, name):
    """After an install: names the slot 0 of layers new to the model
    `name`, keeps every layer's slots in the order of the model's adapters
    (an adapter that took more layers after others took theirs was added
    last in those), and, in a model with several adapters, makes every
    adapter layer switchable and points it at the active adapter."""
    layers = adapter_layers(model)
    order = list(state.adapters)
    for layer in layers:
        if not layer.slot_names:
            layer.set_slot_names([name])
        layer.order_slots(order)
    if len(state.adapters) > 1:
        for layer in layers:
            layer.enable_switching()
    select(model, state.active)


def select(model, name):
    """Points every switchable layer of `model` at adapter `name`."""
    for layer in adapter_layers(model):
        if layer.active_slot is not None:
            layer.select(name)


def named_variables(model, name, view=None, trainable_ids=None, absorbed=()):
    """Adapter `name`'s trainable variables in `model`, with their
    addresses as they would be in a model holding only that adapter.

    The variables of other adapters are left out; a variable of a slot
    other than slot 0 takes the address of its slot-0 counterpart, so
    that an adapter saved from any slot loads into any other. Other
    trainable variables (a task head) are included.

    Args:
        model: the model.
        name: str. The adapter.
        view: optional dict from `id(layer)` to the layer standing in its
            place (`Plan.named_view`).
        trainable_ids: optional set of the ids of the variables that train
            (by default, those whose `trainable` is set).
        absorbed: `Replacement`s whose `old` (a layer in the model) is to
            take the planned `new` as adapter `name`'s slot
            (`Plan.absorbed`): `new`'s variables stand for that slot.

    Returns:
        A list of `(address, variable)`, in `model.weights` order; a slot
        kept in a row of a bank is a `SlotRow`, in its bank's place.
    """
    view = _resolved(view or {})
    takes = {}
    for replacement in absorbed:
        # With their own adapter layers (a prompt insertion's prompt), not
        # those inside the layer they wrap (another adapter's).
        pairs = zip(
            _own_adapter_layers(replacement.old),
            _own_adapter_layers(replacement.new),
        )
        takes.update({id(old): new for old, new in pairs})
    addresses = _alone_addresses(model, name, view, takes)
    # `id` of a variable in the model to `(address, what stands for it)`:
    # the variable, or the row of a bank holding adapter `name`'s slot.
    mine, others, planned = {}, set(), []
    for layer in layer_tree.layers_in_order(model, view):
        if not isinstance(layer, AdapterLayer):
            continue
        names = layer.slot_names or (name,)
        own_addresses = [addresses.get(id(v)) for v in layer.stands_for()]
        others.update(id(bank) for bank in layer.bank_variables)
        for slot, slot_name in enumerate(names):
            variables = layer.slot_variables(slot)
            for address, variable in zip(own_addresses, variables):
                # A slot after slot 0 is a row of its variable's bank.
                key = id(getattr(variable, "bank", variable))
                if slot_name == name:
                    mine[key] = (address, variable)
                elif slot == 0:
                    others.add(key)
        if id(layer) in takes:
            for address, variable in zip(
                own_addresses, takes[id(layer)].slot_variables(0)
            ):
                planned.append((address, variable))
        if layer.active_slot is not None:
            others.add(id(layer.active_slot))
    found = []
    for variable in layer_tree.weights_in_order(model, view):
        if id(variable) in mine:
            found.append(mine[id(variable)])
        elif id(variable) not in others and (
            variable.trainable
            if trainable_ids is None
            else id(variable) in trainable_ids
        ):
            found.append((addresses[id(variable)], variable))
    return found + planned


def _own_adapter_layers(layer):
    """`layer` and the adapter layers inside it, but not inside the layer
    it wraps."""
    wrapped = getattr(layer, "wrapped_layer", None)
    found = [layer]
    for child in layer._layers:
        if child is not wrapped:
            found += adapter_layers(child)
    return found


def _resolved(view):
    """`view` with chains (a replaced by b, b by c) followed to their end."""
    resolved = {}
    for key, layer in view.items():
        seen = {key}
        while id(layer) in view and id(layer) not in seen:
            seen.add(id(layer))
            layer = view[id(layer)]
        resolved[key] = layer
    return resolved


def _serves(layer, name):
    return not layer.slot_names or name in layer.slot_names


def _alone_addresses(model, name, view, takes):
    """Variable addresses in `model` (seen through `view`) as they would be
    in a model holding adapter `name` alone.

    keras-peft wrappers that such a model would not have are taken out of
    the addresses (a wrapper takes the name of the layer it wraps, so each
    adds one level): a replacing wrapper without a slot for `name`, a task
    head (whose slot 0 is its wrapped layer's own variables), and a site
    host with none of `name`'s modules and no tap they read.
    """
    addresses = layer_tree.variable_addresses(model, view)
    alone = _alone_rewriter(model, name, view, takes)
    return {key: alone(address) for key, address in addresses.items()}


def alone_layer_addresses(model, name):
    """`layer_tree.layer_addresses(model)` as they would be in a model
    holding adapter `name` alone."""
    alone = _alone_rewriter(model, name, {}, {})
    return {
        key: alone(address)
        for key, address in layer_tree.layer_addresses(model).items()
    }


def _alone_rewriter(model, name, view, takes):
    """A function taking an address in `model` to the address it would
    have in a model holding adapter `name` alone (`_alone_addresses`)."""
    prefixes = layer_tree.layer_addresses(model, view)
    layers = layer_tree.layers_in_order(model, view)

    def seen(module):
        return view.get(id(module), module)

    def serves(layer):
        return id(layer) in takes or _serves(layer, name)

    hosts = [layer for layer in layers if isinstance(layer, SiteHost)]
    read = {
        id(tap)
        for host in hosts
        for module, tap in host.parallel
        if tap is not None and serves(seen(module))
    }
    levels = []
    for layer in layers:
        if isinstance(layer, SiteHost):
            drop = not any(
                serves(seen(m)) for m in host_modules(layer)
            ) and not any(id(tap) in read for tap in layer.records)
        elif isinstance(layer, TaskHead):
            drop = True
        elif isinstance(layer, AdapterLayer) and isinstance(layer, Wrapper):
            drop = not serves(layer)
        else:
            drop = False
        # What stands inside the wrapper: its wrapped layer, or what the
        # view puts in that layer's place.
        child = layer.wrapped_layer if drop else None
        if child is not None and seen(child) is not layer:
            child = seen(child)
        own = prefixes.get(id(layer))
        inner = prefixes.get(id(child)) if child is not None else None
        if own is not None and inner is not None and inner.startswith(own):
            levels.append((inner, own))
    # Innermost first: each rewrite takes one level out.
    levels.sort(key=lambda level: -len(level[0]))

    def alone(address):
        for inner, own in levels:
            if address.startswith(inner):
                address = own + address[len(inner) :]
        return address

    return alone


def host_modules(host):
    """The delta modules a site host applies."""
    return list(host.parallel_modules) + list(host.sequential_modules)
