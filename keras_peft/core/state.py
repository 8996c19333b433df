"""What keras-peft has applied to each backbone."""

import dataclasses
import weakref

_STATES = weakref.WeakKeyDictionary()


@dataclasses.dataclass
class PeftState:
    """The configs applied to one backbone and how to undo the freezing.

    Args:
        configs: tuple. The applied configs, in order.
        trainable_base_variables: list of tuples. For each config, the base
            variables it keeps trainable.
        original_trainable: dict. `id(variable)` to `(variable, trainable)`
            for every backbone variable before keras-peft first changed it.
    """

    configs: tuple
    trainable_base_variables: list
    original_trainable: dict


def get_state(backbone):
    """Returns the backbone's `PeftState`, or `None` if nothing is applied."""
    return _STATES.get(backbone)


def set_state(backbone, state):
    if state is None:
        _STATES.pop(backbone, None)
    else:
        _STATES[backbone] = state
