"""Li & Liang's initialization of a prefix from real words' activations."""

import contextlib

import keras
import numpy as np
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

from keras_peft.core import switching
from keras_peft.core import tokens
from keras_peft.layers.disabling import all_disabled


def _key_value_inputs(layer, args, kwargs):
    """The tensors an attention layer projects to keys and to values."""
    if isinstance(layer, T5MultiHeadAttention):
        hidden = args[0] if args else kwargs["hidden_states"]
        states = kwargs.get("key_value_states")
        states = hidden if states is None else states
        return states, states
    query = args[0] if args else kwargs["query"]
    value = args[1] if len(args) > 1 else kwargs.get("value", query)
    key = args[2] if len(args) > 2 else kwargs.get("key")
    return (value if key is None else key), value


def _project(layer, key_inputs, value_inputs):
    """`(keys, values)`, each `(T, heads, head_dim)`, as `layer` computes."""
    if isinstance(layer, T5MultiHeadAttention):
        shape = (-1, layer.num_heads, layer.key_value_dim)
        keys = layer.key_projector(key_inputs)
        values = layer.value_projector(value_inputs)
    else:
        shape = None
        keys = layer._key_dense(key_inputs)
        values = layer._value_dense(value_inputs)
    keys, values = (
        np.asarray(keras.ops.convert_to_numpy(x), "float32")[0]
        for x in (keys, values)
    )
    if shape is not None:
        keys, values = keys.reshape(shape), values.reshape(shape)
    return keys, values


@contextlib.contextmanager
def _recording(layers):
    """Records, per layer, the keys and values of its (first) call."""
    found = {}
    for layer in layers:

        def recorder(*args, _layer=layer, _call=layer.call, **kwargs):
            if id(_layer) not in found:
                found[id(_layer)] = _project(
                    _layer, *_key_value_inputs(_layer, args, kwargs)
                )
            return _call(*args, **kwargs)

        layer.call = recorder
    try:
        yield found
    finally:
        for layer in layers:
            del layer.call


def text_prefixes(context, layers, config, tokenizer):
    """Each layer's keys and values for `config.init_text`, cut to length.

    Runs the frozen model once on the text's tokens (as encoder and as
    decoder input) and records what every attention layer projects.

    Returns:
        A list of `(keys, values)` per layer, each `(length, heads, dim)`.
    """
    tokenizer = tokens.require_tokenizer(
        tokenizer, "PrefixTuningConfig", config.init
    )
    backbone = context.backbone
    ids = tokens.text_token_ids(
        tokenizer, config.init_text, backbone.vocabulary_size
    )
    # The frozen model's activations: other adapters (a model holding
    # several named ones, or earlier configs) do not act.
    applied = switching.peft_layers(backbone)
    with all_disabled(applied), _recording(layers) as found:
        backbone(
            context.architecture.text_inputs(backbone, ids), training=False
        )
    missing = [layer.path for layer in layers if id(layer) not in found]
    if missing:
        raise ValueError(
            f"Running the model on {config.init_text!r} did not reach the "
            f"attention layers {missing}."
        )
    return [
        tuple(tokens.repeat_to(x, config.length) for x in found[id(layer)])
        for layer in layers
    ]
