"""T5Seq2SeqLM.generate runs keras-hub's cached decoder, not the functional
graph: LoRA must act there too."""

import keras
import numpy as np

import keras_peft
from tests import helpers
from tests import t5_decoding

CASE = helpers.MODEL_CASES["t5_seq2seq"]


def test_generate_after_apply_before_and_after_training():
    model = CASE.build()
    # The untrained checks eagerly (the same code; a T5 trace takes
    # seconds), the trained one traced.
    model.compile(sampler="greedy", run_eagerly=True)
    inputs = t5_decoding.generate_inputs()
    base_tokens = model.generate(inputs, stop_token_ids=None)[
        "decoder_token_ids"
    ]

    keras_peft.apply(model, keras_peft.LoRAConfig(rank=4, alpha=8))
    model.compile(sampler="greedy", run_eagerly=True)
    untrained = model.generate(inputs, stop_token_ids=None)["decoder_token_ids"]
    # Exact: untrained updates add 0 through the base layers' own ops.
    np.testing.assert_array_equal(untrained, base_tokens)

    helpers.compile(
        model,
        optimizer=keras.optimizers.Adam(0.05),
        loss=CASE.loss,
        sampler="greedy",
    )
    model.fit(CASE.inputs(), CASE.labels(), epochs=5, verbose=0)
    # Traced, as users run it (the other decoding tests run it eagerly).
    trained = t5_decoding.assert_cached_decoding_matches(model, traced=True)
    assert not np.array_equal(trained, base_tokens)
