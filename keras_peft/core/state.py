"""What keras-peft has applied to each backbone."""

import dataclasses
import weakref

DEFAULT_NAME = "default"

_STATES = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class NamedAdapter:
    """The configs of one named adapter.

    Args:
        configs: tuple. The applied configs, in order.
        trainable_base_variables: list of tuples. For each config, the base
            variables it trains (BitFit's biases): in place while the model
            holds only this adapter (`PeftState.in_place`), else as the
            adapter's own copies (`KeptVariable` slots).
        originals: dict or `None`. While it trains in place, `id(variable)`
            to the value each of them had before; `None` when unknown (a
            model restored from a `.keras` file).
    """

    configs: tuple
    trainable_base_variables: list
    originals: dict = dataclasses.field(default_factory=dict)

    @property
    def kept_variables(self):
        """The base variables it trains, each once, in order."""
        found = {}
        for group in self.trainable_base_variables:
            for variable in group:
                found.setdefault(id(variable), variable)
        return list(found.values())


@dataclasses.dataclass
class PeftState:
    """The named adapters applied to one backbone and how to undo the
    freezing.

    Args:
        adapters: dict. Adapter name to `NamedAdapter`, in the order the
            adapters were added.
        active: str. The name of the adapter that acts.
        original_trainable: dict. `id(variable)` to `(variable, trainable)`
            for every backbone variable before keras-peft first changed it.
        task: a `weakref.ref` to the task the adapters were last applied
            through (whose heads may be kept per adapter), or `None`.
    """

    adapters: dict
    active: str
    original_trainable: dict
    task: object = None

    def holders(self, model):
        """`model` and, if alive and another, the task holding the
        backbone: where the adapters' layers (and heads) are."""
        task = self.task() if self.task is not None else None
        return [model] if task is None or task is model else [model, task]

    @property
    def configs(self):
        """The active adapter's configs."""
        return self.adapters[self.active].configs

    @property
    def trainable_base_variables(self):
        """The active adapter's kept base variables, one tuple per config."""
        return self.adapters[self.active].trainable_base_variables

    @property
    def in_place(self):
        """Whether the adapters train their base variables in place: the
        model holds one adapter (several each keep their own copies)."""
        return len(self.adapters) == 1

    @property
    def all_trainable_base_variables(self):
        """The base variables that train in place, one tuple per config."""
        if not self.in_place:
            return []
        return [
            group
            for adapter in self.adapters.values()
            for group in adapter.trainable_base_variables
        ]

    def replaced(self, name, configs, trainable_base_variables, **fields):
        """A copy with adapter `name` holding these configs (added last if
        new; dropped if `configs` is empty). `fields` (`originals`) default
        to those adapter `name` had."""
        adapters = dict(self.adapters)
        if configs:
            previous = adapters.get(name)
            if previous is not None:
                fields.setdefault("originals", previous.originals)
            adapters[name] = NamedAdapter(
                tuple(configs), list(trainable_base_variables), **fields
            )
        else:
            adapters.pop(name, None)
        return PeftState(
            adapters, self.active, self.original_trainable, self.task
        )


def single(
    configs, trainable_base_variables, original_trainable, name, originals
):
    """A state holding one adapter, `name`, active, training its base
    variables in place (`originals`: their values before)."""
    adapter = NamedAdapter(
        tuple(configs), list(trainable_base_variables), originals=originals
    )
    return PeftState({name: adapter}, name, original_trainable)


def get_state(backbone):
    """Returns the backbone's `PeftState`, or `None` if nothing is applied."""
    return _STATES.get(backbone)


def set_state(backbone, state):
    if state is None:
        _STATES.pop(backbone, None)
    else:
        _STATES[backbone] = state
