"""The adapter bundle's format: safetensors weights matched to the model by
address, the version-1 `.npz` bundles still read, and files any writer can
produce."""

import json
import os
import struct

import keras
import keras_hub
import numpy as np
import pytest
import safetensors.numpy

import keras_peft
from keras_peft.core import adapter_io
from keras_peft.core import layer_tree
from tests import helpers

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_weights.safetensors"
DEEP_BERT = dict(helpers.BERT, num_layers=12)
_DEEP_WEIGHTS = []


def _deep_classifier():
    """A 12-layer classifier with fixed base weights: `transformer_layer_1`
    and `transformer_layer_10` differ only in a digit."""
    model = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(**DEEP_BERT),
        num_classes=2,
        preprocessor=None,
    )
    if not _DEEP_WEIGHTS:
        _DEEP_WEIGHTS.append(model.get_weights())
    model.set_weights(_DEEP_WEIGHTS[0])
    return model


def _outputs(model):
    return keras.ops.convert_to_numpy(model(helpers.bert_inputs()))


@pytest.fixture
def deep(tmp_path):
    """A saved LoRA adapter of the 12-layer classifier, and its outputs."""
    model = _deep_classifier()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    helpers.randomize_trainable(model, scale=0.3)
    path = os.path.join(tmp_path, "adapter")
    keras_peft.save_adapter(model, path)
    return path, _outputs(model)


def _edit_document(path, edit):
    config_path = os.path.join(path, CONFIG)
    with open(config_path) as f:
        document = json.load(f)
    edit(document)
    with open(config_path, "w") as f:
        json.dump(document, f)


def _rewrite_weights(path, arrays, name=WEIGHTS):
    """Writes `arrays` as the bundle's weights and records their checksum."""
    weights = os.path.join(path, name)
    safetensors.numpy.save_file(arrays, weights)

    def update(document):
        document["weights_sha256"] = adapter_io._sha256(weights)

    _edit_document(path, update)


def _assert_refused(path, message):
    model = _deep_classifier()
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match=message):
        keras_peft.load_adapter(model, path)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_entries_load_by_address_whatever_their_order(deep):
    path, expected = deep

    def reverse(document):
        document["variables"].reverse()

    _edit_document(path, reverse)
    fresh = _deep_classifier()
    keras_peft.load_adapter(fresh, path)
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(_outputs(fresh), expected)


def test_layer_1_and_layer_10_are_told_apart(deep):
    """The entries of the two layers trade places in the file (same shapes):
    by position they would load into each other's layer; by address each
    layer gets its own tensor."""
    path, expected = deep
    address = (
        "bert_backbone[0]/transformer_layer_{}/self_attention_layer/query/"
        "lora_a"
    )

    def swap(document):
        entries = document["variables"]
        where = {e["address"]: i for i, e in enumerate(entries)}
        one, ten = where[address.format(1)], where[address.format(10)]
        entries[one], entries[ten] = entries[ten], entries[one]

    _edit_document(path, swap)
    fresh = _deep_classifier()
    keras_peft.load_adapter(fresh, path)
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(_outputs(fresh), expected)


def test_unknown_address_is_refused_by_name(deep):
    path, _ = deep

    def rename(document):
        entry = document["variables"][0]
        entry["address"] = entry["address"].replace("layer_0/", "layer_12/")

    _edit_document(path, rename)
    _assert_refused(path, r"Only in the file: \[.*transformer_layer_12/")


def test_missing_and_extra_variables_are_refused(deep):
    path, _ = deep

    def drop(document):
        del document["variables"][-1]

    _edit_document(path, drop)
    _assert_refused(path, r"only in the model: \['logits/bias'\]")


def test_weights_of_another_dtype_are_refused(deep):
    path, _ = deep
    arrays = safetensors.numpy.load_file(os.path.join(path, WEIGHTS))
    _rewrite_weights(path, {k: v.astype("float64") for k, v in arrays.items()})
    _assert_refused(path, "float64")


