"""`apply`: targets, bias modes, and bad input leaving the model as it was."""

import os
import warnings

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from keras_peft.layers import LoRADense
from tests import helpers

CLASSIFIER = helpers.MODEL_CASES["bert_classifier"]
SEQ2SEQ = helpers.MODEL_CASES["t5_seq2seq"]


def _wrapped_paths(model):
    from keras_peft.core import layer_tree

    return sorted(
        layer.path
        for layer, _ in layer_tree.iter_layers(model)
        if isinstance(layer, LoRADense)
    )


def test_bert_default_targets_are_query_and_value():
    model = CLASSIFIER.build()
    keras_peft.apply(model, keras_peft.LoRAConfig())
    assert _wrapped_paths(model) == [
        f"transformer_layer_{i}/self_attention_layer/{kind}"
        for i in range(2)
        for kind in ("query", "value")
    ]


def test_t5_default_targets_cover_all_three_attention_kinds():
    model = SEQ2SEQ.build()
    keras_peft.apply(model, keras_peft.LoRAConfig())
    paths = _wrapped_paths(model)
    assert len(paths) == 2 * 3 * 2
    for stack, kind in [
        ("encoder", "self_attention"),
        ("decoder", "self_attention"),
        ("decoder", "cross_attention"),
    ]:
        for i in range(2):
            for projector in ("query_projector", "value_projector"):
                assert f"transformer_{stack}_layer_{i}/{kind}/{projector}" in (
                    paths
                )


def test_apply_returns_same_model_and_accepts_a_list():
    model = CLASSIFIER.build()
    configs = [
        keras_peft.LoRAConfig(rank=2, targets=["query"]),
        keras_peft.LoRAConfig(rank=3, targets=["feedforward_output_dense"]),
    ]
    assert keras_peft.apply(model, configs) is model
    assert keras_peft.applied_configs(model) == tuple(configs)
    ffn = model.backbone.transformer_layers[0]._feedforward_output_dense
    assert isinstance(ffn, LoRADense) and ffn.rank == 3


def test_regex_targets_and_a_layer_called_by_the_functional_graph():
    model = CLASSIFIER.build()
    x = CLASSIFIER.inputs()
    before = CLASSIFIER.outputs(model)
    # `pooled_dense` is a node of BertBackbone's functional graph, not an
    # attribute of an inner layer: the graph must call the wrapper.
    keras_peft.apply(
        model,
        keras_peft.LoRAConfig(
            rank=2, targets=[r"transformer_layer_1/.*/key", "pooled_dense"]
        ),
    )
    assert _wrapped_paths(model) == [
        "pooled_dense",
        "transformer_layer_1/self_attention_layer/key",
    ]
    # Exact: untrained updates add 0 through the base layers' own ops.
    helpers.assert_outputs_equal(CLASSIFIER.outputs(model), before)
    wrapper = model.backbone.pooled_dense
    wrapper.lora_b.assign(np.ones(wrapper.lora_b.shape, "float32"))
    after = keras.ops.convert_to_numpy(model(x))
    assert not np.allclose(after, before)


@pytest.mark.parametrize(
    "bias,expected_names",
    [
        ("none", set()),
        ("lora_only", {"bias"}),
        ("all", {"bias", "beta"}),
    ],
)
def test_bias_modes(bias, expected_names):
    model = CLASSIFIER.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2, bias=bias))
    backbone_ids = {id(v) for v in model.backbone.weights}
    base_trainable = [
        v
        for v in model.trainable_weights
        if id(v) in backbone_ids and not v.name.startswith("lora_")
    ]
    assert {v.name for v in base_trainable} == expected_names
    if bias == "lora_only":
        # Query and value biases of 2 layers, each (heads, head_dim).
        assert len(base_trainable) == 4
        assert all(
            "query" in v.path or "value" in v.path for v in base_trainable
        )
    summary = keras_peft.trainable_summary(model)
    base_count = sum(int(np.prod(v.shape)) for v in base_trainable)
    assert dict(summary.groups).get("base", 0) == base_count


def _assert_rejected_unchanged(model, configs, error, message):
    before = helpers.snapshot(model)
    with pytest.raises(error, match=message):
        keras_peft.apply(model, configs)
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_targets_matching_nothing_list_candidates_and_change_nothing():
    model = CLASSIFIER.build()
    _assert_rejected_unchanged(
        model,
        keras_peft.LoRAConfig(targets=["query", "no_such_layer"]),
        ValueError,
        r"(?s)no_such_layer.*Candidate paths:.*self_attention_layer/query",
    )


def test_t5_targets_matching_nothing_is_an_error():
    """keras-hub's own T5 enable_lora silently matches nothing; we raise."""
    model = SEQ2SEQ.build()
    _assert_rejected_unchanged(
        model,
        keras_peft.LoRAConfig(targets=["query"]),
        ValueError,
        r"(?s)\['query'\].*query_projector",
    )


def test_applying_twice_to_a_layer_is_rejected_and_changes_nothing():
    model = CLASSIFIER.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    _assert_rejected_unchanged(
        model,
        keras_peft.LoRAConfig(rank=2, targets=["query"]),
        ValueError,
        "already wrapped",
    )


