"""`model.save("m.keras")` and `keras.models.load_model` of applied models."""

import json
import os
import zipfile

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from tests import helpers

# Every method on the classifier; every method at once on each other model
# (a T5 model takes seconds to build, and loading builds it again).
CASES = [
    ("bert_classifier", method)
    for method in sorted(helpers.METHOD_CASES)
    if "bert" in helpers.METHOD_CASES[method].architectures
] + [
    ("bert_masked_lm", "all_methods_and_bitfit"),
    ("bert_backbone", "all_methods_and_bitfit"),
    ("t5_seq2seq", "all_methods"),  # and so its backbone
]


def _applied(model_name, method_name):
    case = helpers.MODEL_CASES[model_name]
    model = case.build()
    keras_peft.apply(model, helpers.METHOD_CASES[method_name].config(case))
    # Off their initial values, so that the round trip proves they travel.
    helpers.randomize_trainable(model, scale=0.3)
    return case, model


def _saved_config(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def _backbone_config(document):
    if document["class_name"].endswith("Backbone"):
        return document
    return document["config"]["backbone"]


@pytest.mark.parametrize("model_name,method_name", CASES)
def test_keras_file_round_trip(model_name, method_name, tmp_path):
    case, model = _applied(model_name, method_name)
    expected = case.outputs(model)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    backbone = _backbone_config(_saved_config(path))
    assert backbone["registered_name"].startswith("keras_peft>Peft")
    assert backbone["config"]["keras_peft"]["configs"] == [
        config.to_dict() for config in keras_peft.applied_configs(model)
    ]

    # safe_mode=True is load_model's default: nothing runs code on load.
    loaded = keras.models.load_model(path)
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(loaded), expected)
    assert keras_peft.applied_configs(loaded) == keras_peft.applied_configs(
        model
    )
    assert [v.trainable for v in loaded.weights] == [
        v.trainable for v in model.weights
    ]
    assert type(case.backbone(loaded)) is type(case.backbone(model))
    assert keras.saving.get_registered_name(type(loaded)) == (
        keras.saving.get_registered_name(type(model))
    )


def test_fit_continues_after_loading(tmp_path):
    case, model = _applied("bert_classifier", "lora")
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    helpers.compile(
        loaded, optimizer=keras.optimizers.Adam(0.05), loss=case.loss
    )
    trainable = {id(v) for v in loaded.trainable_weights}
    before = [np.array(v.numpy()) for v in loaded.weights]
    loaded.fit(case.inputs(), case.labels(), epochs=2, verbose=0)
    for variable, old in zip(loaded.weights, before):
        if id(variable) in trainable:
            assert not np.array_equal(variable.numpy(), old), variable.path
        else:
            # Exact: a frozen weight is never written.
            np.testing.assert_array_equal(variable.numpy(), old)


def test_merged_lora_round_trips_merged(tmp_path):
    case, model = _applied("bert_classifier", "lora")
    unmerged = case.outputs(model)
    keras_peft.merge_lora(model)
    expected = case.outputs(model)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    # Exact: the merged kernels are loaded as they were saved.
    helpers.assert_outputs_equal(case.outputs(loaded), expected)
    lora_layers = [
        layer
        for layer in loaded._flatten_layers()
        if isinstance(layer, keras_peft.layers.LoRADense)
    ]
    assert len(lora_layers) == 4 and all(x.merged for x in lora_layers)
    keras_peft.unmerge_lora(loaded)
    # Close: the update is subtracted from the merged kernel (the kernel
    # before merging is not in the file), rounding differently.
    helpers.assert_outputs_close(case.outputs(loaded), unmerged)


def test_removing_every_method_gives_back_the_keras_hub_class(tmp_path):
    case, model = _applied("bert_classifier", "lora")
    keras_peft.merge_lora(model, unload=True)
    assert type(model.backbone) is keras_hub.models.BertBackbone
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    backbone = _backbone_config(_saved_config(path))
    assert backbone["registered_name"] == "keras_hub>BertBackbone"
    assert "keras_peft" not in backbone["config"]


def test_a_subclass_of_a_keras_hub_backbone_refuses_to_save(tmp_path):
    class MyBert(keras_hub.models.BertBackbone):
        pass

    model = MyBert(**helpers.BERT)
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    path = os.path.join(tmp_path, "model.keras")
    # Keras opens the file before it serializes the model, so what is left
    # at `path` after the error is Keras' (an empty archive).
    with pytest.raises(ValueError, match="save_adapter"):
        model.save(path)
    keras_peft.merge_lora(model, unload=True)
    assert type(model) is MyBert


