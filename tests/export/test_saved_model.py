"""`keras_peft.export_saved_model`: SavedModels that serve applied models."""

import os
import pickle
import random
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import keras_peft
from tests import helpers
from tests import t5_decoding

# On the classifier: LoRA alone (folded; the model then trains on) and
# every method at once (LoRA folded, the reparametrized prefix ejected,
# prompt tuning's layers in the backbone's functional graph, adapters);
# each other model with LoRA, and T5 with every method. Every method's
# layers are checked in TensorFlow's object graph in
# tests/core/test_tf_tracking.py. A T5 export takes about a minute: tracing
# keras-hub's T5 is slow, and Keras' export traces each endpoint twice.
CASES = [
    ("bert_classifier", "lora"),
    ("bert_classifier", "all_methods_and_bitfit"),
    ("bert_masked_lm", "lora"),
    ("bert_backbone", "lora"),
    ("t5_seq2seq", "all_methods"),
]

# What merging folds away: no exported variable may come from it.
FOLDED = ("lora_a", "lora_b", "prefix_reparametrization")


def _applied(model_name, method_name, seed=0):
    case = helpers.MODEL_CASES[model_name]
    model = case.build()
    keras_peft.apply(model, helpers.METHOD_CASES[method_name].config(case))
    # Off their initial values (LoRA's B starts at 0), so that the export
    # proves they travel.
    helpers.randomize_trainable(model, seed=seed, scale=0.3)
    return case, model


def _tensors(inputs):
    return {name: tf.constant(value) for name, value in inputs.items()}


def _numpy(outputs):
    return keras.tree.map_structure(np.asarray, outputs)


def _generate_inputs(case, length=6):
    """Encoder inputs and a one-token decoder prompt padded to `length`."""
    inputs = dict(case.inputs())
    batch = inputs["encoder_token_ids"].shape[0]
    prompt = np.zeros((batch, length), "int32")
    mask = np.zeros((batch, length), "int32")
    mask[:, 0] = 1
    inputs["decoder_token_ids"] = prompt
    inputs["decoder_padding_mask"] = mask
    return inputs


def _variable_names(loaded):
    return [variable.name for variable in loaded.variables]


@pytest.mark.parametrize("model_name,method_name", CASES)
def test_serve_reproduces_the_model(model_name, method_name, tmp_path):
    case, model = _applied(model_name, method_name)
    before = helpers.snapshot(model)
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(model, directory)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))

    loaded = tf.saved_model.load(directory)
    expected = case.outputs(model)
    # Folding LoRA into the kernels rounds differently than adding its
    # update: a float tolerance.
    helpers.assert_outputs_close(
        _numpy(loaded.serve(_tensors(case.inputs()))), expected, atol=1e-5
    )
    assert "serving_default" in loaded.signatures
    names = _variable_names(loaded)
    assert not [n for n in names if any(part in n for part in FOLDED)]
    if (model_name, method_name) == ("bert_classifier", "lora"):
        # One fit is enough (a fit traces a train function): the export
        # never changes the model the same way for every method.
        _assert_trains(case, model)
    if model_name == "t5_seq2seq":
        inputs = _generate_inputs(case)
        # Traced, as users run it: the one traced `generate` with every
        # method (the other decoding tests run it eagerly).
        model.compile(sampler="greedy")
        expected = model.generate(inputs, stop_token_ids=None)
        generated = loaded.generate(_tensors(inputs))
        np.testing.assert_array_equal(
            generated["decoder_token_ids"].numpy(),
            expected["decoder_token_ids"],
        )
        # Not a degenerate case: the random adapters make varied tokens.
        assert len(np.unique(expected["decoder_token_ids"][:, 1:])) > 1
        # And the traced cached decoding chose what the full pass does.
        t5_decoding.assert_greedy_of_full_pass(
            model, inputs, np.asarray(expected["decoder_token_ids"])
        )
        _check_in_a_fresh_process(
            tmp_path, directory, case.inputs(), case.outputs(model), inputs
        )
        np.testing.assert_array_equal(
            np.load(os.path.join(tmp_path, "generated.npy")),
            expected["decoder_token_ids"],
        )


def _assert_trains(case, model):
    """The exported model still trains: every trainable weight moves."""
    trainable = [np.array(v.numpy()) for v in model.trainable_weights]
    helpers.compile(
        model, optimizer=keras.optimizers.Adam(0.01), loss=case.loss
    )
    model.fit(case.inputs(), case.labels(), epochs=1, verbose=0)
    for before, after in zip(trainable, model.trainable_weights):
        assert not np.array_equal(before, after.numpy()), after.path


