"""Dropping the reparametrization MLP once a prefix is trained."""

import dataclasses

from keras_peft.core import architectures
from keras_peft.core import injection
from keras_peft.core import layer_tree
from keras_peft.core import recompile
from keras_peft.core import state as state_lib
from keras_peft.core import surgery
from keras_peft.core import tf_distribute
from keras_peft.layers.prefix_attention import PrefixAttention
from keras_peft.prefix_tuning.config import PrefixTuningConfig

_FIELD_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(PrefixTuningConfig)
}


def reparametrized_prefixes(model):
    """Every `PrefixAttention` in `model` whose prefix an MLP computes."""
    return [
        layer
        for layer, _ in layer_tree.iter_layers(model)
        if isinstance(layer, PrefixAttention)
        and layer.prefix_source is not None
    ]


def trained_reparametrized_prefixes(model):
    """The reparametrized prefixes whose MLP trains: what `save_adapter`
    stores as computed prefixes."""
    return [
        layer
        for layer in reparametrized_prefixes(model)
        if any(v.trainable for v in layer.prefix_source.weights)
    ]


def ejected_configs(configs):
    """`configs` as `eject_prefix` leaves them: prefixes without their MLP.

    The MLP's width no longer means anything and goes back to its default,
    so the result equals the config of a prefix trained directly.
    """
    return tuple(
        dataclasses.replace(
            config,
            reparam=False,
            reparam_hidden=_FIELD_DEFAULTS["reparam_hidden"],
        )
        if config.method == "prefix_tuning"
        else config
        for config in configs
    )


def computed_prefix_size(layers):
    """How many values the prefixes of `layers` hold once computed: every
    named adapter's, where a layer holds several."""
    return sum(
        max(len(layer.slot_names), 1)
        * layer.length
        * layer.num_heads
        * (layer.key_dim + layer.value_dim)
        for layer in layers
    )


def eject_prefix(model):
    """Replaces the prefix MLP by the prefix it computes: same outputs.

    After training with `PrefixTuningConfig(reparam=True)`, each attention
    layer keeps its computed keys and values `P` and the MLP and `P'` are
    dropped: the trainable parameter count falls to
    `2 * length * hidden * n_attention_layers`, and serving no longer
    recomputes the prefix at every step. The applied config becomes
    `reparam=False` (what the model now is). In a model holding several
    named adapters, every adapter's prefix is ejected. `save_adapter`
    stores the computed prefix with or without this step. Re-compile before
    training further.

    Args:
        model: a model with reparametrized prefix tuning applied.

    Returns:
        The same `model`.

    Example:
    ```python
    keras_peft.apply(seq2seq_lm, keras_peft.PrefixTuningConfig(length=30))
    seq2seq_lm.fit(data)
    keras_peft.eject_prefix(seq2seq_lm)  # P only, for serving
    seq2seq_lm.generate("summarize: ...")
    ```
    """
    context = architectures.resolve_model(model)
    layers = reparametrized_prefixes(context.model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no reparametrized prefix to eject: "
            "apply `keras_peft.PrefixTuningConfig(reparam=True)` first."
        )
    with tf_distribute.creation_scope(context.model):
        for layer in layers:
            layer.eject()
    state = state_lib.get_state(context.backbone)
    for name, adapter in state.adapters.items():
        state = state.replaced(
            name,
            ejected_configs(adapter.configs),
            adapter.trainable_base_variables,
        )
    injection.record_state(context.backbone, state)
    surgery.forget_compiled_functions(context.model)
    recompile.require_recompile(context.model, "keras_peft.eject_prefix")
    return model
