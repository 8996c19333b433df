"""Each named adapter's own value of a variable of the base model."""

import threading
import weakref

import keras
from keras import ops
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm

from keras_peft.core.scopes import scope_of
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.lora_dense import is_linear
from keras_peft.layers.variable_overlay import overlay
from keras_peft.layers.variable_overlay import raw_value

# How each kept variable acts on its layer's output.
_ROLES = {
    keras.layers.Dense: {"bias": "add"},
    keras.layers.EinsumDense: {"bias": "add"},
    keras.layers.LayerNormalization: {"gamma": "scale", "beta": "add"},
    T5LayerNorm: {"weight": "scale"},
}


def check_keepable(layer, variable_name):
    """Raises a `ValueError` unless each named adapter can keep its own
    value of `layer`'s variable `variable_name` (a layer kind whose output
    can take that variable per example)."""
    kind = type(layer)
    if variable_name in _ROLES.get(kind, ()) and (
        kind is not keras.layers.LayerNormalization or _last_axis(layer)
    ):
        return
    allowed = ", ".join(
        f"{kind.__name__}.{'/'.join(names)}" for kind, names in _ROLES.items()
    )
    raise ValueError(
        f"Several named adapters cannot each keep their own "
        f"{variable_name!r} of {type(layer).__name__} {layer.path!r}: "
        f"only {allowed} (a layer norm over the last axis) can be kept "
        "per adapter."
    )


def _last_axis(layer_norm):
    axis = layer_norm.axis
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return axes == [-1]


