"""MAM (He et al. 2022): prefix tuning at every attention and a scaled
parallel adapter at every FFN, applied as the union of the two configs."""

import math

import keras
import numpy as np
import pytest

import keras_peft
from keras_peft.core import architectures
from keras_peft.core import config as config_lib
from tests import helpers
from tests import t5_decoding

CONFIG = keras_peft.MAMConfig(prefix_length=3, bottleneck=4, reparam_hidden=8)


def test_applies_and_records_its_parts():
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(model, CONFIG)
    prefix, adapter = keras_peft.applied_configs(model)
    assert prefix == keras_peft.PrefixTuningConfig(
        length=3, reparam=True, reparam_hidden=8
    )
    assert adapter == keras_peft.AdapterConfig(
        bottleneck=4, location="ffn", parallel=True, scale=4.0
    )
    assert CONFIG.parts() == (prefix, adapter)
    groups = dict(keras_peft.trainable_summary(model).groups)
    assert set(groups) == {"prefix_tuning", "adapter", "head"}


def test_t5_cached_decoding_after_training_with_multi_head_adapters():
    """keras-hub's cached decoder runs the prefixes and the FFN adapters a
    token at a time; here also a multi-head parallel adapter at each
    attention, sharing its layer with the prefix."""
    case = helpers.MODEL_CASES["t5_seq2seq"]
    model = case.build()
    keras_peft.apply(
        model,
        [
            CONFIG,
            keras_peft.AdapterConfig(
                bottleneck=2, location="attn", parallel=True, multi_head=True
            ),
        ],
    )
    # Trained values, without the training (fitting T5 is checked in
    # test_method_matrix): the adapters' up-projections leave zero, so the
    # adapters act on every decoding step.
    helpers.randomize_trainable(model, scale=0.3)
    t5_decoding.assert_cached_decoding_matches(model)
    t5_decoding.assert_changes_logits(model)

    # Ejecting the prefix MLP keeps what the model computes.
    before = case.outputs(model)
    keras_peft.eject_prefix(model)
    # The ejected prefix is the MLP's output, stored: the same values.
    helpers.assert_outputs_close(case.outputs(model), before)
    t5_decoding.assert_cached_decoding_matches(model)


def test_conflict_with_an_applied_prefix_names_the_layer_and_changes_nothing():
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    keras_peft.apply(model, keras_peft.PrefixTuningConfig(length=2))
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match="self_attention"):
        keras_peft.apply(model, CONFIG)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prefix_length": 0}, "MAMConfig `prefix_length`"),
        ({"bottleneck": 0}, "MAMConfig `bottleneck`"),
        ({"scale": 0}, "MAMConfig `scale`"),
        ({"reparam": 1}, "MAMConfig `reparam`"),
        ({"reparam_hidden": -1}, "MAMConfig `reparam_hidden`"),
        ({"activation": "swishy"}, "swishy"),
    ],
)
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_peft.MAMConfig(**kwargs)


def test_config_round_trips_through_json():
    config = keras_peft.MAMConfig(bottleneck=16, scale="learned", reparam=False)
    assert keras_peft.config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize("one_call", [True, False])
def test_conflicts_name_the_union_the_user_passed(one_call):
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    if not one_call:
        keras_peft.apply(model, CONFIG)
    before = helpers.snapshot(model)
    other = keras_peft.MAMConfig(prefix_length=2, bottleneck=4)
    configs = [CONFIG, other] if one_call else [other]
    with pytest.raises(ValueError) as error:
        keras_peft.apply(model, configs)
    message = str(error.value)
    assert "self_attention" in message
    assert f"{CONFIG!r} (its PrefixTuningConfig part)" in message
    assert f"{other!r} (its PrefixTuningConfig part)" in message
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_a_union_name_is_not_a_method():
    # Read back as the union, and validated as one.
    with pytest.raises(ValueError, match="MAMConfig `bottleneck`"):
        keras_peft.config_from_dict({"method": "mam", "bottleneck": 0})
    with pytest.raises(ValueError, match="not a method of its own"):
        config_lib.get_method("mam")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _dense(layer, x):
    """A frozen EinsumDense or Dense, in NumPy."""
    kernel = layer.kernel.numpy()
    if kernel.ndim == 2:
        out = x @ kernel
    elif layer.equation.startswith("abc,cde"):  # d -> (heads, head_dim)
        out = np.einsum("btd,dnh->btnh", x, kernel)
    else:  # (heads, head_dim) -> d
        out = np.einsum("btnh,nhd->btd", x, kernel)
    return out + (layer.bias.numpy() if layer.bias is not None else 0)


