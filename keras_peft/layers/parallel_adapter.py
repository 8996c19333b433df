"""He et al.'s parallel adapter: a bottleneck from a sub-layer's input."""

import keras
from keras import ops

from keras_peft.layers.bottleneck import Bottleneck


@keras.saving.register_keras_serializable(package="keras_peft")
class ParallelAdapter(Bottleneck):
    """Maps `(x, h)` to `h + s * (f(x W_down + b_down) W_up + b_up)`.

    The parallel adapter of He et al. (2022): it reads a sub-layer's input
    `x` and adds to the sub-layer's output `h`, in parallel with the frozen
    sub-layer. `scale=4.0` is their scaled parallel adapter; `"learned"`
    makes `s` a trainable scalar (starting at 1.0). `W_up` and `b_up` start
    at zero, so the layer returns `h` exactly until it trains. The
    projections are float32 whatever the dtype policy.

    Args:
        bottleneck: int. Width `r` of the bottleneck.
        activation: activation `f`. Defaults to `"relu"`.
        scale: float > 0, or `"learned"`. Defaults to `1.0`.
        down_initializer: initializer of `W_down`. Defaults to
            `"he_uniform"`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:
    ```python
    ffn_input = keras.ops.ones((2, 10, 768))
    ffn_output = ffn(ffn_input)
    adapter = keras_peft.layers.ParallelAdapter(bottleneck=512, scale=4.0)
    h = adapter(ffn_input, ffn_output)  # equals ffn_output until trained
    ```

    Reference:
        - [He et al., 2022](https://arxiv.org/abs/2110.04366)
    """

    def build(self, inputs_shape, outputs_shape):
        self.build_bottleneck(inputs_shape[-1], outputs_shape[-1])

    def call(self, inputs, outputs):
        return ops.add(outputs, self.delta(ops.cast(inputs, outputs.dtype)))

    def compute_output_shape(self, inputs_shape, outputs_shape):
        return outputs_shape
