import keras
import numpy as np
import pytest

from keras_peft.layers import PrefixAttention
from keras_peft.layers import PrefixReparametrization
from tests import helpers

B, T, D, HEADS, HEAD_DIM, L, LAYERS, HIDDEN = 2, 5, 8, 2, 4, 3, 2, 6


def _mha():
    mha = keras.layers.MultiHeadAttention(num_heads=HEADS, key_dim=HEAD_DIM)
    mha.build((B, T, D), (B, T, D))
    return mha


def _source():
    return PrefixReparametrization(
        length=L,
        num_layers=LAYERS,
        num_heads=HEADS,
        head_dim=HEAD_DIM,
        hidden_dim=HIDDEN,
    )


def test_layer_prefix_is_a_two_layer_tanh_mlp_of_the_table():
    source = _source()
    rng = np.random.default_rng(0)
    for variable in source.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    table = source.prefix_embedding.numpy()
    hidden = np.tanh(
        table @ source.hidden_kernel.numpy() + source.hidden_bias.numpy()
    )
    full = hidden @ source.output_kernel.numpy() + source.output_bias.numpy()
    full = full.reshape(L, LAYERS, 2, HEADS, HEAD_DIM)
    # Close: a NumPy reference of the MLP, against the layer's kernels. An
    # absolute tolerance too: an output near 0 is a sum of O(1) products
    # that cancel, where float32 kernels that sum in another order (JAX's,
    # NumPy's) differ by more than 1e-5 of the result (measured: 2.4e-7 on
    # -0.0135).
    for index in range(LAYERS):
        keys, values = helpers.numpy(source.layer_prefix(index))
        for got, expected in (
            (keys, full[:, index, 0]),
            (values, full[:, index, 1]),
        ):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    width = LAYERS * 2 * HEADS * HEAD_DIM
    assert sum(int(np.prod(v.shape)) for v in source.weights) == (
        L * HIDDEN + HIDDEN * HIDDEN + HIDDEN + HIDDEN * width + width
    )
    with pytest.raises(ValueError, match="outside"):
        source.layer_prefix(LAYERS)


def test_attention_reads_its_slice_and_eject_keeps_outputs():
    source = _source()
    x = np.random.default_rng(1).normal(size=(B, T, D)).astype("float32")
    layers = [
        PrefixAttention(_mha(), length=L, prefix_source=source, source_index=i)
        for i in range(LAYERS)
    ]
    before = [helpers.numpy(layer(x, x)) for layer in layers]
    # Both layers hold the one shared source.
    assert all(layer.prefix_source is source for layer in layers)
    assert {id(v) for v in layers[0].adapter_variables} == {
        id(v) for v in source.weights
    }
    for layer, expected in zip(layers, before):
        layer.eject()
        assert layer.prefix_source is None
        # Close, though exact would hold: eject() copies the MLP's prefix.
        np.testing.assert_allclose(
            helpers.numpy(layer(x, x)), expected, atol=1e-5
        )
        assert [v.name for v in layer.adapter_variables] == [
            "prefix_key",
            "prefix_value",
        ]
    # After ejecting: 2 * l * d per attention layer.
    counts = sum(
        int(np.prod(v.shape))
        for layer in layers
        for v in layer.adapter_variables
    )
    assert counts == 2 * L * HEADS * HEAD_DIM * LAYERS
    layers[0].get_config()  # serializable once ejected


def test_gradients_reach_the_shared_source():
    source = _source()
    layer = PrefixAttention(_mha(), length=L, prefix_source=source)
    x = np.random.default_rng(2).normal(size=(B, T, D)).astype("float32")
    layer(x, x)  # builds the source's variables

    def loss():
        return keras.ops.sum(layer(x, x) ** 2)

    _, grads = helpers.gradients(loss, list(source.weights))
    assert all(g is not None and np.any(g != 0) for g in grads)


def test_mismatched_source_and_unserializable_shared_layer():
    with pytest.raises(ValueError, match="do not match"):
        PrefixAttention(_mha(), length=L + 1, prefix_source=_source())
    with pytest.raises(ValueError, match="source_index"):
        PrefixAttention(
            _mha(), length=L, prefix_source=_source(), source_index=LAYERS
        )
    layer = PrefixAttention(_mha(), length=L, prefix_source=_source())
    with pytest.raises(ValueError, match="eject"):
        layer.get_config()
    with pytest.raises(ValueError, match="positive int"):
        PrefixReparametrization(0, 1, 1, 1)