def _layer_norm(layer, x):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    normed = (x - mean) / np.sqrt(var + layer.epsilon)
    return normed * layer.gamma.numpy() + layer.beta.numpy()


def test_bert_block_equals_prefix_attention_plus_parallel_adapter():
    """One BERT block with MAM, in NumPy from the weights alone: attention
    over `[P_k; K]`, `[P_v; V]` per head (prefix tuning), post-LN, then the
    FFN plus the scaled parallel adapter from the FFN's input, post-LN."""
    case = helpers.MODEL_CASES["bert_backbone"]
    model = case.build()
    keras_peft.apply(model, keras_peft.MAMConfig(3, 4, reparam=False))
    rng = np.random.default_rng(7)
    for variable in model.trainable_weights:
        variable.assign(0.3 * rng.normal(size=variable.shape))
    block = model.transformer_layers[0]
    sites = architectures.resolve_model(model).architecture.sites(model)
    attention = sites[0].output_layer
    prefix = next(
        layer
        for layer in block._flatten_layers()
        if isinstance(layer, keras_peft.layers.PrefixAttention)
    )
    adapter = next(
        layer
        for layer in block._flatten_layers()
        if isinstance(layer, keras_peft.layers.ParallelAdapter)
    )
    u = rng.normal(size=(2, 5, 16)).astype("float32")

    heads, head_dim = attention.num_heads, attention.key_dim
    q = _dense(attention._query_dense, u) / np.sqrt(head_dim)
    k = np.concatenate(
        [
            np.broadcast_to(prefix.prefix_key.numpy(), (2, 3, heads, head_dim)),
            _dense(attention._key_dense, u),
        ],
        axis=1,
    )
    v = np.concatenate(
        [
            np.broadcast_to(
                prefix.prefix_value.numpy(), (2, 3, heads, head_dim)
            ),
            _dense(attention._value_dense, u),
        ],
        axis=1,
    )
    weights = _softmax(np.einsum("btnh,bsnh->bnts", q, k))
    heads_out = np.einsum("bnts,bsnh->btnh", weights, v)
    a = _dense(attention._output_dense, heads_out)
    x = _layer_norm(block._self_attention_layer_norm, u + a)
    inner = block._feedforward_intermediate_dense
    inner = getattr(inner, "base_layer", inner)
    outer = block._feedforward_output_dense.base_layer
    # keras-hub BERT's FFN: exact (erf) GELU.
    h = _dense(inner, x)
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
    f = _dense(outer, h)
    hidden = np.maximum(
        x @ adapter.down_kernel.numpy() + adapter.down_bias.numpy(), 0
    )
    f = f + 4.0 * (hidden @ adapter.up_kernel.numpy() + adapter.up_bias.numpy())
    expected = _layer_norm(block._feedforward_layer_norm, x + f)
    # A NumPy reference against the layers: float32 rounding only.
    np.testing.assert_allclose(_np(block(u)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case_name", ["bert_classifier", "t5_backbone"])
def test_adapter_half_starts_at_zero(case_name):
    """Right after apply, MAM computes exactly what the prefix alone does
    (same prefix values): the FFN adapters add exactly 0."""
    case = helpers.MODEL_CASES[case_name]
    mam = case.build()
    keras_peft.apply(mam, keras_peft.MAMConfig(3, 4, reparam=False))
    prefix_only = case.build()
    keras_peft.apply(
        prefix_only, keras_peft.PrefixTuningConfig(length=3, reparam=False)
    )
    groups = keras_peft.variable_groups
    for source, target in zip(
        groups(mam)["prefix_tuning"], groups(prefix_only)["prefix_tuning"]
    ):
        target.assign(source)
    # Exact: the same ops on the same values, and an update of exactly 0.
    helpers.assert_outputs_equal(case.outputs(mam), case.outputs(prefix_only))
