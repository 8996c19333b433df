"""He et al.'s multi-head parallel adapter: one bottleneck per head."""

import keras
from keras import ops

from keras_peft.layers.bottleneck import Bottleneck
from keras_peft.layers.validation import check_int


@keras.saving.register_keras_serializable(package="keras_peft")
class MultiHeadParallelAdapter(Bottleneck):
    """A parallel adapter per attention head, added to the head outputs.

    The multi-head parallel adapter of He et al. (2022), the adapter form of
    prefix tuning's per-head update `softmax(x W_q^i P_k^iT) P_v^i`: head
    `i` gets

        `Delta_i = s * (f(q_i W_down^i + b_down^i) W_up^i + b_up^i)`,

    from `q_i = x W_q^i`, the head's query as the frozen attention projects
    it (the multi-head projection comes for free), added to the head's
    output before the attention's output projection `W_o`. `W_o` is linear,
    so the layer adds the same thing after it: it maps `(x, h)` to
    `h + sum_i Delta_i W_o^i`, where `h` is the attention's output and
    `W_o^i` head `i`'s rows of `W_o`. `W_up` and `b_up` start at zero, so
    the layer returns `h` exactly until it trains.

    Per attention layer with `H` heads of width `d_h`: `W_down` is
    `(d_h, H, r)` and `W_up` `(H, r, d_h)`, so `2 r H d_h` weights (`2 r d`
    when `H d_h = d`, He et al.'s adapter formula) plus `H r + H d_h`
    biases.

    Args:
        bottleneck: int. Width `r` of each head's bottleneck.
        num_heads: int. Number of heads `H` of the attention.
        head_dim: int. Width `d_h` of each head's query and output.
        activation: activation `f`. Defaults to `"relu"`.
        scale: float > 0, or `"learned"`. Defaults to `1.0`.
        down_initializer: initializer of `W_down`. Defaults to
            `"he_uniform"`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Call arguments:
        inputs: the attention's (query) input `x`. Read through the query
            projection given to `attach`, unless `queries` is given.
        outputs: the attention's output `h`, `(..., d_out)`.
        queries: optional per-head queries `(..., H, d_h)` or
            `(..., H * d_h)`.
        output_kernel: optional output projection kernel, `(H, d_h, d_out)`
            (Keras' `MultiHeadAttention`) or `(H * d_h, d_out)` (a `Dense`
            over concatenated heads). Defaults to the one given to
            `attach`.

    Example:
    ```python
    attention = keras.layers.MultiHeadAttention(num_heads=12, key_dim=64)
    h = attention(x, x)
    adapter = keras_peft.layers.MultiHeadParallelAdapter(
        bottleneck=30, num_heads=12, head_dim=64)
    h = adapter(
        x, h,
        queries=attention._query_dense(x),
        output_kernel=attention._output_dense.kernel,
    )
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
        # Not tracked: they belong to the frozen attention layer.
        object.__setattr__(self, "_query_projection", None)
        object.__setattr__(self, "_output_kernel", None)

    def attach(self, query_projection, output_kernel):
        """Reads the attention's own projections when `call` is not given
        them. The layer does not own or save them.

        Args:
            query_projection: callable. `x -> queries`, `(..., H, d_h)` or
                `(..., H * d_h)`.
            output_kernel: callable. `() -> kernel` of the output
                projection (evaluated at each call, so that it sees the
                kernel the attention uses then, e.g. with LoRA merged or
                not).
        """
        object.__setattr__(self, "_query_projection", query_projection)
        object.__setattr__(self, "_output_kernel", output_kernel)

    def _heads(self, tensor, what):
        shape = tuple(tensor.shape)
        heads = (self.num_heads, self.head_dim)
        if shape[-2:] == heads:
            return tensor
        if shape[-1] == self.num_heads * self.head_dim:
            return ops.reshape(tensor, (*ops.shape(tensor)[:-1], *heads))
        raise ValueError(
            f"MultiHeadParallelAdapter {self.name!r} needs {what} for "
            f"{self.num_heads} heads of width {self.head_dim}. Got shape "
            f"{shape}."
        )

    def _kernel_shape(self, shape):
        shape = tuple(shape)
        heads = (self.num_heads, self.head_dim)
        if len(shape) == 3 and shape[:2] == heads:
            return shape
        if len(shape) == 2 and shape[0] == self.num_heads * self.head_dim:
            return (*heads, shape[1])
        raise ValueError(
            f"MultiHeadParallelAdapter {self.name!r} needs an output kernel "
            f"of shape ({self.num_heads}, {self.head_dim}, d) or "
            f"({self.num_heads * self.head_dim}, d). Got shape {shape}."
        )

    def build(self, inputs_shape, outputs_shape=None):
        self.build_bottleneck(
            self.head_dim, self.head_dim, heads=(self.num_heads,)
        )

    def head_deltas(self, queries):
        """`Delta_i` of every head, `(..., H, d_h)`, in the queries' dtype."""
        queries = self._heads(queries, "queries")
        queries, output_dtype = self.compute_inputs(queries)
        dtype = queries.dtype
        down_kernel, down_bias, up_kernel, up_bias = self.projections()
        if self.routed:
            # One bottleneck per head and per example.
            shape = ops.shape(queries)
            flat = ops.reshape(queries, (shape[0], -1, *shape[-2:]))
            hidden = ops.einsum(
                "bnhk,bkhr->bnhr", flat, ops.cast(down_kernel, dtype)
            )
            hidden = ops.add(hidden, ops.cast(down_bias, dtype)[:, None])
            hidden = self.activation(hidden)
            delta = ops.einsum(
                "bnhr,bhrk->bnhk", hidden, ops.cast(up_kernel, dtype)
            )
            delta = ops.add(delta, ops.cast(up_bias, dtype)[:, None])
            return ops.cast(ops.reshape(delta, shape), output_dtype)
        hidden = ops.einsum(
            "...hk,khr->...hr", queries, ops.cast(down_kernel, dtype)
        )
        hidden = self.activation(ops.add(hidden, ops.cast(down_bias, dtype)))
        delta = ops.einsum(
            "...hr,hrk->...hk", hidden, ops.cast(up_kernel, dtype)
        )
        return ops.cast(ops.add(delta, ops.cast(up_bias, dtype)), output_dtype)

    def call(self, inputs, outputs, queries=None, output_kernel=None):
        if queries is None:
            if self._query_projection is None:
                raise ValueError(self._unattached("queries"))
            queries = self._query_projection(inputs)
        if output_kernel is None:
            if self._output_kernel is None:
                raise ValueError(self._unattached("output_kernel"))
            output_kernel = self._output_kernel()
        deltas = self.head_deltas(ops.cast(queries, outputs.dtype))
        shape = self._kernel_shape(output_kernel.shape)
        kernel = ops.reshape(ops.cast(output_kernel, deltas.dtype), shape)
        projected = ops.einsum("...hk,hkd->...d", deltas, kernel)
        return ops.add(outputs, ops.cast(projected, outputs.dtype))

    def _unattached(self, argument):
        return (
            f"MultiHeadParallelAdapter {self.name!r} has no attention to "
            f"read from: pass `{argument}` or call `attach` first (a layer "
            "restored from its config is not attached)."
        )

    def compute_output_shape(self, inputs_shape, outputs_shape, *args):
        return outputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "head_dim": self.head_dim})
        return config
