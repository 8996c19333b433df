"""TensorFlow's object graph sees the layers keras-peft swaps in.

`tf.saved_model.save` and Keras' export walk TensorFlow's record of each
layer's attributes, not Keras' layer tree: a swapped-in layer that only
Keras knows of is left out ("untracked resource"), and a list edited in
place is refused as not append-only. (Keras 3 layers keep sub-layer lists
where only the SavedModel view of that graph sees them, so the checks use
that view, as Keras' export does.)
"""

import collections
import os

import pytest
import tensorflow as tf

import keras_peft
from keras_peft.core import layer_tree
from tests import helpers

# Every method at once puts each method's layers in the model (the
# reparametrized prefix among them); the direct prefix owns its variables
# itself. T5 holds its layers otherwise than BERT.
PAIRS = [
    ("bert_classifier", "all_methods_and_bitfit"),
    ("bert_classifier", "prefix_tuning_direct"),
    ("bert_classifier", "mam"),
    ("t5_backbone", "all_methods"),
]


class _SavedModelView(tf.train.TrackableView):
    @classmethod
    def children(cls, obj, save_type="savedmodel", **kwargs):
        return super().children(obj, save_type, cache={})


def _tensorflow_objects(model):
    return {id(v) for v in _SavedModelView(model).descendants()}


@pytest.mark.parametrize("model_name,method_name", PAIRS)
def test_every_variable_is_in_tensorflows_object_graph(model_name, method_name):
    case = helpers.MODEL_CASES[model_name]
    model = case.build()
    keras_peft.apply(model, helpers.METHOD_CASES[method_name].config(case))
    found = _tensorflow_objects(model)
    # A Keras variable is tracked itself, or through its TensorFlow value.
    missing = [
        v.path
        for v in model.weights
        if id(v) not in found and id(v.value) not in found
    ]
    assert missing == []
    # Each layer owned once: a duplicate would survive a later swap back.
    for layer, _ in layer_tree.iter_layers(model):
        owned = [id(child) for child in layer._layers]
        assert len(owned) == len(set(owned)), layer.path


@pytest.mark.parametrize("method_name", ["prompt_tuning", "prefix_tuning"])
def test_tf_saved_model_save_of_an_applied_model(method_name, tmp_path):
    # Prompt tuning swaps layers of the backbone's functional graph (the
    # list Keras keeps them in must stay append-only for TensorFlow);
    # prefix tuning swaps attention layers held as attributes.
    case = helpers.MODEL_CASES["bert_classifier"]
    model = case.build()
    keras_peft.apply(model, helpers.METHOD_CASES[method_name].config(case))
    helpers.randomize_trainable(model, scale=0.3)
    directory = os.path.join(tmp_path, "saved")
    tf.saved_model.save(model, directory)
    checkpoint = os.path.join(directory, "variables", "variables")
    saved = collections.Counter(
        tuple(shape)
        for name, shape in tf.train.list_variables(checkpoint)
        if name.endswith("VARIABLE_VALUE")
    )
    # Every weight is saved (beside them: Keras' own counters and seeds).
    weights = collections.Counter(tuple(v.shape) for v in model.weights)
    assert weights - saved == collections.Counter()
