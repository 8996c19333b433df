"""Running a layer with other values in place of some of its variables.

Keras' own way is `keras.StatelessScope`, but a scope hides the one around
it: inside JAX's training step (itself a stateless scope holding every
variable's traced value) a nested scope would read stale values, and the
updates and losses of the layers inside it would be lost. `overlay` maps a
few variables and hands everything else to the scope around it, or, when
there is none, to the variables themselves.

The one place keras-peft reaches into Keras' scope internals
(`keras.src.backend.common`); `tests/layers/test_variable_overlay.py` fails
loudly if they change.
"""

import contextlib

import keras
from keras.src.backend.common import global_state
from keras.src.backend.common.variables import AutocastScope

_SCOPE = "stateless_scope"


class _Overlay(keras.StatelessScope):
    """A stateless scope mapping some variables, deferring the rest."""

    def __init__(self, mapping):
        super().__init__(initialize_variables=False)
        self._mapped = {id(variable): value for variable, value in mapping}
        self._names = {id(variable): variable.path for variable, _ in mapping}
        self._outer = None

    def __enter__(self):
        self._outer = global_state.get_global_attribute(_SCOPE)
        global_state.set_global_attribute(_SCOPE, self)
        return self

    def __exit__(self, *args, **kwargs):
        global_state.set_global_attribute(_SCOPE, self._outer)

    @property
    def collect_losses(self):
        return self._outer is not None and self._outer.collect_losses

    @collect_losses.setter
    def collect_losses(self, value):
        # Set by `StatelessScope.__init__`; the outer scope decides.
        pass

    @property
    def losses(self):
        return self._outer.losses if self._outer is not None else []

    @losses.setter
    def losses(self, value):
        pass

    def add_loss(self, loss):
        self._outer.add_loss(loss)

    def get_current_value(self, variable):
        value = self._mapped.get(id(variable))
        if value is None and self._outer is not None:
            return self._outer.get_current_value(variable)
        return value

    def add_update(self, update):
        variable, value = update
        if id(variable) in self._mapped:
            raise ValueError(
                f"Variable {self._names[id(variable)]!r} is overlaid with "
                "another value while the layer runs; it cannot be assigned."
            )
        if self._outer is not None:
            self._outer.add_update(update)
            return
        # No scope around this one: assign for real, outside it.
        global_state.set_global_attribute(_SCOPE, None)
        try:
            variable.assign(value)
        finally:
            global_state.set_global_attribute(_SCOPE, self)


@contextlib.contextmanager
def overlay(mapping):
    """A context in which the variables of `mapping` read as other values.

    Reads of a mapped variable (by any layer, through `variable.value` or
    any op on it) give its value, autocast as the variable's own would be.
    The value may have another shape (a leading batch axis): the layer's
    ops then broadcast it. Everything else (other variables, assignments,
    losses) goes to the stateless scope around, if any, as if this one
    were not there. Assigning a mapped variable raises a `ValueError`.

    Args:
        mapping: sequence of `(variable, value)`.

    Example:
    ```python
    dense = keras.layers.Dense(4)
    dense.build((None, 3))
    with overlay([(dense.bias, keras.ops.ones((4,)))]):
        y = dense(x)  # x @ kernel + 1
    ```
    """
    with _Overlay(mapping):
        yield


def raw_value(variable):
    """`variable`'s value in its own dtype, whatever autocast scope is
    current (a float32 variable read inside a mixed-precision layer)."""
    with AutocastScope(None):
        return variable.value
