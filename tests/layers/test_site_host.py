"""`layers.site_host.SiteHost`: serialization, and what a restored host
does with its taps."""

import os

import keras
import numpy as np
import pytest

from keras_peft.layers import Adapter
from keras_peft.layers import LoRADense
from keras_peft.layers import ParallelAdapter
from keras_peft.layers.site_host import SiteHost
from keras_peft.layers.site_host import Tap
from tests import helpers

D = 6
X = np.random.default_rng(0).normal(size=(2, 4, D)).astype("float32")


def _dense(name="proj"):
    dense = keras.layers.Dense(D, name=name)
    dense.build((None, None, D))
    return dense


def _module(kind, name):
    module = kind(bottleneck=2, name=name)
    module.build(*[(None, None, D)] * (2 if kind is ParallelAdapter else 1))
    return module


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for variable in layer.trainable_weights:
        variable.assign(0.3 * rng.normal(size=variable.shape))


def _host(base):
    return SiteHost(
        base,
        parallel=[(_module(ParallelAdapter, "parallel_adapter"), None)],
        sequential=[_module(Adapter, "adapter")],
    )


@pytest.mark.parametrize("lora", [False, True])
def test_config_round_trips_with_base_and_modules(lora):
    base = LoRADense(base_layer=_dense(), rank=2) if lora else _dense()
    host = _host(base)
    _randomize(host)
    config = host.get_config()
    assert [p["tap"] for p in config["parallel"]] == [None]
    clone = SiteHost.from_config(config)
    assert type(clone) is type(host)
    assert type(clone.base_layer) is type(base)
    assert clone.get_config() == config
    clone.set_weights(host.get_weights())
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(
        helpers.numpy(clone(X)), helpers.numpy(host(X))
    )


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((4, D))
    host = _host(_dense())
    model = keras.Model(inputs, host(inputs))
    _randomize(host)
    expected = model.predict(X, verbose=0)
    path = os.path.join(tmp_path, "host.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.layers[-1], SiteHost)
    # Exact: a save/load round trip runs the same ops on the same values.
    np.testing.assert_array_equal(restored.predict(X, verbose=0), expected)


def test_registered_under_package_whatever_hosts_exist():
    SiteHost(_dense())  # makes the host class for Dense
    assert keras.saving.get_registered_object("keras_peft>SiteHost") is (
        SiteHost
    )
    assert keras.saving.get_registered_name(type(SiteHost(_dense()))) == (
        "keras_peft>SiteHost"
    )


def test_restored_host_keeps_tap_names_and_rejects_reading_a_tap():
    tap = Tap("encoder_0/ffn")
    first = SiteHost(_dense("first"), records=[tap])
    last = SiteHost(
        _dense("last"),
        parallel=[(_module(ParallelAdapter, "parallel_adapter"), tap)],
    )
    last(first(X))  # linked: the tap carries the first layer's input
    restored_first = SiteHost.from_config(first.get_config())
    restored_last = SiteHost.from_config(last.get_config())
    assert restored_first.get_config() == first.get_config()
    assert restored_last.get_config() == last.get_config()
    assert last.get_config()["parallel"][0]["tap"] == "encoder_0/ffn"
    assert first.get_config()["records"] == ["encoder_0/ffn"]
    restored_first(X)  # records nothing, computes as before
    with pytest.raises(ValueError, match="restored.*'encoder_0/ffn'"):
        restored_last(restored_first(X))