def test_merge_false_exports_the_adapters_unfolded(tmp_path):
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(
        model,
        [
            keras_peft.LoRAConfig(rank=2),
            keras_peft.PrefixTuningConfig(length=2, reparam_hidden=4),
        ],
    )
    helpers.randomize_trainable(model, scale=0.3)
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(model, directory, merge=False)
    loaded = tf.saved_model.load(directory)
    names = _variable_names(loaded)
    for part in FOLDED:
        assert [n for n in names if part in n], part
    # The same ops as the model's on the same values.
    helpers.assert_outputs_close(
        _numpy(loaded.serve(_tensors(case.inputs()))),
        model.predict(case.inputs(), verbose=0),
        atol=1e-6,
    )


def _variable_shapes(directory):
    loaded = tf.saved_model.load(directory)
    return sorted(tuple(v.shape) for v in loaded.variables)


def _variables_bytes(directory):
    folder = os.path.join(directory, "variables")
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for name in os.listdir(folder)
    )


def test_merged_lora_export_is_the_size_of_the_base_export(tmp_path):
    case = helpers.MODEL_CASES["bert_classifier"]
    base_directory = os.path.join(tmp_path, "base")
    keras_peft.export_saved_model(case.build(), base_directory)
    _, model = _applied("bert_classifier", "lora")
    merged_directory = os.path.join(tmp_path, "merged")
    keras_peft.export_saved_model(model, merged_directory)
    unmerged_directory = os.path.join(tmp_path, "unmerged")
    keras_peft.export_saved_model(model, unmerged_directory, merge=False)

    base = _variable_shapes(base_directory)
    assert _variable_shapes(merged_directory) == base
    assert len(_variable_shapes(unmerged_directory)) > len(base)
    # The same tensors; only the checkpoint's object names may differ.
    assert _variables_bytes(merged_directory) == pytest.approx(
        _variables_bytes(base_directory), rel=0.01
    )


def _stored_values(directory):
    """The number of values the SavedModel's checkpoint holds."""
    reader = tf.train.load_checkpoint(
        os.path.join(directory, "variables", "variables")
    )
    return sum(
        int(np.prod(shape))
        for key, shape in reader.get_variable_to_shape_map().items()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    )


@pytest.mark.parametrize("served", ["model", "multi_task"])
def test_the_saved_model_stores_each_variable_once(served, tmp_path):
    """Keras' export alone stores every variable twice, and a server
    loads both (keras-team/keras#23553): the SavedModel holds the model's
    values once, and serves them."""
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    for name in ("a", "b"):
        keras_peft.apply(model, keras_peft.LoRAConfig(rank=2), name=name)
    helpers.randomize_trainable(model, scale=0.3)
    inputs = case.inputs()
    exported = model
    if served == "multi_task":
        exported = keras_peft.multi_task(model, ["a", "b"])
        batch = len(inputs["token_ids"])
        inputs = {**inputs, "task_ids": np.arange(batch, dtype="int32") % 2}
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(exported, directory, merge=False)
    assert _stored_values(directory) == sum(
        int(np.prod(v.shape)) for v in model.variables
    )
    loaded = tf.saved_model.load(directory)
    # The same ops as the model's on the same values.
    helpers.assert_outputs_close(
        _numpy(loaded.serve(_tensors(inputs))),
        exported.predict(inputs, verbose=0),
        atol=1e-6,
    )


