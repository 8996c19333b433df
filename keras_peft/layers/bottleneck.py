"""The adapters' bottleneck: `s * f(z W_down + b_down) W_up + b_up`."""

import math
import numbers

import keras
from keras import ops

from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.validation import check_int

LEARNED = "learned"


def check_scale(scale, owner="Adapter "):
    """Raises a `ValueError` unless `scale` is a number > 0 or `"learned"`."""
    if scale == LEARNED and isinstance(scale, str):
        return
    if (
        not isinstance(scale, numbers.Real)
        or isinstance(scale, bool)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ValueError(
            f"{owner}`scale` must be a number > 0 or {LEARNED!r}. "
            f"Got {scale!r}."
        )


def get_activation(activation, owner="Adapter "):
    """`keras.activations.get`, with an error that names the bad value."""
    try:
        return keras.activations.get(activation)
    except (ValueError, TypeError):
        raise ValueError(
            f"{owner}`activation` {activation!r} is not a Keras activation; "
            "use a name such as 'relu', 'gelu' or 'tanh', or a callable."
        ) from None


class Bottleneck(AdapterLayer):
    """Base of the adapter layers: a down-projection to `bottleneck` units,
    an activation and an up-projection that starts at zero, times a scale.

    Subclasses choose what the bottleneck reads and what it is added to
    (`keras_peft.layers.Adapter`, `keras_peft.layers.ParallelAdapter`). The
    projections are float32 whatever the dtype policy, like LoRA's.

    Args:
        bottleneck: int. Width `r` of the bottleneck.
        activation: activation `f` between the projections. Defaults to
            `"relu"`.
        scale: float > 0, or `"learned"` for a trainable scalar that starts
            at 1.0. Defaults to `1.0`.
        down_initializer: initializer of `W_down`. Defaults to
            `"he_uniform"`.
        **kwargs: base layer arguments such as `name` and `dtype`.
    """

    method = "adapter"
    switchable = True
    # Adapters of other widths and fixed scales share the layer: each slot
    # keeps its own, padded with zero bottleneck units where slots are
    # stacked (a zero up-projection row: whatever f(0) is, it adds 0).
    per_slot_settings = ("bottleneck", "scale")
    padded_axes = {"down_kernel": -1, "down_bias": -1, "up_kernel": -2}

    def __init__(
        self,
        bottleneck,
        activation="relu",
        scale=1.0,
        down_initializer="he_uniform",
        **kwargs,
    ):
        owner = f"{type(self).__name__} "
        check_int("bottleneck", bottleneck, owner=owner)
        check_scale(scale, owner=owner)
        self.activation = get_activation(activation, owner=owner)
        super().__init__(**kwargs)
        self.bottleneck = bottleneck
        self.scale = scale if scale == LEARNED else float(scale)
        self.down_initializer = keras.initializers.get(down_initializer)

    def build_bottleneck(self, input_dim, output_dim, heads=()):
        """Creates `W_down`, `b_down`, `W_up`, `b_up` (and the scale).

        With `heads=(num_heads,)`, one bottleneck per head: `W_down` is
        `(input_dim, num_heads, r)`, `W_up` `(num_heads, r, output_dim)`.
        """
        heads = tuple(heads)
        # Float32 to avoid underflow of small updates under mixed precision.
        self.down_kernel = self.add_weight(
            name="down_kernel",
            shape=(input_dim, *heads, self.bottleneck),
            initializer=self._down_initializer_for(input_dim, heads),
            dtype="float32",
        )
        self.down_bias = self.add_weight(
            name="down_bias",
            shape=(*heads, self.bottleneck),
            initializer="zeros",
            dtype="float32",
        )
        # Zero, so the layer adds exactly nothing until it trains.
        self.up_kernel = self.add_weight(
            name="up_kernel",
            shape=(*heads, self.bottleneck, output_dim),
            initializer="zeros",
            dtype="float32",
        )
        self.up_bias = self.add_weight(
            name="up_bias",
            shape=(*heads, output_dim),
            initializer="zeros",
            dtype="float32",
        )
        self.learned_scale = None
        if self.scale == LEARNED:
            self.learned_scale = self.add_weight(
                name="scale", shape=(), initializer="ones", dtype="float32"
            )

    def _down_initializer_for(self, input_dim, heads):
        if not heads:
            return self.down_initializer

        # Drawn as one `(input_dim, heads * r)` matrix: each head's fan-in
        # is `input_dim`, as for a single bottleneck.
        def initializer(shape, dtype=None):
            flat = (input_dim, math.prod(heads) * self.bottleneck)
            return ops.reshape(self.down_initializer(flat, dtype), shape)

        return initializer

    def check_width(self, inputs):
        """Raises a `ValueError` if `inputs` are not `W_down`'s width."""
        width = inputs.shape[-1]
        if width is not None and width != self.down_kernel.shape[0]:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} reads inputs of width "
                f"{self.down_kernel.shape[0]}; got shape {inputs.shape}."
            )

    def compute_inputs(self, inputs):
        """`(inputs to compute with, dtype to return)`.

        Float32 under float16 policies: an overflow to `inf` times the zero
        up-projection would be `nan`, not an update of 0.
        """
        output_dtype = inputs.dtype
        if keras.backend.standardize_dtype(output_dtype) == "float16":
            inputs = ops.cast(inputs, "float32")
        return inputs, output_dtype

    def projections(self):
        """`(W_down, b_down, s * W_up, s * b_up)` of the acting adapter."""
        variables = [
            self.down_kernel,
            self.down_bias,
            self.up_kernel,
            self.up_bias,
        ]
        if self.learned_scale is not None:
            variables.append(self.learned_scale)
        values = self.slot_values(*variables)
        down_kernel, down_bias, up_kernel, up_bias = values[:4]
        if self.learned_scale is None and self.switched:
            # `slot_scales` scaled each slot by its own scale.
            return down_kernel, down_bias, up_kernel, up_bias
        scale = self.scale if self.learned_scale is None else values[4]
        if self.learned_scale is not None and self.routed:
            # One scale per example: broadcast over its projections.
            up_kernel = ops.multiply(up_kernel, _trailing(scale, up_kernel))
            up_bias = ops.multiply(up_bias, _trailing(scale, up_bias))
            return down_kernel, down_bias, up_kernel, up_bias
        # Scaling the small up-projection, not the activation-sized delta,
        # saves a full-size multiply per call.
        return (
            down_kernel,
            down_bias,
            ops.multiply(up_kernel, scale),
            ops.multiply(up_bias, scale),
        )

    def slot_scales(self, name):
        if name not in ("up_kernel", "up_bias"):
            return None
        scales = [
            self.slot_setting(s, "scale")
            for s in range(max(len(self.slot_names), 1))
        ]
        # A learned scale is a variable, applied in `projections`.
        return None if LEARNED in scales else scales

    def delta(self, inputs):
        """`s * (f(inputs W_down + b_down) W_up + b_up)` in the input dtype."""
        self.check_width(inputs)
        inputs, output_dtype = self.compute_inputs(inputs)
        dtype = inputs.dtype
        down_kernel, down_bias, up_kernel, up_bias = self.projections()
        if self.routed:
            return ops.cast(
                self._delta_per_example(
                    inputs, down_kernel, down_bias, up_kernel, up_bias
                ),
                output_dtype,
            )
        hidden = ops.matmul(inputs, ops.cast(down_kernel, dtype))
        hidden = self.activation(ops.add(hidden, ops.cast(down_bias, dtype)))
        delta = ops.matmul(hidden, ops.cast(up_kernel, dtype))
        return ops.cast(ops.add(delta, ops.cast(up_bias, dtype)), output_dtype)

    def _delta_per_example(
        self, inputs, down_kernel, down_bias, up_kernel, up_bias
    ):
        """`delta` with each projection carrying a leading batch axis."""
        dtype = inputs.dtype
        shape = ops.shape(inputs)
        # (batch, positions, width): one matmul per example.
        flat = ops.reshape(inputs, (shape[0], -1, shape[-1]))
        hidden = ops.matmul(flat, ops.cast(down_kernel, dtype))
        hidden = ops.add(hidden, ops.cast(down_bias, dtype)[:, None])
        hidden = self.activation(hidden)
        delta = ops.matmul(hidden, ops.cast(up_kernel, dtype))
        delta = ops.add(delta, ops.cast(up_bias, dtype)[:, None])
        return ops.reshape(delta, (*shape[:-1], up_kernel.shape[-1]))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bottleneck": self.bottleneck,
                "activation": keras.activations.serialize(self.activation),
                "scale": self.scale,
                "down_initializer": keras.initializers.serialize(
                    self.down_initializer
                ),
            }
        )
        return config


def _trailing(per_example, like):
    """A `(batch,)` tensor shaped to broadcast over `like`'s later axes."""
    return ops.reshape(per_example, (-1,) + (1,) * (len(like.shape) - 1))
