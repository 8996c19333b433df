"""Houlsby's sequential adapter: a bottleneck on a sub-layer's output."""

import keras
from keras import ops

from keras_peft.layers.bottleneck import Bottleneck


@keras.saving.register_keras_serializable(package="keras_peft")
class Adapter(Bottleneck):
    """Maps `h` to `h + s * (f(h W_down + b_down) W_up + b_up)`.

    The sequential adapter of Houlsby et al. (2019), inserted on a
    transformer sub-layer's output before its residual add and layer norm.
    `W_up` and `b_up` start at zero, so the layer returns `h` exactly until
    it trains. The projections are float32 whatever the dtype policy.

    Args:
        bottleneck: int. Width `r` of the bottleneck.
        activation: activation `f`. Defaults to `"relu"`.
        scale: float > 0, or `"learned"` (a trainable scalar, starts at 1.0).
            Defaults to `1.0`.
        down_initializer: initializer of `W_down`. Defaults to
            `"he_uniform"`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:
    ```python
    adapter = keras_peft.layers.Adapter(bottleneck=64)
    h = adapter(keras.ops.ones((2, 10, 768)))  # (2, 10, 768), equal to h
    ```

    Reference:
        - [Houlsby et al., 2019](https://arxiv.org/abs/1902.00751)
    """

    def build(self, input_shape):
        self.build_bottleneck(input_shape[-1], input_shape[-1])

    def call(self, inputs):
        return ops.add(inputs, self.delta(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape
