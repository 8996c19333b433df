import os

import keras
import numpy as np
import pytest
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

from keras_peft.layers import PrefixAttention
from tests import helpers

B, T, S, D, HEADS, HEAD_DIM, L = 2, 5, 6, 8, 2, 4, 3


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _mha():
    mha = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    mha.build((B, T, D), (B, S, D))
    return mha


def _randomize_prefix(layer, seed=0):
    rng = np.random.default_rng(seed)
    for variable in (layer.prefix_key, layer.prefix_value):
        variable.assign(rng.normal(size=variable.shape).astype("float32"))


def _project(dense, x):
    return helpers.numpy(dense(x))


def test_mha_output_equals_unified_view_formula():
    """He et al.'s decomposition, computed independently in NumPy:
    Attn(Q, [Pk; K], [Pv; V]) = (1 - lam) Attn(Q, K, V) + lam Attn(Q, Pk, Pv).
    """
    rng = np.random.default_rng(0)
    query = rng.normal(size=(B, T, D)).astype("float32")
    value = rng.normal(size=(B, S, D)).astype("float32")
    mask = np.ones((B, T, S), bool)
    mask[1, :, -2:] = False
    mha = _mha()
    layer = PrefixAttention(mha, length=L)
    _randomize_prefix(layer)
    output = helpers.numpy(layer(query, value, attention_mask=mask))

    q = _project(mha._query_dense, query) / np.sqrt(HEAD_DIM)
    k = _project(mha._key_dense, value)
    v = _project(mha._value_dense, value)
    pk, pv = layer.prefix_key.numpy(), layer.prefix_value.numpy()
    scores = np.einsum("btnh,bsnh->bnts", q, k)
    scores = np.where(mask[:, None], scores, -np.inf)
    prefix_scores = np.einsum("btnh,snh->bnts", q, pk)
    # Row-wise normalizers of each part and the mixing weight lambda(Q).
    z_real = np.exp(scores).sum(-1, keepdims=True)
    z_prefix = np.exp(prefix_scores).sum(-1, keepdims=True)
    lam = z_prefix / (z_prefix + z_real)
    attn_real = np.einsum("bnts,bsnh->btnh", _softmax(scores), v)
    attn_prefix = np.einsum("bnts,snh->btnh", _softmax(prefix_scores), pv)
    lam = np.transpose(lam, (0, 2, 1, 3))
    mixed = (1 - lam) * attn_real + lam * attn_prefix
    expected = _project(mha._output_dense, mixed.astype("float32"))
    # Close: a NumPy reference of the unified view, against the layer.
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_mha_without_mask_and_with_causal_mask():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(B, T, D)).astype("float32")
    mha = _mha()
    layer = PrefixAttention(mha, length=L)
    _randomize_prefix(layer)
    no_mask = helpers.numpy(layer(x, x))
    all_ones = helpers.numpy(
        layer(x, x, attention_mask=np.ones((B, T, T), bool))
    )
    # Close: with a mask, a backend may attend through another kernel.
    np.testing.assert_allclose(no_mask, all_ones, atol=1e-6)
    causal = helpers.numpy(layer(x, x, use_causal_mask=True))
    explicit = helpers.numpy(
        layer(x, x, attention_mask=np.tril(np.ones((B, T, T), bool)))
    )
    # Close: the masks differ in shape, so a backend may pick other kernels.
    np.testing.assert_allclose(causal, explicit, atol=1e-6)
    # The first query sees only itself and the prefix: it changes with it.
    layer.prefix_value.assign(layer.prefix_value.numpy() + 1.0)
    assert not np.allclose(
        helpers.numpy(layer(x, x, use_causal_mask=True)), causal
    )


def test_shapes_counts_and_frozen_base():
    mha = _mha()
    layer = PrefixAttention(mha, length=L)
    assert [v.name for v in layer.trainable_weights] == [
        "prefix_key",
        "prefix_value",
    ]
    assert sum(int(np.prod(v.shape)) for v in layer.adapter_variables) == (
        2 * L * HEADS * HEAD_DIM
    )
    x = np.zeros((B, T, D), "float32")
    assert layer(x, x).shape == (B, T, D)
    assert layer.release() is mha
    assert all(v.trainable for v in mha.weights)
    # Released: the plain layer attends without the prefix again.
    assert "_compute_attention" not in vars(mha)


def _t5_attention(is_decoder, relative, dtype=None):
    layer = T5MultiHeadAttention(
        is_decoder=is_decoder,
        hidden_dim=D,
        key_value_dim=HEAD_DIM,
        num_heads=HEADS,
        dropout=0.0,
        use_relative_attention_bias=relative,
        dtype=dtype,
    )
    layer(np.zeros((1, 2, D), "float32"))
    return layer


def _t5_reference(base, layer, x, kv, mask, start=0, bias=None):
    """T5 attention over [prefix; keys], written out in NumPy.

    `bias`, when given, is a position bias inherited from an earlier layer
    (mask already folded in) and replaces the layer's own bias and mask.
    """
    heads = lambda t: t.reshape(t.shape[0], t.shape[1], HEADS, HEAD_DIM)  # noqa
    q = heads(_project(base.query_projector, x))
    k = heads(_project(base.key_projector, kv))
    v = heads(_project(base.value_projector, kv))
    pk, pv = layer.prefix_key.numpy(), layer.prefix_value.numpy()
    scores = np.einsum("bqnd,bknd->bnqk", q, k)
    if bias is not None:
        scores = scores + helpers.numpy(bias)
    elif base.use_relative_attention_bias:
        scores = scores + helpers.numpy(
            base.compute_bias(x.shape[1], kv.shape[1], query_start_index=start)
        )
    if bias is None:
        scores = scores + (1.0 - mask[:, None]) * -1e9
    prefix_scores = np.einsum("bqnd,knd->bnqk", q, pk)  # no position bias
    weights = _softmax(np.concatenate([prefix_scores, scores], -1))
    values = np.concatenate(
        [np.broadcast_to(pv, (x.shape[0], *pv.shape)), v], 1
    )
    out = np.einsum("bnqk,bknd->bqnd", weights, values)
    out = out.reshape(x.shape[0], x.shape[1], HEADS * HEAD_DIM)
    return _project(base.output_projector, out.astype("float32"))


@pytest.mark.parametrize("relative", [True, False])
def test_t5_self_attention_matches_reference(relative):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(B, T, D)).astype("float32")
    mask = np.ones((B, T, T), "float32")
    mask[0, :, -1] = 0
    base = _t5_attention(is_decoder=False, relative=relative)
    layer = PrefixAttention(base, length=L)
    _randomize_prefix(layer)
    output, bias, cache = layer(x, mask=mask)
    assert cache is None
    # The bias handed to the next layer is the plain layer's, prefix-free.
    _, plain_bias, _ = base(x, mask=mask)
    # Exact: both build the bias by the same ops from the same values.
    np.testing.assert_array_equal(
        helpers.numpy(bias), helpers.numpy(plain_bias)
    )
    # Close: a NumPy reference of T5 attention, against the layer.
    np.testing.assert_allclose(
        helpers.numpy(output),
        _t5_reference(base, layer, x, x, mask),
        atol=1e-5,
    )
    # A later layer of the stack reuses the extended bias as it is.
    again, _, _ = layer(x, position_bias=bias)
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(helpers.numpy(again), helpers.numpy(output))


def test_t5_mask_under_float16():
    """Under float16 the mask folds in with float16's most negative finite
    value: -1e9 there is -inf, and a kept position's 0 * -inf NaN."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(B, T, D)).astype("float32")
    mask = np.ones((B, T, T), "float32")
    mask[0, :, -1] = 0
    base = _t5_attention(False, relative=True, dtype="mixed_float16")
    # A strongly negative position bias: plus the mask's fill it would
    # overflow to -inf, which a later layer given a fully masked row turns
    # into NaN; the fold clamps it.
    bias = base.relative_attention_bias
    bias.assign(np.full(bias.shape, -100.0, "float32"))
    layer = PrefixAttention(base, length=L)
    _randomize_prefix(layer)
    output, position_bias, _ = layer(x, mask=mask)
    assert np.isfinite(helpers.numpy(position_bias)).all()
    assert keras.backend.standardize_dtype(output.dtype) == "float16"
    output = helpers.numpy(output).astype("float32")
    assert np.isfinite(output).all()
    # Close to a NumPy reference (the projections by the float16 layers,
    # the attention in float32) within float16's precision: about 3
    # decimal digits, on outputs of order 1.
    np.testing.assert_allclose(
        output, _t5_reference(base, layer, x, x, mask), atol=2e-2
    )


def _cross_attention_case(seed):
    """Decoder states, encoder states with padding, a prefixed layer."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D)).astype("float32")
    encoder = rng.normal(size=(B, S, D)).astype("float32")
    mask = np.ones((B, 1, S), "float32")
    mask[1, :, -2:] = 0
    base = _t5_attention(is_decoder=True, relative=False)
    layer = PrefixAttention(base, length=L)
    _randomize_prefix(layer)
    return x, encoder, mask, base, layer


def test_t5_cross_attention_matches_reference():
    x, encoder, mask, base, layer = _cross_attention_case(seed=3)
    output, _, _ = layer(x, mask=mask, key_value_states=encoder)
    expected = _t5_reference(
        base, layer, x, encoder, np.broadcast_to(mask, (B, T, S))
    )
    # Close: a NumPy reference of T5 cross-attention, against the layer.
    np.testing.assert_allclose(helpers.numpy(output), expected, atol=1e-5)