def _with_edited_record(path, edit):
    """A copy of the `.keras` file at `path` whose keras-peft record
    `edit(record)` changed; returns the copy's path."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    document = json.loads(files["config.json"])
    edit(document["config"]["keras_peft"])
    files["config.json"] = json.dumps(document).encode()
    edited = os.path.join(os.path.dirname(path), "edited.keras")
    with zipfile.ZipFile(edited, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return edited


@pytest.mark.parametrize(
    "edit",
    [
        lambda record: record.pop("configs"),
        lambda record: record.update(configs=[]),
        lambda record: record.update(merged_lora=["0"]),
    ],
    ids=["no configs", "empty configs", "bad merged index"],
)
def test_corrupted_record_is_refused(edit, tmp_path):
    _, model = _applied("bert_backbone", "lora")
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    edited = _with_edited_record(path, edit)
    with pytest.raises(ValueError, match="record is corrupted"):
        keras.models.load_model(edited)


def test_record_of_another_version_is_refused(tmp_path):
    _, model = _applied("bert_backbone", "lora")
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    edited = _with_edited_record(
        path, lambda record: record.update(format_version=99)
    )
    with pytest.raises(
        ValueError, match="not a keras-peft record of version 1 or 2 or 3"
    ):
        keras.models.load_model(edited)


def test_a_version_2_record_loads_one_named_adapter_and_refuses_several(
    tmp_path,
):
    """Version 2 kept each adapter's slots in variables of their own: one
    named adapter (no further slots) still loads, several are refused
    with a way out."""
    case = helpers.MODEL_CASES["bert_backbone"]
    config = helpers.METHOD_CASES["lora"].config(case)
    model = case.build()
    keras_peft.apply(model, config, name="sst2")
    helpers.randomize_trainable(model, scale=0.3)
    expected = case.outputs(model)
    path = os.path.join(tmp_path, "one.keras")
    model.save(path)
    assert _saved_config(path)["config"]["keras_peft"]["format_version"] == 3
    edited = _with_edited_record(
        path, lambda record: record.update(format_version=2)
    )
    restored = keras.models.load_model(edited)
    assert keras_peft.adapter_names(restored) == ("sst2",)
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(restored), expected)

    keras_peft.apply(model, config, name="mnli")
    path = os.path.join(tmp_path, "two.keras")
    model.save(path)
    edited = _with_edited_record(
        path, lambda record: record.update(format_version=2)
    )
    with pytest.raises(ValueError, match="version 2.*banks.*save_adapter"):
        keras.models.load_model(edited)


@pytest.mark.parametrize(
    "loader", [keras_hub.models.BertBackbone, keras_hub.models.Backbone]
)
def test_backbone_preset_round_trip(loader, tmp_path):
    case, backbone = _applied("bert_backbone", "all_methods_and_bitfit")
    expected = case.outputs(backbone)
    preset = os.path.join(tmp_path, "preset")
    backbone.save_to_preset(preset)
    loaded = loader.from_preset(preset)
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(case.outputs(loaded), expected)
    assert keras_peft.applied_configs(loaded) == keras_peft.applied_configs(
        backbone
    )


def _classifier_with_preprocessor():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        f"w{i}" for i in range(helpers.BERT["vocabulary_size"] - 5)
    ]
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=vocabulary),
        sequence_length=8,
    )
    return keras_hub.models.BertTextClassifier(
        helpers.MODEL_CASES["bert_backbone"].build(),
        num_classes=helpers.NUM_CLASSES,
        preprocessor=preprocessor,
    )


@pytest.mark.parametrize(
    "loader",
    [keras_hub.models.BertTextClassifier, keras_hub.models.TextClassifier],
)
def test_task_preset_round_trip(loader, tmp_path):
    """A task preset (`task.json`, tokenizer, both weight files) of an
    applied classifier loads back as the same applied classifier."""
    model = _classifier_with_preprocessor()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    helpers.randomize_trainable(model, scale=0.3)
    sentences = np.array(["w1 w2 w3", "w4 w5 w1 w7"])
    expected = model.predict(sentences, verbose=0)
    preset = os.path.join(tmp_path, "preset")
    model.save_to_preset(preset)
    loaded = loader.from_preset(preset)
    # Exact: the same ops run on the same values.
    outputs = loaded.predict(sentences, verbose=0)
    np.testing.assert_array_equal(outputs, expected)
    assert keras_peft.applied_configs(loaded) == keras_peft.applied_configs(
        model
    )
    assert isinstance(loaded, keras_hub.models.BertTextClassifier)


def test_seq2seq_task_preset_round_trip(tmp_path):
    """A T5Seq2SeqLM preset (SentencePiece tokenizer, backbone and task
    weights) of an applied model loads back applied, through keras-hub's
    generic `Seq2SeqLM.from_preset`."""
    tokenizer = helpers.t5_tokenizer()
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=8, decoder_sequence_length=6
    )
    backbone = keras_hub.models.T5Backbone(
        **dict(helpers.T5, vocabulary_size=tokenizer.vocabulary_size())
    )
    model = keras_hub.models.T5Seq2SeqLM(backbone, preprocessor=preprocessor)
    keras_peft.apply(
        model,
        [
            keras_peft.LoRAConfig(rank=2),
            keras_peft.PrefixTuningConfig(length=2, reparam=False),
        ],
    )
    helpers.randomize_trainable(model, scale=0.3)
    tokens = preprocessor(
        {
            "encoder_text": helpers.t5_sentences(2, 1),
            "decoder_text": helpers.t5_sentences(2, 2),
        }
    )[0]
    expected = keras.ops.convert_to_numpy(model(tokens, training=False))
    preset = os.path.join(tmp_path, "preset")
    model.save_to_preset(preset)
    loaded = keras_hub.models.Seq2SeqLM.from_preset(preset)
    assert isinstance(loaded, keras_hub.models.T5Seq2SeqLM)
    # Exact: the same ops run on the same values.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(tokens, training=False)), expected
    )
    assert keras_peft.applied_configs(loaded) == keras_peft.applied_configs(
        model
    )
