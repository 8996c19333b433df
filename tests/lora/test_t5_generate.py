"""T5Seq2SeqLM.generate runs keras-hub's cached decoder, not the functional
graph: LoRA must act there too."""

import keras
import numpy as np

import keras_peft
from tests import helpers

CASE = helpers.MODEL_CASES["t5_seq2seq"]
MAX_LENGTH = 6


def _generate_inputs():
    inputs = helpers.t5_inputs(batch=2)
    decoder = np.zeros((2, MAX_LENGTH), "int32")
    decoder_mask = np.zeros((2, MAX_LENGTH), "int32")
    decoder_mask[:, 0] = 1
    return {
        "encoder_token_ids": inputs["encoder_token_ids"],
        "encoder_padding_mask": inputs["encoder_padding_mask"],
        "decoder_token_ids": decoder,
        "decoder_padding_mask": decoder_mask,
    }


def greedy_by_full_forward(model, inputs):
    """Greedy decoding that runs the whole model for every new token."""
    tokens = np.array(inputs["decoder_token_ids"])
    for step in range(1, MAX_LENGTH):
        logits = model(
            {
                "encoder_token_ids": inputs["encoder_token_ids"],
                "encoder_padding_mask": inputs["encoder_padding_mask"],
                "decoder_token_ids": tokens[:, :step],
                "decoder_padding_mask": np.ones((2, step), "int32"),
            }
        )
        tokens[:, step] = np.argmax(
            keras.ops.convert_to_numpy(logits)[:, -1], -1
        )
    return tokens


def test_generate_after_apply_before_and_after_training():
    model = CASE.build()
    model.compile(sampler="greedy")
    inputs = _generate_inputs()
    base_tokens = model.generate(inputs, stop_token_ids=None)[
        "decoder_token_ids"
    ]

    keras_peft.apply(model, keras_peft.LoRAConfig(rank=4, alpha=8))
    model.compile(sampler="greedy")
    untrained = model.generate(inputs, stop_token_ids=None)["decoder_token_ids"]
    np.testing.assert_array_equal(untrained, base_tokens)

    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss=CASE.loss, sampler="greedy"
    )
    model.fit(CASE.inputs(), CASE.labels(), epochs=5, verbose=0)
    trained = model.generate(inputs, stop_token_ids=None)["decoder_token_ids"]
    np.testing.assert_array_equal(
        trained, greedy_by_full_forward(model, inputs)
    )
    assert not np.array_equal(trained, base_tokens)
