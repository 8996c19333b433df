"""Counting trainable parameters."""

import dataclasses
import math

from keras_peft.core import architectures
from keras_peft.core import config as config_lib
from keras_peft.core import layer_tree
from keras_peft.core import state as state_lib
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.kept_variable import KeptVariable
from keras_peft.prefix_tuning import eject


def _size(variable):
    return math.prod(variable.shape)


@dataclasses.dataclass(frozen=True)
class TrainableSummary:
    """Trainable and total parameter counts of a model.

    Args:
        model_name: str. The model's class name.
        trainable: int. Parameters that train.
        total: int. All parameters (shared weights counted once).
        groups: tuple of `(name, count)`. Trainable parameters by owner: one
            entry per method (adapter weights, and BitFit's biases), `"head"`
            (task layers outside the backbone) and `"base"` (backbone weights
            a config keeps trainable, such as LoRA biases or the layer norms
            of Houlsby adapters).
        prefix_mlp: int. Trainable parameters of prefix reparametrization
            MLPs (and their `P'`), counted in `trainable`. Defaults to `0`.
        computed_prefix: int. Values of the prefixes those MLPs compute:
            what `keras_peft.save_adapter` stores in their place. Defaults
            to `0`.

    Example:
    ```python
    summary = keras_peft.trainable_summary(classifier)
    assert summary.trainable == sum(dict(summary.groups).values())
    print(f"{summary.fraction:.2%} of the parameters train")
    ```
    """

    model_name: str
    trainable: int
    total: int
    groups: tuple
    prefix_mlp: int = 0
    computed_prefix: int = 0

    @property
    def fraction(self):
        """`trainable / total`."""
        return self.trainable / self.total if self.total else 0.0

    @property
    def saved(self):
        """Parameters `keras_peft.save_adapter` stores by default."""
        return self.trainable - self.prefix_mlp + self.computed_prefix

    def __str__(self):
        width = max(len(f"{self.total:,}"), 9)
        lines = [f"Trainable parameters of {self.model_name}"]
        for name, count in self.groups:
            lines.append(f"  {name:<12}{count:>{width},}")
        lines.append(f"  {'trainable':<12}{self.trainable:>{width},}")
        lines.append(f"  {'total':<12}{self.total:>{width},}")
        lines.append(f"  {'fraction':<12}{self.fraction:>{width}.4%}")
        if self.prefix_mlp:
            lines.append(f"  {'saved':<12}{self.saved:>{width},}")
            lines.append(
                f"  (save_adapter stores the prefix the MLP computes, "
                f"{self.computed_prefix:,} values,\n   not the MLP's "
                f"{self.prefix_mlp:,}; keep_prefix_mlp=True stores the MLP)"
            )
        return "\n".join(lines)


def _group_order(group):
    # Methods first, by name; then the task head and the backbone itself.
    return (group in ("head", "base"), group)


def _grouped_weights(model):
    """Yields `(variable, group, size)` for each of a model's weights.

    The one place that decides which group a trainable variable counts in:
    the method that owns it (adapter weights, and variables a method keeps
    trainable in the base, such as BitFit's biases), `"head"` (task layers
    outside the backbone) or `"base"` (other backbone weights). `group` is
    `None` for a frozen variable. `size` is its number of parameters. A
    bank holding several adapters' slots counts each slot at its own size
    (not the padding), in its adapter's group: a bank of copies kept for
    adapters of several groups is yielded once per group.
    """
    try:
        backbone = architectures.resolve_model(model).backbone
    except ValueError:
        backbone = model
    backbone_ids = {id(v) for v in backbone.weights}
    owners = {}
    state = state_lib.get_state(backbone)
    if state is not None:
        for config, kept in zip(state.configs, state.trainable_base_variables):
            if config_lib.method_of(config).owns_kept_variables:
                for variable in kept:
                    owners[id(variable)] = {config.method: _size(variable)}
    switches = set()
    for layer, _ in layer_tree.iter_layers(model):
        if not isinstance(layer, AdapterLayer):
            continue
        if layer.active_slot is not None:
            switches.add(id(layer.active_slot))
        # A nested adapter layer's (a shared prefix MLP's) count their own.
        nested = {
            id(v)
            for inner in layer._flatten_layers(include_self=False)
            if isinstance(inner, AdapterLayer)
            for v in inner.weights
        }
        for variable in layer.adapter_variables:
            if id(variable) not in nested:
                owners[id(variable)] = {layer.method: _size(variable)}
        for bank in layer.bank_variables:
            owners[id(bank)] = {}
        for slot, name in enumerate(layer.slot_names):
            if isinstance(layer, KeptVariable):
                group = _kept_group(state, name, layer.base_variable)
            else:
                group = layer.method
            for variable in layer.slot_variables(slot):
                key = id(getattr(variable, "bank", variable))
                if slot == 0:
                    owners[key] = {}
                counts = owners[key]
                counts[group] = counts.get(group, 0) + _size(variable)

    for variable in model.weights:
        if id(variable) in switches:
            # Which adapter acts, not a parameter.
            continue
        if not variable.trainable:
            counts = owners.get(id(variable))
            size = sum(counts.values()) if counts else _size(variable)
            yield variable, None, size
        elif id(variable) in owners:
            for group, size in owners[id(variable)].items():
                yield variable, group, size
        elif id(variable) in backbone_ids:
            yield variable, "base", _size(variable)
        else:
            yield variable, "head", _size(variable)