def test_two_configs_on_one_layer_are_rejected_and_change_nothing():
    model = CLASSIFIER.build()
    _assert_rejected_unchanged(
        model,
        [
            keras_peft.LoRAConfig(rank=2, targets=["value"]),
            keras_peft.LoRAConfig(rank=2, targets=["value"]),
        ],
        ValueError,
        "same layer",
    )
    # Planning released what it built: outputs and activations are as before.
    ffn = model.backbone.transformer_layers[0]._feedforward_intermediate_dense
    assert ffn.activation is not keras.activations.linear


def test_failed_plan_gives_activation_back_to_base_layers():
    model = CLASSIFIER.build()
    before = CLASSIFIER.outputs(model)
    _assert_rejected_unchanged(
        model,
        [
            keras_peft.LoRAConfig(
                rank=2, targets=["feedforward_intermediate_dense"]
            ),
            keras_peft.LoRAConfig(rank=2, targets=["nothing_here"]),
        ],
        ValueError,
        "nothing_here",
    )
    # Exact: the rejected call left the model as it was.
    helpers.assert_outputs_equal(CLASSIFIER.outputs(model), before)


@pytest.mark.parametrize(
    "model_factory",
    [
        lambda: keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
        lambda: keras_hub.models.GPT2Backbone(
            vocabulary_size=10,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=8,
            max_sequence_length=8,
        ),
        lambda: "not a model",
    ],
)
def test_unsupported_model_types(model_factory):
    model = model_factory()
    with pytest.raises(ValueError, match="Unsupported model type"):
        keras_peft.apply(model, keras_peft.LoRAConfig())


def test_non_config_is_a_type_error():
    model = CLASSIFIER.build()
    with pytest.raises(TypeError, match="keras-peft config"):
        keras_peft.apply(model, {"rank": 8})
    with pytest.raises(TypeError, match="non-empty list"):
        keras_peft.apply(model, [])


def test_apply_after_compile_trains_the_new_weights():
    model = CLASSIFIER.build()
    model.compile(optimizer="adam", loss=CLASSIFIER.loss)
    model.fit(CLASSIFIER.inputs(), CLASSIFIER.labels(), verbose=0)
    with pytest.warns(UserWarning, match="keras_peft.apply") as record:
        keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    assert _ours(record).filename == __file__  # the user's line, not ours
    # Keras' optimizer was built for the old trainable weights: `fit` asks
    # for `compile()` up front instead of failing inside the optimizer.
    assert not model.compiled
    with pytest.raises(ValueError, match="compile"):
        model.fit(CLASSIFIER.inputs(), CLASSIFIER.labels(), verbose=0)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=CLASSIFIER.loss)
    frozen = model.backbone.transformer_layers[0]._feedforward_output_dense
    kernel = frozen.kernel.numpy().copy()
    model.fit(CLASSIFIER.inputs(), CLASSIFIER.labels(), epochs=2, verbose=0)
    # Exact: a frozen weight is never written.
    np.testing.assert_array_equal(frozen.kernel.numpy(), kernel)


def test_a_trained_model_changed_by_keras_peft_asks_for_compile_again(
    tmp_path,
):
    """For every call that changes which weights train. A model compiled
    but not trained (keras-hub tasks compile themselves) needs nothing."""
    model = CLASSIFIER.build()
    assert model.compiled  # by keras-hub, with an optimizer not built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_peft.apply(model, keras_peft.PrefixTuningConfig(length=2))
    assert model.compiled
    path = os.path.join(tmp_path, "adapter")
    # With the MLP, so that the loaded model has a prefix to eject.
    keras_peft.save_adapter(model, path, keep_prefix_mlp=True)

    def apply_lora(model):
        keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))

    def load(model):
        keras_peft.load_adapter(model, path)

    for change, name in [(apply_lora, "apply"), (load, "load_adapter")]:
        model = CLASSIFIER.build()
        # As after a `fit`: the optimizer built for the weights training.
        helpers.compile(model, optimizer="adam", loss=CLASSIFIER.loss)
        with pytest.warns(UserWarning, match=f"keras_peft.{name}") as record:
            change(model)
        assert _ours(record).filename == __file__, name
        assert not model.compiled

    helpers.compile(model, optimizer="adam", loss=CLASSIFIER.loss)
    with pytest.warns(UserWarning, match="keras_peft.eject_prefix") as record:
        keras_peft.eject_prefix(model)
    assert _ours(record).filename == __file__
    assert not model.compiled

    model = CLASSIFIER.build()
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=2))
    helpers.compile(model, optimizer="adam", loss=CLASSIFIER.loss)
    with pytest.warns(UserWarning, match="merge_lora.unload=True") as record:
        keras_peft.merge_lora(model, unload=True)
    assert _ours(record).filename == __file__
    assert not model.compiled


def _ours(record):
    """The keras-peft warning among those `pytest.warns` recorded."""
    (warning,) = [w for w in record if "keras_peft." in str(w.message)]
    return warning
