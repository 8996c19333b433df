"""One replacing wrapper per layer, across `apply` calls: a second one is a
`ValueError` naming both configs and the layer, and changes nothing."""

import re

import pytest

import keras_peft
from tests import helpers

BERT = helpers.MODEL_CASES["bert_classifier"]
QUERY = "transformer_layer_0/self_attention_layer/query"
ATTENTION = "transformer_layer_0/self_attention_layer"
FFN_OUTPUT = "transformer_layer_0/feedforward_output_dense"


def _message(path, earlier, new):
    parts = [repr(path), "already wrapped", repr(earlier), repr(new)]
    return "(?s)" + ".*".join(re.escape(part) for part in parts)


def _assert_rejected_unchanged(model, config, message):
    before = helpers.snapshot(model)
    with pytest.raises(ValueError, match=message):
        keras_peft.apply(model, config)
    # Exact: the rejected call left the model as it was.
    helpers.assert_snapshot_equal(before, helpers.snapshot(model))


def test_second_lora_on_a_layer_names_the_earlier_config():
    model = BERT.build()
    first = keras_peft.LoRAConfig(rank=2)
    keras_peft.apply(model, first)
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=3, targets="ffn"))
    second = keras_peft.LoRAConfig(rank=4, targets=["query"])
    _assert_rejected_unchanged(model, second, _message(QUERY, first, second))


def test_second_prefix_behind_a_site_host_names_the_earlier_config():
    model = BERT.build()
    first = keras_peft.PrefixTuningConfig(length=2, reparam=False)
    keras_peft.apply(
        model,
        [
            first,
            keras_peft.AdapterConfig(
                bottleneck=2, location="attn", parallel=True
            ),
        ],
    )
    second = keras_peft.PrefixTuningConfig(length=3, reparam=False)
    _assert_rejected_unchanged(
        model, second, _message(ATTENTION, first, second)
    )


def test_lora_inside_an_adapter_host_names_the_earlier_config():
    model = BERT.build()
    first = keras_peft.LoRAConfig(rank=2, targets="ffn")
    keras_peft.apply(model, first)
    keras_peft.apply(model, keras_peft.AdapterConfig(bottleneck=2))
    second = keras_peft.LoRAConfig(rank=4, targets=[FFN_OUTPUT])
    _assert_rejected_unchanged(
        model, second, _message(FFN_OUTPUT, first, second)
    )
