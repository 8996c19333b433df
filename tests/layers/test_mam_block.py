"""`keras_peft.layers.MAMBlock`: MAM on a user's own TransformerEncoder."""

import keras
import keras_hub
import numpy as np
import pytest

from keras_peft.layers import MAMBlock
from tests import helpers

D, HEADS, FFN, L, R = 16, 2, 32, 3, 4


def _encoder():
    return keras_hub.layers.TransformerEncoder(
        FFN, num_heads=HEADS, dropout=0.0
    )


def _model(blocks):
    """Token ids -> embedding -> blocks -> a 2-class head on position 0."""
    inputs = keras.Input((None,), dtype="int32")
    mask = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(20, D)(inputs)
    for block in blocks:
        x = block(x, padding_mask=mask)
    outputs = keras.layers.Dense(2)(x[:, 0])
    return keras.Model([inputs, mask], outputs)


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 20, (4, 6)).astype("int32")
    mask = np.ones((4, 6), "int32")
    mask[0, 4:] = 0
    return [ids, mask]


def _np(x):
    return keras.ops.convert_to_numpy(x)


def test_block_equals_prefix_attention_plus_parallel_adapter_formula():
    """Post-LN block: x = LN(u + attn_prefix(u)); out = LN(x + ffn(x) +
    s * (relu(x W_down + b_down) W_up + b_up)), the adapter in NumPy."""
    block = MAMBlock(_encoder(), prefix_length=L, bottleneck=R, reparam=False)
    u = np.random.default_rng(1).normal(size=(2, 5, D)).astype("float32")
    block(u)
    adapter = block.parallel_adapter
    rng = np.random.default_rng(2)
    for variable in adapter.trainable_weights:
        variable.assign(0.3 * rng.normal(size=variable.shape))
    prefix = block.prefix_attention
    assert prefix.length == L and prefix.base_layer.built

    encoder = block.encoder
    a = _np(prefix(u, u))
    x = _np(encoder._self_attention_layer_norm(u + a))
    f = _np(
        encoder._feedforward_output_dense.base_layer(
            encoder._feedforward_intermediate_dense.base_layer(x)
        )
    )
    hidden = np.maximum(
        x @ adapter.down_kernel.numpy() + adapter.down_bias.numpy(), 0
    )
    delta = 4.0 * (hidden @ adapter.up_kernel.numpy() + adapter.up_bias.numpy())
    expected = _np(encoder._feedforward_layer_norm(x + f + delta))
    # Same ops but a different summation order for the delta: float32.
    np.testing.assert_allclose(_np(block(u)), expected, rtol=1e-5, atol=1e-5)


def test_freezes_the_encoder_and_trains_prefix_and_adapter():
    encoder = _encoder()
    block = MAMBlock(encoder, prefix_length=L, bottleneck=R, reparam_hidden=8)
    model = _model([block])
    frozen = [v for v in encoder.weights if not v.trainable]
    trainable = block.trainable_weights
    # Prefix MLP: P' (l x 8), 8 x 8 (+8), 8 x 2 d (+2 d); adapter 2 r d + r + d.
    expected = L * 8 + 8 * 8 + 8 + 8 * 2 * D + 2 * D + 2 * R * D + R + D
    assert sum(int(np.prod(v.shape)) for v in trainable) == expected
    assert len(frozen) == len(encoder.weights) - len(trainable)
    before = [v.numpy().copy() for v in frozen]
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    trained_before = [v.numpy().copy() for v in trainable]
    model.fit(_inputs(), np.array([0, 1, 1, 0]), epochs=2, verbose=0)
    for variable, value in zip(frozen, before):
        # Frozen: never written, bit for bit.
        np.testing.assert_array_equal(variable.numpy(), value)
    for variable, value in zip(trainable, trained_before):
        assert not np.array_equal(variable.numpy(), value), variable.path


def test_adapter_starts_at_zero():
    """The adapter's zero up-projection adds exactly nothing (the prefix,
    like prefix tuning's, changes attention from the start)."""
    encoder = _encoder()
    u = np.random.default_rng(3).normal(size=(2, 5, D)).astype("float32")
    block = MAMBlock(encoder, prefix_length=L, bottleneck=R, reparam=False)
    block(u)
    host = block.encoder._feedforward_output_dense
    x = np.random.default_rng(4).normal(size=(2, 5, FFN)).astype("float32")
    # The host's adapter reads the FFN input recorded by the first layer.
    block.encoder._feedforward_intermediate_dense(
        np.zeros((2, 5, D), "float32")
    )
    # Zero-initialized up-projection: the base output, bit for bit.
    helpers.assert_outputs_equal(_np(host(x)), _np(host.base_layer(x)))


def test_functional_model_round_trips_through_keras_file(tmp_path):
    model = _model(
        [MAMBlock(_encoder(), prefix_length=L, bottleneck=R) for _ in range(2)]
    )
    rng = np.random.default_rng(5)
    for variable in model.trainable_weights:
        variable.assign(0.1 * rng.normal(size=variable.shape))
    expected = _np(model(_inputs()))
    path = str(tmp_path / "mam.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    # Same weights, same ops: bit for bit.
    helpers.assert_outputs_equal(_np(restored(_inputs())), expected)
    assert len(restored.trainable_weights) == len(model.trainable_weights)


def test_config_round_trip():
    block = MAMBlock(_encoder(), prefix_length=L, bottleneck=R, scale="learned")
    restored = MAMBlock.from_config(block.get_config())
    assert restored.get_config() == block.get_config()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prefix_length": 0}, "prefix_length"),
        ({"bottleneck": -2}, "bottleneck"),
        ({"scale": 0.0}, "scale"),
        ({"reparam": "yes"}, "reparam"),
        ({"activation": "swishy"}, "swishy"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAMBlock(_encoder(), **kwargs)
    with pytest.raises(TypeError, match="TransformerEncoder"):
        MAMBlock(keras.layers.Dense(3))


def test_an_encoder_wraps_once():
    encoder = _encoder()
    u = np.zeros((1, 3, D), "float32")
    MAMBlock(encoder, prefix_length=L, bottleneck=R)(u)
    with pytest.raises(ValueError, match="already carries keras-peft"):
        MAMBlock(encoder, prefix_length=L, bottleneck=R)(u)
