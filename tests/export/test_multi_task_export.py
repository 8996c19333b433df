"""One SavedModel serving every task of a `keras_peft.multi_task` model."""

import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import keras_peft
from tests import helpers
from tests.test_multi_task import KEPT_TASKS
from tests.test_multi_task import MIXED_PROMPT_TASKS
from tests.test_multi_task import PREFIX_TASKS
from tests.test_multi_task import TASK_IDS
from tests.test_multi_task import _server


@pytest.mark.parametrize(
    "tasks",
    [
        None,
        PREFIX_TASKS["bert_classifier"],
        MIXED_PROMPT_TASKS,
        KEPT_TASKS["bert_classifier"],
    ],
)
def test_a_multi_task_model_serves_every_task(tmp_path, tasks):
    case, model, server, _ = _server("bert_classifier", tasks)
    inputs = {**case.inputs(), "task_ids": TASK_IDS}
    expected = keras.ops.convert_to_numpy(server(inputs))
    before = helpers.snapshot(model)
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(server, directory)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    loaded = tf.saved_model.load(directory)
    served = loaded.serve(
        {name: tf.constant(value) for name, value in inputs.items()}
    )
    # A traced graph against eager calls: float tolerance.
    helpers.assert_outputs_close(served.numpy(), expected, atol=1e-5)
    # Ids out of range are clipped, as in any compiled function: 9 acts
    # as the last task and -1 as task 0, the tasks of TASK_IDS' rows.
    assert list(TASK_IDS) == [2, 0, 1, 2]
    clipped = loaded.serve(
        {
            **{k: tf.constant(v) for k, v in case.inputs().items()},
            "task_ids": tf.constant([9, -1, 1, 2]),
        }
    ).numpy()
    helpers.assert_outputs_close(clipped, expected, atol=1e-5)


def test_a_multi_task_classifier_serves_raw_strings(tmp_path):
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        helpers.bert_tokenizer(), sequence_length=12
    )
    model = keras_hub.models.BertTextClassifier(
        helpers.MODEL_CASES["bert_backbone"].build(),
        num_classes=helpers.NUM_CLASSES,
        preprocessor=preprocessor,
    )
    for name in ("a", "b"):
        keras_peft.apply(model, keras_peft.LoRAConfig(rank=2), name=name)
    helpers.randomize_trainable(model, seed=1, scale=0.3)
    texts = list(helpers.BERT_WORDS[:3]) + ["the film"]
    ids = np.array([1, 0, 1, 0], "int32")
    server = keras_peft.multi_task(model, ["a", "b"])
    tokens = preprocessor(tf.constant(texts))
    expected = keras.ops.convert_to_numpy(server({**tokens, "task_ids": ids}))
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(server, directory, include_preprocessor=True)
    loaded = tf.saved_model.load(directory)
    served = loaded.serve(
        {"text": tf.constant(texts), "task_ids": tf.constant(ids)}
    ).numpy()
    helpers.assert_outputs_close(served, expected, atol=1e-5)


def test_a_model_with_several_adapters_exports_the_active_one_folded(
    tmp_path,
):
    case, model, _, expected = _server("bert_classifier")
    names = list(expected)
    keras_peft.set_active(model, names[1])
    before = helpers.snapshot(model)
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(model, directory)
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))
    loaded = tf.saved_model.load(directory)
    assert not any("lora" in v.name for v in loaded.variables)
    served = loaded.serve(
        {k: tf.constant(v) for k, v in case.inputs().items()}
    ).numpy()
    helpers.assert_outputs_close(served, expected[names[1]], atol=1e-5)


def test_the_active_adapter_exports_when_another_holds_the_lora(tmp_path):
    from tests.test_named_adapters import SWITCHABLE
    from tests.test_named_adapters import _named_model
    from tests.test_named_adapters import _outputs_by_name

    case = helpers.MODEL_CASES["bert_classifier"]
    model = _named_model(
        case, [("a", SWITCHABLE["lora"]()), ("b", SWITCHABLE["adapters"]())]
    )
    expected = _outputs_by_name(model, case)["b"]
    directory = os.path.join(tmp_path, "export")
    keras_peft.export_saved_model(model, directory)
    loaded = tf.saved_model.load(directory)
    assert not any("lora" in v.name for v in loaded.variables)
    served = loaded.serve(
        {k: tf.constant(v) for k, v in case.inputs().items()}
    ).numpy()
    helpers.assert_outputs_close(served, expected, atol=1e-5)


def test_prefix_mlps_export_one_adapter_or_every_task(tmp_path):
    """Adapters whose prefixes share one MLP layer: the active one exports
    alone (folded or not), and a multi-task model serves all of them."""
    from tests.test_multi_task import PREFIX_MLP_TASKS

    case, model, server, expected = _server("bert_classifier", PREFIX_MLP_TASKS)
    names = server.task_names
    inputs = {k: tf.constant(v) for k, v in case.inputs().items()}
    for index, merge in ((0, False), (2, True)):
        keras_peft.set_active(model, names[index])
        directory = os.path.join(tmp_path, f"export_{index}")
        keras_peft.export_saved_model(model, directory, merge=merge)
        loaded = tf.saved_model.load(directory)
        helpers.assert_outputs_close(
            loaded.serve(inputs).numpy(), expected[names[index]], atol=1e-5
        )
    directory = os.path.join(tmp_path, "server")
    keras_peft.export_saved_model(server, directory)
    loaded = tf.saved_model.load(directory)
    served = loaded.serve({**inputs, "task_ids": tf.constant(TASK_IDS)})
    for row, task in enumerate(TASK_IDS):
        helpers.assert_outputs_close(
            served.numpy()[row], expected[names[task]][row], atol=1e-5
        )


def test_adapters_keeping_base_variables_export_alone_or_together(tmp_path):
    """The active adapter's own copies of base variables (BitFit's biases,
    Houlsby's layer norms) go back into the base variables of the folded
    copy: its SavedModel holds no copies and serves that adapter."""
    case, model, server, expected = _server(
        "bert_classifier", KEPT_TASKS["bert_classifier"]
    )
    names = server.task_names
    inputs = {k: tf.constant(v) for k, v in case.inputs().items()}
    for index in (0, 2):
        keras_peft.set_active(model, names[index])
        before = helpers.snapshot(model)
        directory = os.path.join(tmp_path, f"export_{index}")
        keras_peft.export_saved_model(model, directory)
        helpers.assert_snapshot_equal(before, helpers.snapshot(model))
        loaded = tf.saved_model.load(directory)
        assert not any("kept_" in v.name for v in loaded.variables)
        helpers.assert_outputs_close(
            loaded.serve(inputs).numpy(), expected[names[index]], atol=1e-5
        )
