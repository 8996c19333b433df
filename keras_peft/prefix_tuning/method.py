"""How prefix tuning plans itself on a model."""

import numpy as np

from keras_peft.core import composition
from keras_peft.core import config as config_lib
from keras_peft.core import method as method_lib
from keras_peft.core import scopes
from keras_peft.core import tokens
from keras_peft.layers.prefix_attention import PrefixAttention
from keras_peft.layers.prefix_attention import attention_dims
from keras_peft.layers.prefix_reparametrization import PrefixReparametrization
from keras_peft.prefix_tuning import init as init_lib
from keras_peft.prefix_tuning.config import PrefixTuningConfig


class PrefixTuningMethod(method_lib.Method):
    name = "prefix_tuning"
    config_class = PrefixTuningConfig

    def plan(self, context, config, initialize=True):
        layers = selected_attention_layers(context, config)
        composition.check_wrappable(context, config, layers)
        dims = {attention_dims(layer) for layer in layers}
        heads, key_dim, value_dim = dims.pop()
        if config.reparam and (dims or key_dim != value_dim):
            raise ValueError(
                "reparam=True shares one MLP across layers, which needs every "
                "attention layer to have the same heads and equal key and "
                "value widths; use reparam=False."
            )

        targets = None
        if initialize and config.init == "text":
            tokenizer = tokens.resolve_tokenizer(context, config.tokenizer)
            targets = init_lib.text_prefixes(context, layers, config, tokenizer)

        source = None
        if config.reparam:
            backbone = context.backbone
            with scopes.scope_of(f"{backbone.path}/prefix_reparametrization"):
                source = PrefixReparametrization(
                    config.length,
                    num_layers=len(layers),
                    num_heads=heads,
                    head_dim=key_dim,
                    hidden_dim=config.reparam_hidden,
                    name="prefix_reparametrization",
                    dtype=backbone.dtype_policy,
                )
            if targets is not None:
                _fit_reparametrization(source, targets)

        replacements = []
        try:
            for index, layer in enumerate(layers):
                with scopes.scope_of(layer.path):
                    wrapper = PrefixAttention(
                        layer,
                        config.length,
                        prefix_source=source,
                        source_index=index,
                    )
                replacements.append(method_lib.Replacement(layer, wrapper))
                if targets is not None and source is None:
                    wrapper.prefix_key.assign(targets[index][0])
                    wrapper.prefix_value.assign(targets[index][1])
        except BaseException:
            for replacement in reversed(replacements):
                replacement.new.release()
            raise
        return method_lib.MethodPlan(tuple(replacements))


def selected_attention_layers(context, config):
    """The attention layers `config` prefixes, in kind order."""
    available = context.architecture.attention_layers(context.backbone)
    if config.selects_every_attention:
        kinds = [kind for kind in config.attention if kind in available]
    else:
        missing = [kind for kind in config.attention if kind not in available]
        if missing:
            raise ValueError(
                f"PrefixTuningConfig attention={config.attention!r} names "
                f"{missing}, which {type(context.backbone).__name__} does not "
                f"have. Its attention kinds: {tuple(available)}."
            )
        kinds = list(config.attention)
    return [layer for kind in kinds for layer in available[kind]]


def _fit_reparametrization(source, targets):
    """Sets the MLP's output layer so that `MLP(P')` is `targets`.

    The hidden activations of the `length` prefix positions are (generically)
    independent when `length <= hidden_dim`, so a least-squares output kernel
    reproduces the targets exactly; otherwise as closely as it can.
    """
    embedding = source.prefix_embedding.numpy()
    hidden = np.tanh(
        embedding @ source.hidden_kernel.numpy() + source.hidden_bias.numpy()
    )
    length = source.length
    wanted = np.concatenate(
        [
            np.concatenate(
                [keys.reshape(length, -1), values.reshape(length, -1)], axis=1
            )
            for keys, values in targets
        ],
        axis=1,
    )
    kernel = np.linalg.lstsq(hidden, wanted, rcond=None)[0]
    source.output_kernel.assign(kernel.astype("float32"))
    source.output_bias.assign(np.zeros(source.output_bias.shape, "float32"))


METHOD = config_lib.register_method(PrefixTuningMethod())
