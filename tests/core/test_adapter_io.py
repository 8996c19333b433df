"""Adapter bundles: bad directories are refused before any weight changes."""

import json
import os

import keras_hub
import numpy as np
import pytest

import keras_peft
from keras_peft.core import adapter_io
from tests import helpers

CASE = helpers.MODEL_CASES["bert_classifier"]
WEIGHTS = "adapter_weights.safetensors"


@pytest.fixture
def saved(tmp_path):
    model = CASE.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=4, alpha=8))
    for variable in model.trainable_weights:
        variable.assign(np.full(variable.shape, 0.05, "float32"))
    path = os.path.join(tmp_path, "adapter")
    keras_peft.save_adapter(model, path)
    return path


def _assert_load_refused(model, path, message):
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match=message):
        keras_peft.load_adapter(model, path)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_bundle_holds_config_and_variable_list(saved):
    with open(os.path.join(saved, "adapter_config.json")) as f:
        document = json.load(f)
    assert document["format"] == "keras-peft-adapter"
    assert document["architecture"] == "bert"
    assert document["configs"] == [
        keras_peft.LoRAConfig(rank=4, alpha=8).to_dict()
    ]
    paths = [entry["path"] for entry in document["variables"]]
    assert paths[0] == "transformer_layer_0/self_attention_layer/query/lora_a"
    assert paths[-2:] == ["logits/kernel", "logits/bias"]
    addresses = [entry["address"] for entry in document["variables"]]
    # The backbone has Keras' default name: addressed by class and rank.
    assert addresses[0] == (
        "bert_backbone[0]/transformer_layer_0/self_attention_layer/query/lora_a"
    )
    assert addresses[-2:] == ["logits/kernel", "logits/bias"]
    assert sorted(os.listdir(saved)) == [
        "adapter_config.json",
        "adapter_weights.safetensors",
    ]


def test_missing_directory(tmp_path):
    _assert_load_refused(CASE.build(), os.path.join(tmp_path, "x"), "no such")


def test_corrupted_config(saved):
    with open(os.path.join(saved, "adapter_config.json"), "w") as f:
        f.write("{not json")
    _assert_load_refused(CASE.build(), saved, "corrupted")


def test_corrupted_weights(saved):
    weights = os.path.join(saved, WEIGHTS)
    data = bytearray(open(weights, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    _assert_load_refused(CASE.build(), saved, "corrupted")


def test_truncated_weights_with_matching_checksum(saved):
    weights = os.path.join(saved, WEIGHTS)
    open(weights, "wb").write(open(weights, "rb").read()[:100])
    config_path = os.path.join(saved, "adapter_config.json")
    document = json.load(open(config_path))
    document["weights_sha256"] = adapter_io._sha256(weights)
    json.dump(document, open(config_path, "w"))
    _assert_load_refused(CASE.build(), saved, "corrupted")


def test_other_method(saved):
    config_path = os.path.join(saved, "adapter_config.json")
    document = json.load(open(config_path))
    document["configs"][0]["method"] = "prefix_tuning_v9"
    json.dump(document, open(config_path, "w"))
    _assert_load_refused(CASE.build(), saved, "Unknown keras-peft method")


def test_model_with_another_rank_applied(saved):
    model = CASE.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2, alpha=8))
    _assert_load_refused(
        model, saved, "rank=4 in the file but rank=2 in the model"
    )


def test_model_of_another_shape(saved):
    config = dict(helpers.BERT, hidden_dim=8)
    model = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(**config),
        num_classes=helpers.NUM_CLASSES,
        preprocessor=None,
    )
    _assert_load_refused(model, saved, "hidden_dim=16")


def test_other_architecture(saved):
    _assert_load_refused(
        helpers.MODEL_CASES["t5_seq2seq"].build(), saved, "BertBackbone"
    )


def test_model_with_another_head(saved):
    model = keras_hub.models.BertTextClassifier(
        helpers.MODEL_CASES["bert_backbone"].build(),
        num_classes=helpers.NUM_CLASSES + 2,
        preprocessor=None,
    )
    _assert_load_refused(model, saved, "logits/kernel")


def test_backbone_cannot_take_a_classifier_adapter(saved):
    _assert_load_refused(
        helpers.MODEL_CASES["bert_backbone"].build(), saved, "trainable"
    )


def test_save_without_adapter_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no keras-peft adapter"):
        keras_peft.save_adapter(CASE.build(), os.path.join(tmp_path, "a"))


def test_save_refuses_to_replace_unrelated_directory(tmp_path):
    model = CASE.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    precious = os.path.join(tmp_path, "precious")
    os.makedirs(precious)
    open(os.path.join(precious, "thesis.txt"), "w").write("keep me")
    with pytest.raises(ValueError, match="does not hold a keras-peft adapter"):
        keras_peft.save_adapter(model, precious)
    assert os.listdir(precious) == ["thesis.txt"]


def test_crash_while_writing_leaves_previous_adapter_intact(
    saved, monkeypatch, tmp_path
):
    model = CASE.build()
    keras_peft.load_adapter(model, saved)
    expected = CASE.outputs(model)
    for variable in model.trainable_weights:
        variable.assign(np.zeros(variable.shape, "float32"))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_io.safetensors.numpy, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        keras_peft.save_adapter(model, saved)
    monkeypatch.undo()
    assert sorted(os.listdir(os.path.dirname(saved))) == ["adapter"]
    fresh = CASE.build()
    keras_peft.load_adapter(fresh, saved)
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(CASE.outputs(fresh), expected)


def test_saving_over_an_adapter_replaces_it(saved):
    model = CASE.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2, alpha=8))
    keras_peft.save_adapter(model, saved)
    document = json.load(open(os.path.join(saved, "adapter_config.json")))
    assert document["configs"][0]["rank"] == 2
    assert sorted(os.listdir(os.path.dirname(saved))) == ["adapter"]


@pytest.mark.parametrize(
    "key,value",
    [
        ("variables", 5),
        ("variables", ["not a dict"]),
        ("variables", [{"key": ["v0"], "path": "x", "shape": [1]}]),
        ("weights_file", None),
        ("configs", [{"method": "lora", "rank": -1}]),
        ("configs", [{"method": "lora", "ranks": 4}]),
        ("configs", ["lora"]),
        ("backbone_signature", "bert"),
    ],
)
def test_malformed_config_fields(saved, key, value):
    config_path = os.path.join(saved, "adapter_config.json")
    document = json.load(open(config_path))
    document[key] = value
    json.dump(document, open(config_path, "w"))
    _assert_load_refused(CASE.build(), saved, "Cannot load adapter")


def test_adapter_paths_do_not_depend_on_name_scopes(saved):
    import keras

    with keras.name_scope("serving"):
        scoped = CASE.build()
    keras_peft.load_adapter(scoped, saved)
    plain = CASE.build()
    keras_peft.load_adapter(plain, saved)
    helpers.assert_outputs_close(CASE.outputs(scoped), CASE.outputs(plain))


def test_adapter_variables_sit_beside_their_kernels_in_any_scope():
    import keras

    model = CASE.build()
    with keras.name_scope("caller"):
        keras_peft.apply(
            model, keras_peft.LoRAConfig(rank=2, targets=["pooled_dense"])
        )
    assert [v.path for v in model.backbone.pooled_dense.adapter_variables] == [
        "pooled_dense/lora_a",
        "pooled_dense/lora_b",
    ]
