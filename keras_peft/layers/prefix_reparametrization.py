"""Li & Liang's reparametrization: every layer's prefix from one small MLP."""

import keras
from keras import ops

from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.validation import check_int


@keras.saving.register_keras_serializable(package="keras_peft")
class PrefixReparametrization(AdapterLayer):
    """Computes all layers' prefix keys and values as `P = MLP(P')`.

    A `(length, hidden_dim)` table `P'` feeds a two-layer tanh MLP whose
    output holds, for each of `num_layers` attention layers, `length` key
    and value vectors of `num_heads x head_dim`. Training `P'` and the MLP
    instead of `P` directly is what stabilizes prefix tuning; after training
    only `P` is kept (`keras_peft.layers.PrefixAttention.eject`). Each
    `PrefixAttention` built with `prefix_source=this, source_index=i` reads
    its slice, computing only that slice of the output layer.

    Args:
        length: int. Prefix length `l`.
        num_layers: int. Number of attention layers served.
        num_heads: int. Attention heads of each layer.
        head_dim: int. Key and value width per head.
        hidden_dim: int. Width of `P'` and of the MLP's hidden layer.
            Defaults to `512`.
        **kwargs: base layer arguments such as `name`.

    Example:
    ```python
    source = keras_peft.layers.PrefixReparametrization(
        length=30, num_layers=12, num_heads=12, head_dim=64)
    keys, values = source.layer_prefix(3)  # each (30, 12, 64)
    ```

    Reference:
        - [Li & Liang, 2021](https://arxiv.org/abs/2101.00190)
    """

    method = "prefix_tuning"

    def __init__(
        self, length, num_layers, num_heads, head_dim, hidden_dim=512, **kwargs
    ):
        for name, value in (
            ("length", length),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("hidden_dim", hidden_dim),
        ):
            check_int(name, value)
        super().__init__(**kwargs)
        self.length = length
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.hidden_dim = hidden_dim
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        width = self.num_layers * 2 * self.num_heads * self.head_dim
        self.prefix_embedding = self.add_weight(
            name="prefix_embedding",
            shape=(self.length, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
        )
        self.hidden_kernel = self.add_weight(
            name="hidden_kernel",
            shape=(self.hidden_dim, self.hidden_dim),
            initializer="glorot_uniform",
        )
        self.hidden_bias = self.add_weight(
            name="hidden_bias", shape=(self.hidden_dim,), initializer="zeros"
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.hidden_dim, width),
            initializer="glorot_uniform",
        )
        self.output_bias = self.add_weight(
            name="output_bias", shape=(width,), initializer="zeros"
        )
        self.built = True

    def layer_prefix(self, index):
        """Layer `index`'s prefix keys and values, each `(l, heads, dim)`."""
        if not 0 <= index < self.num_layers:
            raise ValueError(
                f"Layer index {index} is outside [0, {self.num_layers})."
            )
        hidden = ops.tanh(
            ops.matmul(self.prefix_embedding, self.hidden_kernel)
            + self.hidden_bias
        )
        size = 2 * self.num_heads * self.head_dim
        start = index * size
        kernel = self.output_kernel[:, start : start + size]
        outputs = (
            ops.matmul(hidden, kernel) + self.output_bias[start : start + size]
        )
        outputs = ops.reshape(
            outputs, (self.length, 2, self.num_heads, self.head_dim)
        )
        return outputs[:, 0], outputs[:, 1]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "length": self.length,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "head_dim": self.head_dim,
                "hidden_dim": self.hidden_dim,
            }
        )
        return config
