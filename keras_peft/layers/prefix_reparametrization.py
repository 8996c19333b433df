"""Li & Liang's reparametrization: every layer's prefix from one small MLP."""

import keras
from keras import ops

from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.adapter_layer import take_slot
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
    switchable = True

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

    def layer_prefix(self, index, slot=None):
        """Layer `index`'s prefix keys and values, each `(l, heads, dim)`.

        Args:
            index: int. The attention layer's index.
            slot: int or `None`. The slot (named adapter) to compute with;
                `None`: the acting one (each example's, with a leading
                batch axis, while routed per example).
        """
        if not 0 <= index < self.num_layers:
            raise ValueError(
                f"Layer index {index} is outside [0, {self.num_layers})."
            )
        if slot is not None:
            return self._prefix(
                [v.value for v in self.slot_variables(slot)], index
            )
        if not self.switched:
            return self._prefix(self._variables(), index)
        plan = self._slot_plan()
        readers = self._layer_readers(index)
        if not self.routed:
            # The active slot's weights, this layer's columns of the output
            # layer only: taking every slot's whole output kernel would
            # move `num_layers` times more.
            return self._layer_prefix(
                [
                    self.slot_value(variable, read, plan)
                    for variable, read in readers
                ]
            )
        # Each slot's prefix, not the MLP's weights, is gathered per
        # example: the output kernel is far larger than the prefix.
        embedding, hidden_kernel, hidden_bias, kernel, bias = [
            self.slot_stack(variable, read) for variable, read in readers
        ]
        hidden = ops.tanh(
            ops.matmul(embedding, hidden_kernel) + hidden_bias[:, None]
        )
        outputs = ops.matmul(hidden, kernel) + bias[:, None]
        outputs = ops.reshape(
            outputs, (-1, self.length, 2, self.num_heads, self.head_dim)
        )
        return tuple(take_slot(outputs[:, :, k], plan.index) for k in (0, 1))

    def _layer_readers(self, index):
        """`(variable, read)` for each slot-0 variable: `read` gives what
        `_layer_weights` takes of it for layer `index` (the output layer's
        columns of that layer only)."""
        size = 2 * self.num_heads * self.head_dim
        start = index * size

        def cut(variable):
            return variable.value[..., start : start + size]

        return [
            (variable, cut if k >= 3 else lambda v: v.value)
            for k, variable in enumerate(self._variables())
        ]

    def serve(self, index, attention_layer):
        """Records that layer `index`'s prefix is `attention_layer`'s."""
        # Ids, not the layers: model surgery rewrites references to a
        # layer it replaces (the wrapper takes the attention layer's place),
        # and the wrappers keep the attention layers alive.
        self.__dict__.setdefault("_served", {})[index] = id(attention_layer)

    def served_layers(self):
        """`(index, id(attention layer))` of the layers this MLP feeds."""
        return sorted(self.__dict__.get("_served", {}).items())

    def _variables(self):
        return (
            self.prefix_embedding,
            self.hidden_kernel,
            self.hidden_bias,
            self.output_kernel,
            self.output_bias,
        )

    def _prefix(self, variables, index):
        return self._layer_prefix(self._layer_weights(variables, index))

    def _layer_weights(self, variables, index):
        """`variables` with the output layer cut to layer `index`'s part."""
        embedding, hidden_kernel, hidden_bias, output_kernel, output_bias = (
            variables
        )
        size = 2 * self.num_heads * self.head_dim
        start = index * size
        return (
            embedding,
            hidden_kernel,
            hidden_bias,
            output_kernel[:, start : start + size],
            output_bias[start : start + size],
        )

    def _layer_prefix(self, weights):
        embedding, hidden_kernel, hidden_bias, kernel, bias = weights
        hidden = ops.tanh(ops.matmul(embedding, hidden_kernel) + hidden_bias)
        outputs = ops.matmul(hidden, kernel) + bias
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