def test_entry_of_another_dtype_is_refused(deep):
    path, _ = deep
    first = {}

    def retype(document):
        entry = document["variables"][0]
        first["key"] = entry["key"]
        entry["dtype"] = "int32"

    _edit_document(path, retype)
    arrays = safetensors.numpy.load_file(os.path.join(path, WEIGHTS))
    arrays[first["key"]] = arrays[first["key"]].astype("int32")
    _rewrite_weights(path, arrays)
    _assert_refused(path, "int32 in the file but float32 in the model")


def test_version_1_bundles_still_load(deep):
    """Bundles written before safetensors: `.npz` weights, variables
    paired with the model's by position."""
    path, expected = deep
    arrays = safetensors.numpy.load_file(os.path.join(path, WEIGHTS))
    os.remove(os.path.join(path, WEIGHTS))
    npz = os.path.join(path, "adapter_weights.npz")
    with open(npz, "wb") as f:
        np.savez(f, **arrays)

    def downgrade(document):
        document["format_version"] = 1
        document["weights_file"] = "adapter_weights.npz"
        document["weights_sha256"] = adapter_io._sha256(npz)
        for entry in document["variables"]:
            del entry["address"]

    _edit_document(path, downgrade)
    fresh = _deep_classifier()
    keras_peft.load_adapter(fresh, path)
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(_outputs(fresh), expected)


def _plain_safetensors(arrays):
    """The safetensors layout, written with `struct` and NumPy alone: an
    8-byte little-endian header length, a JSON header, the raw bytes."""
    header, offset, blobs = {}, 0, []
    for key in sorted(arrays):
        blob = np.ascontiguousarray(arrays[key], "<f4").tobytes()
        header[key] = {
            "dtype": "F32",
            "shape": list(arrays[key].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def test_bundle_written_without_keras_loads(deep, tmp_path):
    """The weights file is plain safetensors: another writer (here struct and
    NumPy, as a JAX or PyTorch tool would) makes a bundle that loads."""
    path, expected = deep
    arrays = safetensors.numpy.load_file(os.path.join(path, WEIGHTS))
    weights = os.path.join(path, WEIGHTS)
    with open(weights, "wb") as f:
        f.write(_plain_safetensors(arrays))

    def checksum(document):
        document["weights_sha256"] = adapter_io._sha256(weights)

    _edit_document(path, checksum)
    fresh = _deep_classifier()
    keras_peft.load_adapter(fresh, path)
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(_outputs(fresh), expected)


def test_addresses_do_not_depend_on_default_name_counters():
    def model():
        inputs = keras.Input((3,))
        hidden = keras.layers.Dense(4)(inputs)
        hidden = keras.layers.Dense(4)(hidden)
        return keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))

    first = model()
    keras.layers.Dense(1)  # moves Keras' process-wide name counter
    second = model()
    assert first.layers[1].name != second.layers[1].name

    def addresses(m):
        found = layer_tree.variable_addresses(m)
        return [found[id(v)] for v in m.weights]

    assert (
        addresses(first)
        == addresses(second)
        == [
            "dense[0]/kernel",
            "dense[0]/bias",
            "dense[1]/kernel",
            "dense[1]/bias",
            "out/kernel",
            "out/bias",
        ]
    )


def test_sibling_layers_with_one_name_are_refused():
    class Twins(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="twins")
            self.first = keras.layers.Dense(2, name="proj")
            self.second = keras.layers.Dense(2, name="proj")

        def call(self, x):
            return self.second(self.first(x))

    twins = Twins()
    twins(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="'proj/kernel'.*unique name"):
        layer_tree.variable_addresses(twins)


def test_a_default_named_wrapper_is_addressed_by_its_class():
    def model():
        inputs = keras.Input((3,))
        outputs = keras_peft.layers.LoRADense(4, rank=2)(inputs)
        return keras.Model(inputs, outputs)

    first, second = model(), model()
    assert first.layers[1].name != second.layers[1].name

    def addresses(m):
        found = layer_tree.variable_addresses(m)
        return [found[id(v)] for v in m.weights]

    assert addresses(first) == addresses(second)
    assert addresses(first)[0].startswith("lo_ra_dense[0]/")
