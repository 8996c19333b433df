"""He et al.'s MAM adapter on one keras-hub `TransformerEncoder` block."""

import keras
import keras_hub

from keras_peft.core import architectures
from keras_peft.core import composition
from keras_peft.core import freezing
from keras_peft.core import method as method_lib
from keras_peft.core import scopes
from keras_peft.core import surgery
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.bottleneck import LEARNED
from keras_peft.layers.bottleneck import check_scale
from keras_peft.layers.bottleneck import get_activation
from keras_peft.layers.parallel_adapter import ParallelAdapter
from keras_peft.layers.prefix_attention import PrefixAttention
from keras_peft.layers.prefix_attention import attention_dims
from keras_peft.layers.prefix_reparametrization import PrefixReparametrization
from keras_peft.layers.validation import check_int
from keras_peft.layers.wrapper import Wrapper


class _BlockContext:
    """What `composition.compose` needs of a model: here, one block."""

    def __init__(self, block):
        self.model = block


@keras.saving.register_keras_serializable(package="keras_peft")
class MAMBlock(keras.layers.Layer):
    """A `keras_hub.layers.TransformerEncoder` with the MAM adapter.

    He et al.'s (2022) "mix-and-match" adapter on one block: prefix tuning
    at its self-attention (`prefix_length` trained keys and values per head,
    through an MLP with `reparam=True`) and a scaled parallel adapter at its
    feed-forward network (`h + s * f(x W_down) W_up` from the FFN's input).
    The block's own weights are frozen; only the prefix (and its MLP) and
    the adapter train. The adapter's up-projection starts at zero, but the
    prefix does not: like prefix tuning, the block's outputs change from the
    start (attention spreads over the prefix).

    For `keras_hub` models use `keras_peft.apply(model,
    keras_peft.MAMConfig())`; `MAMBlock` is for models users build from
    `TransformerEncoder` blocks themselves. It is installed with the same
    layers and mechanism as `MAMConfig` (`PrefixAttention`,
    `ParallelAdapter` and a site host at the FFN).

    Args:
        encoder: a `keras_hub.layers.TransformerEncoder`, built or not (it
            is built with the block). It is changed in place when the block
            builds (its attention and FFN layers wrapped, its variables
            frozen): give each `MAMBlock` an encoder of its own that nothing
            else calls.
        prefix_length: int. Prefix length `l`. Defaults to `30`.
        bottleneck: int. Width `r` of the FFN adapter. Defaults to `512`.
        scale: float > 0 or `"learned"`. The adapter's scale `s`. Defaults
            to `4.0`.
        reparam: bool. Compute the prefix as `MLP(P')`. Defaults to `True`.
        reparam_hidden: int. Width of `P'` and the MLP. Defaults to `512`.
        activation: str. The adapter's activation. Defaults to `"relu"`.
        **kwargs: base layer arguments such as `name`; the dtype defaults to
            the encoder's.

    Example:
    ```python
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(30522, 256)(inputs)
    for _ in range(4):
        encoder = keras_hub.layers.TransformerEncoder(1024, num_heads=4)
        x = keras_peft.layers.MAMBlock(encoder, bottleneck=64)(x)
    outputs = keras.layers.Dense(2)(x[:, 0])
    model = keras.Model(inputs, outputs)
    ```

    Reference:
        - [He et al., 2022](https://arxiv.org/abs/2110.04366)
    """

    def __init__(
        self,
        encoder,
        prefix_length=30,
        bottleneck=512,
        scale=4.0,
        reparam=True,
        reparam_hidden=512,
        activation="relu",
        **kwargs,
    ):
        for name, value in (
            ("prefix_length", prefix_length),
            ("bottleneck", bottleneck),
            ("reparam_hidden", reparam_hidden),
        ):
            check_int(name, value, owner="MAMBlock ")
        check_scale(scale, owner="MAMBlock ")
        if not isinstance(reparam, bool):
            raise ValueError(
                f"MAMBlock `reparam` must be a bool. Got {reparam!r}."
            )
        if not _is_transformer_encoder(encoder):
            raise TypeError(
                "MAMBlock wraps a keras_hub.layers.TransformerEncoder. "
                f"Received: {type(encoder).__name__}"
            )
        kwargs.setdefault("dtype", encoder.dtype_policy)
        super().__init__(**kwargs)
        self.encoder = encoder
        self.prefix_length = prefix_length
        self.bottleneck = bottleneck
        self.scale = scale if scale == LEARNED else float(scale)
        self.reparam = reparam
        self.reparam_hidden = reparam_hidden
        self.activation = activation
        if not isinstance(activation, str):
            raise ValueError(
                "MAMBlock `activation` must be the name of a Keras activation "
                f"(a str, so that it can be saved). Got {activation!r}."
            )
        get_activation(activation, owner="MAMBlock ")

    def build(self, inputs_shape, padding_mask_shape=None, *args, **kwargs):
        wrapped = [
            layer.path
            for layer in freezing.layers_of(self.encoder)
            if isinstance(layer, (Wrapper, AdapterLayer))
        ]
        if wrapped:
            raise ValueError(
                f"MAMBlock cannot wrap encoder {self.encoder.path!r}: it "
                f"already carries keras-peft layers ({', '.join(wrapped)}), "
                "e.g. from another MAMBlock. Give each MAMBlock its own "
                "TransformerEncoder."
            )
        if not self.encoder.built:
            self.encoder.build(inputs_shape)
        attention, ffn = architectures.transformer_encoder_sites(self.encoder)
        with scopes.scope_of(self.encoder.path):
            prefix = self._prefix_attention(attention.output_layer)
        with scopes.scope_of(f"{self.encoder.path}/ffn_parallel_adapter"):
            adapter = ParallelAdapter(
                self.bottleneck,
                activation=self.activation,
                scale=self.scale,
                name="ffn_parallel_adapter",
                dtype=ffn.output_layer.dtype_policy,
            )
            adapter.build(inputs_shape, inputs_shape)
        plan = method_lib.MethodPlan(
            replacements=(
                method_lib.Replacement(attention.output_layer, prefix),
            ),
            deltas=(method_lib.Delta(ffn, adapter, parallel=True),),
        )
        replacements, _ = composition.compose(
            _BlockContext(self.encoder), [plan]
        )
        for replacement in replacements:
            surgery.replace_layer(
                self.encoder, replacement.old, replacement.new
            )
        adapters = freezing.layers_of(self.encoder)
        freezing.set_backbone_trainable(
            self.encoder,
            {id(v) for v in freezing.adapter_variables(adapters)},
        )
        self.built = True

    def _prefix_attention(self, attention):
        source = None
        if self.reparam:
            heads, head_dim, _ = attention_dims(attention)
            source = PrefixReparametrization(
                self.prefix_length,
                num_layers=1,
                num_heads=heads,
                head_dim=head_dim,
                hidden_dim=self.reparam_hidden,
                name="prefix_reparametrization",
                dtype=attention.dtype_policy,
            )
        return PrefixAttention(
            attention, self.prefix_length, prefix_source=source
        )

    @property
    def prefix_attention(self):
        """The `PrefixAttention` at the block's self-attention (once built)."""
        for layer in freezing.layers_of(self.encoder):
            if isinstance(layer, PrefixAttention):
                return layer
        return None

    @property
    def parallel_adapter(self):
        """The `ParallelAdapter` at the block's FFN (once built)."""
        for layer in freezing.layers_of(self.encoder):
            if isinstance(layer, ParallelAdapter):
                return layer
        return None

    def call(
        self, inputs, padding_mask=None, attention_mask=None, training=None
    ):
        return self.encoder(
            inputs,
            padding_mask=padding_mask,
            attention_mask=attention_mask,
            training=training,
        )

    def compute_output_shape(self, inputs_shape, *args, **kwargs):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "prefix_length": self.prefix_length,
                "bottleneck": self.bottleneck,
                "scale": self.scale,
                "reparam": self.reparam,
                "reparam_hidden": self.reparam_hidden,
                "activation": self.activation,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(
            config["encoder"]
        )
        return cls(**config)


def _is_transformer_encoder(layer):
    return isinstance(layer, keras_hub.layers.TransformerEncoder)
