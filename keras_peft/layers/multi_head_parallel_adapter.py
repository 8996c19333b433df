"""He et al.'s multi-head parallel adapter: one bottleneck per head."""

import keras
from keras import ops

from keras_peft.layers.bottleneck import Bottleneck
from keras_peft.layers.validation import check_int


@keras.saving.register_keras_serializable(package="keras_peft")
class MultiHeadParallelAdapter(Bottleneck):
    """A parallel adapter per attention head, added to the head outputs.

    Head `i` gets `Delta_i = s * (f(x W_down^i + b_down^i) W_up^i + b_up^i)`
    from the attention's input `x`, added to its output `head_i` before the
    attention's output projection `W_o` (He et al. 2022, the multi-head
    parallel adapter, the analogue of prefix tuning's per-head update).
    Since `W_o` is linear and frozen, the layer adds the same thing after
    it: it maps `(x, h)` to `h + sum_i Delta_i W_o^i`, where `h` is the
    attention's output and `W_o^i` head `i`'s rows of `W_o`. `W_up` and
    `b_up` start at zero, so the layer returns `h` exactly until it trains.

    Per attention layer of width `d` with `H` heads of width `d_h`, it has
    `H r d` down-projection weights and `H r d_h` up-projection weights
    (`r d` when `H d_h = d`), plus `H r + H d_h` biases.

    Args:
        bottleneck: int. Width `r` of each head's bottleneck.
        num_heads: int. Number of heads `H` of the attention.
        head_dim: int. Width `d_h` of each head's output.
        activation: activation `f`. Defaults to `"relu"`.
        scale: float > 0, or `"learned"`. Defaults to `1.0`.
        down_initializer: initializer of `W_down`. Defaults to
            `"he_uniform"`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        inputs: the attention's (query) input `x`, `(..., d)`.
        outputs: the attention's output `h`, `(..., d_out)`.
        output_kernel: the attention's output projection kernel, shaped
            `(H, d_h, d_out)` (Keras' `MultiHeadAttention`) or
            `(H * d_h, d_out)` (a `Dense` over concatenated heads). Defaults
            to the kernel given to `attach_output_kernel`.

    Example:
    ```python
    attention = keras.layers.MultiHeadAttention(num_heads=12, key_dim=64)
    h = attention(x, x)
    adapter = keras_peft.layers.MultiHeadParallelAdapter(
        bottleneck=30, num_heads=12, head_dim=64)
    h = adapter(x, h, output_kernel=attention._output_dense.kernel)
    ```

    Reference:
        - [He et al., 2022](https://arxiv.org/abs/2110.04366)
    """

    def __init__(self, bottleneck, num_heads, head_dim, **kwargs):
        check_int("num_heads", num_heads, owner="MultiHeadParallelAdapter ")
        check_int("head_dim", head_dim, owner="MultiHeadParallelAdapter ")
        super().__init__(bottleneck, **kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        # Not tracked: the kernel belongs to the frozen attention layer.
        object.__setattr__(self, "_attached_output_kernel", None)

    def attach_output_kernel(self, kernel):
        """Uses `kernel` (the attention's output projection kernel) when
        `call` is not given one. The layer does not own or save it."""
        self._output_kernel_shape(kernel.shape)
        object.__setattr__(self, "_attached_output_kernel", kernel)

    def _output_kernel_shape(self, shape):
        shape = tuple(shape)
        heads = (self.num_heads, self.head_dim)
        if len(shape) == 3 and shape[:2] == heads:
            return shape
        if len(shape) == 2 and shape[0] == self.num_heads * self.head_dim:
            return (*heads, shape[1])
        raise ValueError(
            f"MultiHeadParallelAdapter {self.name!r} needs an output kernel "
            f"of shape ({self.num_heads}, {self.head_dim}, d) or "
            f"({self.num_heads * self.head_dim}, d) for its {self.num_heads} "
            f"heads of width {self.head_dim}. Got shape {shape}."
        )

    def build(self, inputs_shape, outputs_shape=None):
        self.build_bottleneck(
            inputs_shape[-1], self.head_dim, heads=(self.num_heads,)
        )

    def head_deltas(self, inputs):
        """`Delta_i` of every head, `(..., H, d_h)`, in the input dtype."""
        self.check_width(inputs)
        inputs, output_dtype = self.compute_inputs(inputs)
        dtype = inputs.dtype
        hidden = ops.einsum(
            "...d,dhr->...hr", inputs, ops.cast(self.down_kernel, dtype)
        )
        hidden = self.activation(
            ops.add(hidden, ops.cast(self.down_bias, dtype))
        )
        up_kernel, up_bias = self.scaled_up_projection()
        delta = ops.einsum(
            "...hr,hrk->...hk", hidden, ops.cast(up_kernel, dtype)
        )
        return ops.cast(ops.add(delta, ops.cast(up_bias, dtype)), output_dtype)

    def call(self, inputs, outputs, output_kernel=None):
        if output_kernel is None:
            output_kernel = self._attached_output_kernel
        if output_kernel is None:
            raise ValueError(
                f"MultiHeadParallelAdapter {self.name!r} needs the "
                "attention's output kernel: pass `output_kernel` or call "
                "`attach_output_kernel` first."
            )
        shape = self._output_kernel_shape(output_kernel.shape)
        deltas = self.head_deltas(ops.cast(inputs, outputs.dtype))
        kernel = ops.reshape(ops.cast(output_kernel, deltas.dtype), shape)
        projected = ops.einsum("...hk,hkd->...d", deltas, kernel)
        return ops.add(outputs, ops.cast(projected, outputs.dtype))

    def compute_output_shape(self, inputs_shape, outputs_shape, *args):
        return outputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "head_dim": self.head_dim})
        return config