def test_replaces_an_earlier_export_and_refuses_other_directories(tmp_path):
    case = helpers.MODEL_CASES["bert_classifier"]
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(case.build(), directory)
    model = case.build()
    helpers.randomize_trainable(model, scale=0.3)  # a different model
    keras_peft.export_saved_model(model, directory)
    loaded = tf.saved_model.load(directory)
    helpers.assert_outputs_close(
        _numpy(loaded.serve(_tensors(case.inputs()))),
        model.predict(case.inputs(), verbose=0),
        atol=1e-5,
    )
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no leftovers

    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a SavedModel"):
        keras_peft.export_saved_model(model, str(other))
    assert os.listdir(other) == ["todo.txt"]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(merge="yes"), TypeError, "merge must be True or False"),
        (dict(include_preprocessor=1), TypeError, "include_preprocessor"),
        (dict(directory=""), ValueError, "non-empty path"),
        (dict(directory=3), TypeError, "str or path, got int"),
        (dict(directory="gs://bucket/sst2/1"), ValueError, "local path"),
        (dict(directory="file"), ValueError, "not a SavedModel"),
        (dict(directory="file/1"), ValueError, "is a file"),
        (dict(include_preprocessor=True), ValueError, "has none"),
    ],
)
def test_bad_arguments_raise_before_writing(kwargs, error, match, tmp_path):
    _, model = _applied("bert_classifier", "lora")
    before = helpers.snapshot(model)
    (tmp_path / "file").write_text("not a model")
    arguments = dict(directory=os.path.join(tmp_path, "export"))
    arguments.update(kwargs)
    if isinstance(arguments["directory"], str) and arguments[
        "directory"
    ].startswith("file"):
        arguments["directory"] = os.path.join(tmp_path, arguments["directory"])
    with pytest.raises(error, match=match):
        keras_peft.export_saved_model(model, **arguments)
    assert os.listdir(tmp_path) == ["file"]
    assert (tmp_path / "file").read_text() == "not a model"
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_a_model_not_from_keras_hub_is_refused(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(TypeError, match="keras-hub backbone or task"):
        keras_peft.export_saved_model(model, os.path.join(tmp_path, "x"))
    assert os.listdir(tmp_path) == []


def test_merged_lora_and_mixed_precision_export(tmp_path):
    case, merged = _applied("bert_classifier", "lora")
    keras_peft.merge_lora(merged)  # merged already: nothing more to fold
    directory = os.path.join(tmp_path, "merged")
    keras_peft.export_saved_model(merged, directory)
    loaded = tf.saved_model.load(directory)
    names = _variable_names(loaded)
    assert not [n for n in names if any(part in n for part in FOLDED)]
    helpers.assert_outputs_close(
        _numpy(loaded.serve(_tensors(case.inputs()))),
        merged.predict(case.inputs(), verbose=0),
        atol=1e-5,
    )

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = case.make()
    finally:
        keras.config.set_dtype_policy("float32")
    model.set_weights(
        helpers.MODEL_CASES["bert_classifier"].build().get_weights()
    )
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    helpers.randomize_trainable(model, scale=0.3)
    directory = os.path.join(tmp_path, "bfloat16")
    keras_peft.export_saved_model(model, directory)
    loaded = tf.saved_model.load(directory)
    served = _numpy(loaded.serve(_tensors(case.inputs())))
    expected = model.predict(case.inputs(), verbose=0)
    assert served.dtype == expected.dtype  # the model's output dtype
    # bfloat16 keeps 8 bits of mantissa: the merged kernel and the
    # unmerged update round differently by about 1e-2 of the logits.
    helpers.assert_outputs_close(
        served.astype("float32"), expected.astype("float32"), atol=5e-2
    )


def test_a_masked_lm_preprocessor_is_refused(tmp_path):
    preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
        helpers.bert_tokenizer(), sequence_length=8
    )
    model = keras_hub.models.BertMaskedLM(
        keras_hub.models.BertBackbone(**helpers.BERT),
        preprocessor=preprocessor,
    )
    with pytest.raises(ValueError, match="masks at random"):
        keras_peft.export_saved_model(
            model, os.path.join(tmp_path, "export"), include_preprocessor=True
        )
    assert os.listdir(tmp_path) == []


def test_another_backend_is_refused(monkeypatch, tmp_path):
    _, model = _applied("bert_classifier", "lora")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="TensorFlow backend"):
        keras_peft.export_saved_model(model, os.path.join(tmp_path, "x"))


def test_an_unsaveable_subclass_exports_unmerged(tmp_path):
    class MyBert(keras_hub.models.BertBackbone):
        pass

    model = MyBert(**helpers.BERT)
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    helpers.randomize_trainable(model, scale=0.3)
    directory = os.path.join(tmp_path, "export")
    with pytest.raises(ValueError, match="merge=False"):
        keras_peft.export_saved_model(model, directory)
    assert not os.path.exists(directory)
    keras_peft.export_saved_model(model, directory, merge=False)
    loaded = tf.saved_model.load(directory)
    inputs = helpers.bert_inputs()
    helpers.assert_outputs_close(
        _numpy(loaded.serve(_tensors(inputs))),
        model.predict(inputs, verbose=0),
        atol=1e-6,
    )


# Raw strings in: the tokenizer runs inside the SavedModel.


def _bert_classifier_with_preprocessor():
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        helpers.bert_tokenizer(), sequence_length=12
    )
    backbone = helpers.MODEL_CASES["bert_backbone"].build()
    model = keras_hub.models.BertTextClassifier(
        backbone, num_classes=helpers.NUM_CLASSES, preprocessor=preprocessor
    )
    keras_peft.apply(
        model,
        [
            keras_peft.LoRAConfig(rank=2),
            keras_peft.PromptTuningConfig(length=2, init="random"),
        ],
    )
    helpers.randomize_trainable(model, seed=1, scale=0.3)
    return model