@keras.saving.register_keras_serializable(package="keras_peft")
class KeptVariable(AdapterLayer):
    """Each named adapter's own value of one variable of a base layer.

    BitFit trains the base model's biases, LoRA's `bias` option too, and
    Houlsby's adapters its layer norms. A model holding one adapter trains
    them in place. A model holding several keeps each adapter's values in
    a `KeptVariable` (one slot per adapter): the base layer's variable
    stays frozen at its pretrained value, and the `SiteHost` around the
    layer runs it with the active adapter's value in its place
    (`call_with`), or the base value for an adapter keeping none. Per
    example (`keras_peft.multi_task`), each example's value broadcasts
    along its batch row.

    Not a delta added to the output: the layer computes with the adapter's
    value itself, so a `Dense` with an activation (BERT's FFN, its pooler)
    or a layer norm's scale works as in a model holding only that adapter.

    Args:
        variable_name: str. The attribute of the base layer holding the
            variable (`"bias"`, `"beta"`, `"gamma"`, `"weight"`).
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:
    ```python
    dense = keras.layers.Dense(4)
    dense.build((None, 3))
    kept = KeptVariable("bias")
    kept.link(dense)  # slot 0 starts at dense.bias's value
    host = SiteHost(dense, kept=[kept])
    ```
    """

    method = "kept"
    switchable = True

    def __init__(self, variable_name, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(variable_name, str) or not variable_name:
            raise ValueError(
                "`variable_name` must be the name of a layer's variable "
                f"attribute. Received: {variable_name!r}"
            )
        self.variable_name = variable_name
        # A weak reference: the variable is the base layer's, not this
        # one's (not tracked), and a wrapper later swapped in for the base
        # layer (LoRA) must not take its place here.
        self.__dict__["_owner"] = None

    @property
    def owner(self):
        """The base layer whose variable this layer keeps, or `None`."""
        reference = self.__dict__["_owner"]
        return None if reference is None else reference()

    @property
    def base_variable(self):
        """The base layer's own variable."""
        return getattr(self.owner, self.variable_name)

    def link(self, owner, value=None):
        """Links this layer to `owner`, building slot 0 (`value`, or the
        owner's variable's current value) if not built yet."""
        variable = getattr(owner, self.variable_name, None)
        if not isinstance(variable, keras.Variable):
            raise ValueError(
                f"{type(owner).__name__} {owner.path!r} has no variable "
                f"{self.variable_name!r} to keep."
            )
        self.__dict__["_owner"] = weakref.ref(owner)
        if self.built:
            return
        self.__dict__["_start"] = (
            ops.convert_to_numpy(variable) if value is None else value
        )
        # Beside the variable it keeps: ".../query/kept_bias/bias".
        with scope_of(f"{owner.path}/{self.name}"):
            self.build()
        del self.__dict__["_start"]

    def build(self, *args, **kwargs):
        if self.owner is None:
            raise ValueError(
                f"{self.name!r} is built from the variable it keeps: call "
                "`link(layer)` instead."
            )
        variable = self.base_variable
        start = self.__dict__["_start"]
        self.own = self.add_weight(
            name=self.variable_name,
            shape=tuple(variable.shape),
            dtype=variable.dtype,
            initializer=lambda shape, dtype=None: ops.cast(
                ops.convert_to_tensor(start), dtype
            ),
        )

    def get_build_config(self):
        # Built by `link`, from its base layer's variable, not from shapes.
        return None

    def stands_for(self):
        """The variables whose addresses slot 0's variables take in an
        adapter bundle: the base layer's own."""
        return [self.base_variable]

    def value(self):
        """The active adapter's value (raw, not autocast), or the base
        variable's when it keeps none; per example, stacked on a leading
        batch axis."""
        if not self.switched:
            return raw_value(self.own)
        # Past the last slot: the base model's own value.
        return self.slot_value(
            self.own,
            raw_value,
            self._slot_plan(),
            past=raw_value(self.base_variable),
        )

    def get_config(self):
        config = super().get_config()
        config["variable_name"] = self.variable_name
        return config


def call_with(modules, call, layer):
    """`call()` (running `layer`, the base layer whose variables `modules`
    keep, or a wrapper around it) with each module's value in place of its
    base variable.

    Switched (one adapter acts), the values stand in for the variables
    while the layer runs: it computes what it computes for that adapter
    alone. Per example, the layer runs with its biases at zero and its
    scales at one (its activation held back), and each example's values
    are applied to its row of the output: `activation(h + b)`, or a
    norm's `h * scale + offset`.

    Args:
        modules: non-empty list of `KeptVariable`, of one base layer.
        call: callable running `layer`.
        layer: the layer `call` runs: the owner, or a wrapper around it.
    """
    # Per example, the activation is held back by an attribute of the
    # shared layer: no other thread may run the layer meanwhile (eager
    # calls from threads; `tf.distribute` replicas run one at a time).
    with _RUNNING:
        if not modules[0].routed:
            with overlay([(m.base_variable, m.value()) for m in modules]):
                return call()
        return _per_example(modules, call, layer)


_RUNNING = threading.RLock()


def _per_example(modules, call, layer):
    owner = modules[0].owner
    kept = {module.variable_name: module for module in modules}
    roles = _ROLES[type(owner)]
    present = [
        (name, getattr(owner, name))
        for name in roles
        if getattr(owner, name, None) is not None
    ]
    neutral = [
        (
            variable,
            (ops.ones if roles[name] == "scale" else ops.zeros)(
                variable.shape, variable.dtype
            ),
        )
        for name, variable in present
    ]
    holder = _activation_holder(layer)
    activation = None
    if holder is not None:
        activation = holder.activation
        holder.activation = keras.activations.linear
    try:
        with overlay(neutral):
            outputs = call()
    finally:
        if holder is not None:
            holder.activation = activation
    rank = len(outputs.shape)
    result = ops.cast(outputs, "float32")
    # Scales first: a norm computes `h * scale + offset`.
    for role in ("scale", "add"):
        for name, variable in present:
            if roles[name] != role:
                continue
            if name in kept:
                value = kept[name].value()
                ones = (1,) * (rank - 1 - len(variable.shape))
                value = ops.reshape(value, (-1, *ones, *variable.shape))
            else:
                value = raw_value(variable)
            value = ops.cast(value, "float32")
            result = result * value if role == "scale" else result + value
    result = ops.cast(result, outputs.dtype)
    return result if activation is None else activation(result)


def _activation_holder(layer):
    """The layer, `layer` or one it wraps, applying a nonlinear activation
    after its bias; `None` if none does."""
    while isinstance(layer, keras.Layer):
        if not is_linear(getattr(layer, "activation", None)):
            return layer
        layer = getattr(layer, "wrapped_layer", None)
    return None
