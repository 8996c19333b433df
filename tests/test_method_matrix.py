"""The same behavioural checks for every (model x method) pair."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

import keras_peft
from tests import helpers


def _applied(model_case, method_case):
    model = model_case.build()
    keras_peft.apply(model, method_case.config(model_case))
    return model


# Every method on every model, but on the T5 task (seconds to build, twice
# per round trip) only LoRA and every method at once: the task nests the
# same backbone as `t5_backbone`, whose checks cover each method, and adds
# only the tied-embedding LM head. On JAX and torch (where each new op
# shape compiles or dispatches slowly in eager calls) the BERT backbone and
# masked LM likewise get only LoRA and every method at once (with BitFit):
# the classifier nests the same backbone and checks each method.
_EACH_METHOD = (
    ("bert_classifier", "bert_backbone", "bert_masked_lm", "t5_backbone")
    if keras.backend.backend() == "tensorflow"
    else ("bert_classifier", "t5_backbone")
)
PAIRS = [
    (model, method)
    for model, method in helpers.model_method_pairs()
    if model in _EACH_METHOD
    or method in ("lora", "all_methods", "all_methods_and_bitfit")
]


@pytest.mark.parametrize("model_name,method_name", PAIRS)
def test_apply_counts_and_round_trip(model_name, method_name, tmp_path):
    """`apply` keeps the outputs where the method starts at zero and never
    changes an output shape; the new weights number what the method's
    formula says; the adapter file round-trips. One built model serves
    every check of a pair (a T5 model takes seconds to build)."""
    model_case = helpers.MODEL_CASES[model_name]
    method_case = helpers.METHOD_CASES[method_name]
    model = model_case.build()
    before = model_case.outputs(model)
    keras_peft.apply(model, method_case.config(model_case))
    after = model_case.outputs(model)
    _assert_start_outputs(model_case, method_case, after, before)
    _assert_counts(model_case, method_case, model)
    _assert_round_trip(model_case, model, tmp_path)


def _assert_counts(model_case, method_case, model):
    expected_adapter = method_case.count(model_case, model)
    expected = expected_adapter + helpers.head_parameters(model, model_case)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert trainable == expected
    summary = keras_peft.trainable_summary(model)
    assert summary.trainable == expected
    assert summary.total == sum(int(np.prod(v.shape)) for v in model.weights)
    groups = dict(summary.groups)
    assert all(groups[method] > 0 for method in method_case.methods)
    assert sum(groups[m] for m in method_case.methods) == expected_adapter
    assert summary.fraction == pytest.approx(expected / summary.total)
    assert all(method in str(summary) for method in method_case.methods)


def _assert_start_outputs(model_case, method_case, after, before):
    if method_case.starts_at_zero:
        # Exact: the update adds 0 through the base layers' own ops.
        helpers.assert_outputs_equal(after, before)
        return
    shapes = keras.tree.map_structure(np.shape, after)
    expected = keras.tree.map_structure(np.shape, before)
    prompted_t5 = (
        model_case.name == "t5_backbone"
        and "prompt_tuning" in method_case.methods
    )
    if prompted_t5:
        # T5's encoder output spans the prompt too: the decoder attends to it.
        batch, length, width = expected["encoder_sequence_output"]
        expected["encoder_sequence_output"] = (
            batch,
            length + helpers.PROMPT_LENGTH,
            width,
        )
    assert shapes == expected
    if prompted_t5:
        after = after["decoder_sequence_output"]
        before = before["decoder_sequence_output"]
    differs = keras.tree.map_structure(
        lambda x, y: not np.array_equal(x, y), after, before
    )
    assert any(keras.tree.flatten(differs))


# Each task once (a backbone has no loss to fit), and each architecture with
# and without XLA. Without XLA every method alone, on the classifier and on
# T5. Under XLA the methods all at once, on the masked LM (its head, a
# gather at the mask positions and the tied embedding, is the one fitted
# under XLA) and on T5: one model runs every method's code, the check on
# each new variable is the same, and each compile costs seconds to tens of
# seconds. On T5 without XLA, methods that only repeat others' code paths
# are left out: the direct prefix (the reparametrized one's attention), the
# sequential adapter (the parallel adapter's site hosts), MAM and the
# prefix + LoRA union (prefix and adapters or LoRA, each on layers of its
# own), and LoRA inside a parallel adapter's host (fitted on BERT, and on
# T5 under XLA in the union of all).
_UNIONS_OF_ALL = ("all_methods", "all_methods_and_bitfit")
_T5_REPEATS = (
    "prefix_tuning_direct",
    "adapter",
    "lora_and_parallel_adapter_ffn",
    "mam",
    "prefix_and_lora_ffn",
)


def _fit_cases():
    # TensorFlow runs tf.function graphs without or with XLA; JAX compiles
    # with XLA ("auto"), and torch runs eagerly ("auto"): there, every case
    # runs the way users train on that backend.
    tensorflow = keras.backend.backend() == "tensorflow"
    eager, xla = (False, True) if tensorflow else ("auto", "auto")
    cases = []
    for method, method_case in sorted(helpers.METHOD_CASES.items()):
        if method in _UNIONS_OF_ALL:
            continue
        cases.append(("bert_classifier", eager, method))
        if "t5" in method_case.architectures and method not in _T5_REPEATS:
            cases.append(("t5_seq2seq", eager, method))
    cases.append(("bert_masked_lm", xla, "all_methods_and_bitfit"))
    cases.append(("t5_seq2seq", xla, "all_methods"))
    return cases


FIT_CASES = _fit_cases()


@pytest.mark.parametrize("model_name,jit_compile,method_name", FIT_CASES)
def test_fit_trains_only_new_weights(model_name, jit_compile, method_name):
    method_case = helpers.METHOD_CASES[method_name]
    model_case = helpers.MODEL_CASES[model_name]
    model = _applied(model_case, method_case)
    helpers.compile(
        model,
        optimizer=keras.optimizers.Adam(0.05),
        loss=model_case.loss,
        jit_compile=jit_compile,
    )
    if jit_compile is True:
        # Keras falls back to no XLA, with a warning only, when a layer
        # does not support it.
        assert model.jit_compile is True
    unused = set()
    if model_name == "bert_masked_lm":
        # The masked LM never reads the pooler: no gradient reaches its
        # bias, which BitFit makes trainable with every other bias.
        backbone = model_case.backbone(model)
        unused = {id(v) for v in backbone.get_layer("pooled_dense").weights}
    traces = _count_traces(model)
    helpers.fit_and_check(model, model_case, unused)
    if keras.backend.backend() != "torch":  # torch runs `train_step` eagerly
        # Traced (and compiled) once for all 3 epochs: no method makes the
        # step retrace, which on a TPU would recompile it every step.
        assert len(traces) == 1


def _count_traces(model):
    """A list that grows by one each time `model.train_step`'s Python body
    runs: once per trace where the step is traced."""
    traces = []
    train_step = model.train_step

    def counted(*args, **kwargs):
        traces.append(1)
        return train_step(*args, **kwargs)

    model.train_step = counted
    return traces


def _assert_computed_prefix_round_trip(model_case, model, expected, tmp_path):
    """By default a prefix trained through its MLP is saved as the prefix
    the MLP computes, which loads as a directly trained prefix: the same
    outputs from the file of the prefix-tuning paper."""
    summary = keras_peft.trainable_summary(model)
    if not summary.prefix_mlp:
        assert summary.saved == summary.trainable
        return
    assert "save_adapter stores the prefix the MLP computes" in str(summary)
    path = os.path.join(tmp_path, "computed")
    keras_peft.save_adapter(model, path)
    with open(os.path.join(path, "adapter_config.json")) as f:
        document = json.load(f)
    assert document["prefix"] == "computed"
    size = os.path.getsize(os.path.join(path, "adapter_weights.safetensors"))
    variables = len(document["variables"])
    assert 4 * summary.saved <= size <= 4 * summary.saved + 400 * variables
    assert summary.saved < summary.trainable

    fresh = model_case.build()
    keras_peft.load_adapter(fresh, path)
    assert not keras_peft.trainable_summary(fresh).prefix_mlp
    assert keras_peft.trainable_summary(fresh).trainable == summary.saved
    assert keras_peft.applied_configs(fresh) == tuple(
        dataclasses.replace(c, reparam=False, reparam_hidden=512)
        if c.method == "prefix_tuning"
        else c
        for c in keras_peft.applied_configs(model)
    )
    # Close, not exact: the MLP computes the prefix inside the traced
    # forward pass of `model`, but eagerly when saved.
    helpers.assert_outputs_close(model_case.outputs(fresh), expected, atol=1e-5)


def _assert_round_trip(model_case, model, tmp_path):
    """Save, then load into a fresh model; then load again into that model,
    which already carries the adapter (one backbone, many tasks: loading
    replaces the adapter's values)."""
    # Move every trainable weight off its initial value so the round trip
    # proves the values travel.
    rng = np.random.default_rng(1)
    for variable in model.trainable_weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    expected = model_case.outputs(model)
    _assert_computed_prefix_round_trip(model_case, model, expected, tmp_path)
    # With a prefix MLP kept, the bundle holds exactly the trainable
    # variables, and the loaded model is the same model.
    path = os.path.join(tmp_path, "adapter")
    keras_peft.save_adapter(model, path, keep_prefix_mlp=True)

    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    size = os.path.getsize(os.path.join(path, "adapter_weights.safetensors"))
    # float32 values plus a small per-array header.
    assert (
        4 * trainable
        <= size
        <= 4 * trainable + 400 * len(model.trainable_weights)
    )
    assert size < 4 * total  # smaller than the model's float32 weights

    fresh = model_case.build()
    keras_peft.load_adapter(fresh, path)
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(model_case.outputs(fresh), expected)
    assert keras_peft.applied_configs(fresh) == keras_peft.applied_configs(
        model
    )
    assert [v.trainable for v in fresh.weights] == [
        v.trainable for v in model.weights
    ]

    for variable in fresh.trainable_weights:
        variable.assign(np.full(variable.shape, -0.02, "float32"))
    variables = [id(v) for v in fresh.variables]
    keras_peft.load_adapter(fresh, path)
    assert [id(v) for v in fresh.variables] == variables
    # Exact: the same ops run on the same values.
    helpers.assert_outputs_equal(model_case.outputs(fresh), expected)