def _t5_with_preprocessor():
    tokenizer = helpers.t5_tokenizer()
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=8, decoder_sequence_length=7
    )
    # Keras initializers without a seed draw theirs from `random`: fixed
    # weights, whose greedy outputs are not all empty.
    state = random.getstate()
    random.seed(helpers.BASE_SEED)
    backbone = keras_hub.models.T5Backbone(
        **dict(helpers.T5, vocabulary_size=tokenizer.vocabulary_size())
    )
    random.setstate(state)
    model = keras_hub.models.T5Seq2SeqLM(backbone, preprocessor=preprocessor)
    # The methods' own export paths are checked on token ids above.
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    helpers.randomize_trainable(model, seed=2, scale=1.0)
    return model


BERT_TEXTS = ["the good movie", "a bad bad plot", "fun", "awful film end"]


def test_a_classifier_serves_raw_strings(tmp_path):
    model = _bert_classifier_with_preprocessor()
    expected = model.predict(BERT_TEXTS, verbose=0)  # builds the preprocessor
    before = helpers.snapshot(model)
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(model, directory, include_preprocessor=True)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    loaded = tf.saved_model.load(directory)
    served = loaded.serve(tf.constant(BERT_TEXTS)).numpy()
    helpers.assert_outputs_close(served, expected, atol=1e-5)
    # The tokenizer's ops are TensorFlow Text's: the one import it needs.
    _check_in_a_fresh_process(
        tmp_path, directory, BERT_TEXTS, expected, imports="tensorflow_text"
    )


def test_a_seq2seq_model_serves_and_generates_raw_strings(tmp_path):
    model = _t5_with_preprocessor()
    model.preprocessor.build(None)
    before = helpers.snapshot(model)
    attributes = dict(vars(model))
    directory = os.path.join(tmp_path, "export")
    # merge=False: the export traces the caller's own model, whose sampler
    # and decoder step it patches while tracing.
    keras_peft.export_saved_model(
        model, directory, merge=False, include_preprocessor=True
    )
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    for name in ("sampler", "call_decoder_with_cache"):
        assert vars(model).get(name) is attributes.get(name), name
    loaded = tf.saved_model.load(directory)

    sources = helpers.t5_sentences(3, 1)
    text = {"encoder_text": sources, "decoder_text": helpers.t5_sentences(3, 2)}
    tokens = model.preprocessor(
        {name: tf.constant(value) for name, value in text.items()}
    )[0]
    expected = keras.ops.convert_to_numpy(model(tokens, training=False))
    served = loaded.serve(_tensors(text)).numpy()
    helpers.assert_outputs_close(served, expected, atol=1e-5)

    # Eagerly: the same code the export traced, without a second trace.
    model.compile(sampler="greedy", run_eagerly=True)
    expected = model.generate(sources)
    generated = loaded.generate(tf.constant(sources)).numpy()
    assert [g.decode() for g in generated] == expected
    assert any(expected)


# Loading needs TensorFlow only.

_FRESH_PROCESS = """
import pickle, sys
import numpy as np
import tensorflow as tf
{imports}
# `import tensorflow` itself imports parts of keras; loading must add none.
imported = set(sys.modules)
with open(sys.argv[1], "rb") as f:
    directory, inputs, generate_inputs = pickle.load(f)
loaded = tf.saved_model.load(directory)
convert = lambda x: tf.nest.map_structure(tf.constant, x)
outputs = tf.nest.map_structure(np.asarray, loaded.serve(convert(inputs)))
generated = None
if generate_inputs is not None:
    generated = loaded.generate(convert(generate_inputs))
    generated = np.asarray(generated["decoder_token_ids"])
modules = sorted(
    m
    for m in set(sys.modules) - imported
    if m.split(".")[0] in ("keras", "keras_hub", "keras_peft")
)
modules += [m for m in ("keras_hub", "keras_peft") if m in sys.modules]
with open(sys.argv[2], "wb") as f:
    pickle.dump((outputs, generated, modules), f)
"""


def _check_in_a_fresh_process(
    tmp_path, directory, inputs, expected, generate_inputs=None, imports=""
):
    """Loads the SavedModel at `directory` in a new Python process that
    imports TensorFlow (and `imports`) only, and checks its `serve` outputs;
    leaves what `generate` made in `tmp_path/generated.npy`."""
    request = os.path.join(tmp_path, "request.pickle")
    answer = os.path.join(tmp_path, "answer.pickle")
    with open(request, "wb") as f:
        pickle.dump((directory, inputs, generate_inputs), f)
    script = os.path.join(tmp_path, "load.py")
    with open(script, "w") as f:
        f.write(
            _FRESH_PROCESS.format(
                imports=f"import {imports}" if imports else ""
            )
        )
    result = subprocess.run(
        [sys.executable, script, request, answer],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(answer, "rb") as f:
        outputs, generated, modules = pickle.load(f)
    assert modules == []
    helpers.assert_outputs_close(outputs, expected, atol=1e-5)
    if generated is not None:
        np.save(os.path.join(tmp_path, "generated.npy"), generated)
