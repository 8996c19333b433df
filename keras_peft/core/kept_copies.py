"""Base variables that several named adapters train: each its own copy.

BitFit trains the base model's biases, LoRA's `bias` option too, and
Houlsby's adapters its layer norms. A model holding one adapter trains them
in place, and its state records their values from before
(`NamedAdapter.originals`). Once a second adapter joins, every adapter
keeps its own values in `KeptVariable` slots instead: the adapter that
trained in place hands its values to its slots, and the base variables get
their original values back. When deletions leave one adapter, it trains
its variables in place again (`to_in_place`).
"""

import dataclasses

import keras
from keras import ops

from keras_peft.core import layer_tree
from keras_peft.core import method as method_lib
from keras_peft.core.scopes import scope_of
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.kept_variable import KeptVariable
from keras_peft.layers.kept_variable import check_keepable
from keras_peft.layers.wrapper import Wrapper


def owner_map(root):
    """`id(variable)` to `(layer, attribute)` for the variables the base
    layers under `root` hold as public attributes (`bias`, `gamma`)."""
    found = {}
    for layer, _ in layer_tree.iter_layers(root):
        if isinstance(layer, (AdapterLayer, Wrapper)):
            continue
        for attribute, value in vars(layer).items():
            if not attribute.startswith("_") and isinstance(
                value, keras.Variable
            ):
                found.setdefault(id(value), (layer, attribute))
    return found


def check_keepable_variables(context, variables, name):
    """Raises a `ValueError` unless every adapter can keep its own value of
    each of `variables` (base variables adapter `name` trains)."""
    owners = owner_map(context.backbone)
    for variable in variables:
        if id(variable) not in owners:
            raise ValueError(
                f"Adapter {name!r} trains {variable.path!r}, which no layer "
                "of the base model holds as an attribute: it cannot be kept "
                "per adapter beside other adapters."
            )
        check_keepable(*owners[id(variable)])


def kept_modules(root):
    """`id(base variable)` to the `KeptVariable` under `root` keeping it."""
    return {
        id(layer.base_variable): layer
        for layer, _ in layer_tree.iter_layers(root)
        if isinstance(layer, KeptVariable) and layer.owner is not None
    }


@dataclasses.dataclass
class KeptPlan:
    """How an `apply` of adapter `name` beside others keeps base variables.

    Args:
        modules: list of `(owner layer, KeptVariable)`: new modules, built
            detached, for the site host of their owner.
        absorbed: list of `Replacement(existing, planned)`: a `KeptVariable`
            (in the model, or among `modules`) takes the planned one as
            adapter `name`'s slot.
        restore: list of `(variable, value)`: base variables that get their
            values from before an adapter trained them in place.
        converted: tuple of the adapters that stop training in place.
    """

    modules: list = dataclasses.field(default_factory=list)
    absorbed: list = dataclasses.field(default_factory=list)
    restore: list = dataclasses.field(default_factory=list)
    converted: tuple = ()


def plan(context, state, name, new_variables):
    """Plans the `KeptVariable`s for adapter `name` joining other adapters
    (`state`'s), which trains `new_variables` of the base model.

    The adapter that trained in place (`state`'s only one, if it holds one)
    gets modules holding its current values; `name` gets a slot holding
    each variable's original value.
    """
    owners = owner_map(context.backbone)
    existing = kept_modules(context.model)
    result = KeptPlan()
    planned = {}
    originals = {}
    if state.in_place:
        # The one adapter so far hands the values it trained to its copies.
        ((other, adapter),) = state.adapters.items()
        for variable in adapter.kept_variables:
            module = _build(owners[id(variable)], _value(variable))
            module.set_slot_names([other])
            result.modules.append((module.owner, module))
            planned[id(variable)] = module
            originals[id(variable)] = adapter.originals[id(variable)]
            result.restore.append((variable, originals[id(variable)]))
        result.converted = (other,)
    for variable in _unique(new_variables):
        holder = planned.get(id(variable)) or existing.get(id(variable))
        if holder is not None and name in holder.slot_names:
            continue  # An earlier config of the adapter keeps it.
        start = originals.get(id(variable))
        if start is None:
            start = _value(variable)
        module = _build(owners[id(variable)], start)
        if holder is None:
            result.modules.append((module.owner, module))
        else:
            result.absorbed.append(method_lib.Replacement(holder, module))
    return result


def _unique(variables):
    return list({id(v): v for v in variables}.values())


def _value(variable):
    return ops.convert_to_numpy(variable)


def _build(owner_and_attribute, value):
    owner, attribute = owner_and_attribute
    with scope_of(f"{owner.path}/kept_{attribute}"):
        module = KeptVariable(
            attribute, name=f"kept_{attribute}", dtype=owner.dtype_policy
        )
        module.link(owner, value)
    return module


def to_in_place(modules):
    """Writes each `KeptVariable`'s only slot into its base variable.

    Args:
        modules: `KeptVariable`s holding one adapter's slot each.

    Returns:
        `id(variable)` to the base variable's value before (its original).
    """
    originals = {}
    for module in modules:
        variable = module.base_variable
        originals[id(variable)] = _value(variable)
        variable.assign(module.own)
    return originals
