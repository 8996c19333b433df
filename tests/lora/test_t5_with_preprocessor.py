"""LoRA on a T5Seq2SeqLM that has a preprocessor: fit and generate on text."""

import keras
import keras_hub
import pytest

import keras_peft
from tests import helpers

pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def tokenizer():
    return helpers.t5_tokenizer()


def test_fit_and_generate_text(tokenizer):
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=8, decoder_sequence_length=8
    )
    backbone = keras_hub.models.T5Backbone(
        **dict(helpers.T5, vocabulary_size=tokenizer.vocabulary_size())
    )
    model = keras_hub.models.T5Seq2SeqLM(backbone, preprocessor=preprocessor)
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=4, alpha=8))
    helpers.compile(
        model, optimizer=keras.optimizers.Adam(0.05), sampler="greedy"
    )
    sources = helpers.t5_sentences(16, 1, words=5)
    # The task: copy the source sentence.
    data = {"encoder_text": sources, "decoder_text": sources}
    history = model.fit(x=data, batch_size=8, epochs=6, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    outputs = model.generate(sources[:2], max_length=8)
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
