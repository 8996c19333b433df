"""`layers.Wrapper`: the plumbing every keras-peft wrapper shares."""

import keras
import numpy as np
import pytest
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

from keras_peft.layers import LoRADense
from keras_peft.layers import PrefixAttention
from keras_peft.layers import Wrapper
from keras_peft.layers.site_host import SiteHost
from tests import helpers

X = np.random.default_rng(0).normal(size=(2, 3)).astype("float32")


class _Doubled(Wrapper):
    def call(self, inputs):
        return 2 * self.base_layer(inputs)


def _dense(**kwargs):
    dense = keras.layers.Dense(4, name="proj", **kwargs)
    dense.build((None, 3))
    return dense


def test_takes_name_and_dtype_from_the_base_unless_given():
    dense = _dense(dtype="bfloat16")
    wrapper = _Doubled(dense)
    assert wrapper.name == "proj"
    assert wrapper.dtype_policy.name == "bfloat16"
    assert wrapper.wrapped_layer is dense and wrapper.base_layer is dense
    assert wrapper.applied_config is None
    other = _Doubled(_dense(), name="other", dtype="float16")
    assert other.name == "other" and other.dtype_policy.name == "float16"


def test_release_gives_back_the_flags_freeze_base_found():
    dense = _dense()
    dense.bias.trainable = False
    wrapper = _Doubled(dense)
    wrapper.freeze_base()
    dense.kernel.trainable = True  # a second freeze keeps the first flags
    wrapper.freeze_base()
    assert [v.trainable for v in dense.weights] == [True, False]
    assert wrapper.release() is dense
    assert [v.trainable for v in dense.weights] == [True, False]
    # Never frozen: nothing to give back.
    assert _Doubled(dense).release() is dense
    assert dense.kernel.trainable


def test_release_restores_each_variable_it_froze_by_identity():
    """A base that holds more variables by the time it is released (LoRA
    applied inside a prefixed attention layer) gets back exactly the flags
    of the variables it had; the new ones keep theirs."""
    import keras_peft
    from keras_peft.core import layer_tree

    backbone = helpers.MODEL_CASES["bert_backbone"].build()
    attention = backbone.get_layer("transformer_layer_0")._self_attention_layer
    attention._key_dense.trainable = False
    flags = {id(v): v.trainable for v in attention.weights}
    keras_peft.apply(
        backbone, keras_peft.PrefixTuningConfig(length=2, reparam=False)
    )
    keras_peft.apply(backbone, keras_peft.LoRAConfig(rank=2))
    wrapper = next(
        layer
        for layer, _ in layer_tree.iter_layers(backbone)
        if isinstance(layer, PrefixAttention) and layer.base_layer is attention
    )
    assert wrapper.release() is attention
    for variable in attention.weights:
        expected = flags.get(id(variable), True)  # LoRA's train
        assert variable.trainable == expected, variable.path


def test_config_holds_the_base_layer_and_round_trips():
    wrapper = _Doubled(_dense(activation="relu"))
    config = wrapper.get_config()
    assert config["base_layer"]["class_name"] == "Dense"
    clone = _Doubled.from_config(config)
    assert clone.get_config() == config
    assert clone.base_layer.activation is keras.activations.relu
    clone.base_layer.set_weights(wrapper.base_layer.get_weights())
    # Exact: the same ops on the same values.
    np.testing.assert_array_equal(
        helpers.numpy(clone(X)), helpers.numpy(wrapper(X))
    )


def _t5_attention():
    attention = T5MultiHeadAttention(
        is_decoder=False,
        hidden_dim=8,
        key_value_dim=4,
        num_heads=2,
        dropout=0.0,
        use_relative_attention_bias=False,
    )
    attention(np.zeros((1, 2, 8), "float32"))
    return attention


def test_every_keras_peft_wrapper_is_one():
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    mha.build((None, 5, 8), (None, 5, 8))
    wrappers = [
        LoRADense(base_layer=_dense(), rank=2),
        PrefixAttention(mha, length=2),
        PrefixAttention(_t5_attention(), length=2),
    ]
    assert type(wrappers[2]).__name__ == "T5PrefixAttention"
    for wrapper in wrappers:
        assert isinstance(wrapper, Wrapper) and wrapper.replacing
        assert wrapper.name == wrapper.base_layer.name
        assert wrapper.get_config()[wrapper.base_argument]["config"]
    host = SiteHost(_dense())
    assert isinstance(host, Wrapper) and not host.replacing
    assert host.name == "proj"


@pytest.mark.parametrize("make", [LoRADense, PrefixAttention])
def test_released_bases_train_again(make):
    if make is LoRADense:
        base = _dense()
        wrapper = LoRADense(base_layer=base, rank=2)
    else:
        base = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
        base.build((None, 5, 8), (None, 5, 8))
        wrapper = PrefixAttention(base, length=2)
    assert not any(v.trainable for v in base.weights)
    assert wrapper.release() is base
    assert all(v.trainable for v in base.weights)