def test_t5_cached_decoding_equals_full_pass():
    """keras-hub's self-attention cache path: one query at a time; the cache
    keeps its size and never holds the prefix."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(B, T, D)).astype("float32")
    causal = np.tril(np.ones((T, T), "float32"))[None].repeat(B, 0)
    base = _t5_attention(is_decoder=True, relative=True)
    layer = PrefixAttention(base, length=L)
    _randomize_prefix(layer)
    full = helpers.numpy(layer(x, mask=causal)[0])
    cache = np.zeros((B, 2, T, HEADS, HEAD_DIM), "float32")
    for step in range(T):
        out, _, cache = layer(
            x[:, step : step + 1],
            mask=causal[:, step : step + 1],
            cache=cache,
            cache_update_index=step,
        )
        assert cache.shape == (B, 2, T, HEADS, HEAD_DIM)
        # Close: each cached step attends one query, through other kernels.
        np.testing.assert_allclose(
            helpers.numpy(out)[:, 0], full[:, step], atol=1e-5
        )


def test_t5_cross_attention_cache_keeps_the_prefix_once_filled():
    """keras-hub fills the cross-attention cache once, then reuses it at
    every step: filled by the layer, it holds the prefix in front, so the
    steps copy nothing; a plain cache filled elsewhere works too."""
    x, encoder, mask, base, layer = _cross_attention_case(seed=7)
    full = helpers.numpy(layer(x, mask=mask, key_value_states=encoder)[0])
    empty = np.zeros((B, 2, S, HEADS, HEAD_DIM), "float32")
    seeded, _, filled = layer(
        x[:, :1],
        mask=mask,
        key_value_states=encoder,
        cache=empty,
        cache_update_index=0,
    )
    # Close: one query attends through other kernels than the full pass.
    np.testing.assert_allclose(
        helpers.numpy(seeded)[:, 0], full[:, 0], atol=1e-5
    )
    assert filled.shape == (B, 2, L + S, HEADS, HEAD_DIM)
    filled = helpers.numpy(filled)
    # Exact: the prefix is copied into the cache.
    for row, prefix in enumerate((layer.prefix_key, layer.prefix_value)):
        np.testing.assert_array_equal(
            filled[:, row, :L],
            np.broadcast_to(prefix.numpy(), (B, L, HEADS, HEAD_DIM)),
        )
    plain = np.stack(
        [
            _project(projector, encoder).reshape(B, S, HEADS, HEAD_DIM)
            for projector in (base.key_projector, base.value_projector)
        ],
        axis=1,
    )
    # Close, though exact would hold: the same projectors on the same states.
    np.testing.assert_allclose(filled[:, :, L:], plain, atol=1e-6)
    for cache in (filled, plain):
        for step in range(1, T):
            out, _, returned = layer(
                x[:, step : step + 1],
                mask=mask,
                key_value_states=encoder,
                cache=cache,
            )
            # Exact: the cache is only read, and comes back as passed.
            np.testing.assert_array_equal(helpers.numpy(returned), cache)
            # Close: each cached step attends one query, through other kernels.
            np.testing.assert_allclose(
                helpers.numpy(out)[:, 0], full[:, step], atol=1e-5
            )


def test_serialization_round_trip(tmp_path):
    query = keras.Input((T, D))
    outputs = PrefixAttention(_mha(), length=L)(query, query)
    model = keras.Model(query, outputs)
    _randomize_prefix(model.layers[-1])
    x = np.random.default_rng(5).normal(size=(B, T, D)).astype("float32")
    expected = model.predict(x, verbose=0)
    path = os.path.join(tmp_path, "prefix.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    # Exact: a save/load round trip runs the same ops on the same values.
    np.testing.assert_array_equal(restored.predict(x, verbose=0), expected)


def test_bad_arguments():
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        PrefixAttention(keras.layers.Dense(3), length=2)
    with pytest.raises(ValueError, match="length"):
        PrefixAttention(_mha(), length=0)
    with pytest.raises(ValueError, match="built"):
        PrefixAttention(
            keras.layers.MultiHeadAttention(num_heads=2, key_dim=2), length=2
        )


def test_t5_wrapped_and_plain_layers_can_follow_one_another():
    """A stack passes its position bias on; any subset of layers may be
    wrapped, with any prefix lengths."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(B, T, D)).astype("float32")
    mask = np.ones((B, T, T), "float32")
    mask[1, :, -2:] = 0
    first = _t5_attention(is_decoder=False, relative=True)
    second = _t5_attention(is_decoder=False, relative=False)
    plain_bias = first(x, mask=mask)[1]
    for wrap_first, wrap_second in [(True, False), (False, True), (True, True)]:
        one = PrefixAttention(first, length=2) if wrap_first else first
        two = PrefixAttention(second, length=3) if wrap_second else second
        out, bias, _ = one(x, mask=mask)
        # Close, though exact would hold: the same ops (asserted exactly above).
        np.testing.assert_allclose(
            helpers.numpy(bias), helpers.numpy(plain_bias), atol=1e-6
        )
        out2, _, _ = two(out, position_bias=bias)
        if wrap_second:
            # Close: a NumPy reference of T5 attention, against the layer.
            np.testing.assert_allclose(
                helpers.numpy(out2),
                _t5_reference(
                    second,
                    two,
                    helpers.numpy(out),
                    helpers.numpy(out),
                    mask,
                    bias=bias,
                ),
                atol=1e-5,
            )
        for layer in (one, two):
            if isinstance(layer, PrefixAttention):
                layer.release()