def _kept_group(state, name, variable):
    """The group an adapter's own copy of base `variable` counts in: the
    method keeping it, if it owns what it keeps (BitFit), else `"base"`."""
    adapter = state.adapters.get(name) if state is not None else None
    if adapter is not None:
        for config, group in zip(
            adapter.configs, adapter.trainable_base_variables
        ):
            owns = config_lib.method_of(config).owns_kept_variables
            if owns and any(v is variable for v in group):
                return config.method
    return "base"


def trainable_summary(model):
    """Counts a model's trainable parameters, by method, head and base.

    Args:
        model: any Keras model; a supported keras-hub backbone or task gets
            its head counted apart from its backbone.

    Returns:
        A `TrainableSummary` with `.trainable`, `.total` and `.fraction`;
        `str()` of it is a readable table.

    Example:
    ```python
    summary = keras_peft.trainable_summary(classifier)
    print(summary)            # table
    summary.trainable, summary.fraction
    ```
    """
    counts = {}
    trainable = total = 0
    for _, group, size in _grouped_weights(model):
        total += size
        if group is None:
            continue
        trainable += size
        counts[group] = counts.get(group, 0) + size
    order = sorted(counts, key=_group_order)
    prefixes = eject.trained_reparametrized_prefixes(model)
    sources = {
        id(layer.prefix_source): layer.prefix_source for layer in prefixes
    }
    return TrainableSummary(
        model_name=type(model).__name__,
        trainable=trainable,
        total=total,
        groups=tuple((g, counts[g]) for g in order),
        prefix_mlp=sum(
            _size(v)
            for source in sources.values()
            for slot in range(max(len(source.slot_names), 1))
            for v in source.slot_variables(slot)
            if v.trainable
        ),
        computed_prefix=eject.computed_prefix_size(prefixes),
    )


def variable_groups(model):
    """A model's trainable variables, grouped as `trainable_summary` counts
    them.

    Args:
        model: any Keras model; a supported keras-hub backbone or task gets
            its head grouped apart from its backbone.

    Returns:
        A dict from group name to the list of that group's trainable
        variables, in `model.weights` order: one group per method that has
        trainable variables (`"lora"`, `"prompt_tuning"`, `"prefix_tuning"`,
        `"adapter"`, `"bitfit"`), then `"head"` (task layers outside the
        backbone) and `"base"` (backbone weights that still train). Groups
        without trainable variables are left out.

    Example:
    ```python
    keras_peft.apply(classifier, keras_peft.PromptTuningConfig(length=20))
    groups = keras_peft.variable_groups(classifier)
    sorted(groups)  # ["head", "prompt_tuning"]
    ```
    """
    groups = {}
    for variable, group, _ in _grouped_weights(model):
        if group is not None:
            groups.setdefault(group, []).append(variable)
    return {g: groups[g] for g in sorted(groups, key=_group_order)}
