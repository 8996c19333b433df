"""Decoding checks for T5Seq2SeqLM: keras-hub's `generate` runs a cached
decoder (`call_decoder_with_cache`), not the functional graph, so every
method must act on that path too."""

import functools

import keras
import numpy as np

from tests import helpers

MAX_LENGTH = 6


def generate_inputs(batch=2):
    inputs = helpers.t5_inputs(batch=batch)
    decoder = np.zeros((batch, MAX_LENGTH), "int32")
    decoder_mask = np.zeros((batch, MAX_LENGTH), "int32")
    decoder_mask[:, 0] = 1
    return {
        "encoder_token_ids": inputs["encoder_token_ids"],
        "encoder_padding_mask": inputs["encoder_padding_mask"],
        "decoder_token_ids": decoder,
        "decoder_padding_mask": decoder_mask,
    }


def greedy_generate(model, inputs, traced=False):
    """`model.generate`'s greedy tokens; eager unless `traced`.

    Eager runs the same cached-decoding code as the traced `generate`, in
    about a quarter of the time a T5 trace takes. `traced` checks what only
    a trace can break.
    """
    model.compile(sampler="greedy", run_eagerly=not traced)
    return np.asarray(
        model.generate(inputs, stop_token_ids=None)["decoder_token_ids"]
    )


def full_forward_logits(model, inputs, tokens):
    """Logits of the whole model (functional graph) for decoder `tokens`."""
    batch, length = tokens.shape
    return keras.ops.convert_to_numpy(
        model(
            {
                "encoder_token_ids": inputs["encoder_token_ids"],
                "encoder_padding_mask": inputs["encoder_padding_mask"],
                "decoder_token_ids": tokens,
                "decoder_padding_mask": np.ones((batch, length), "int32"),
            }
        )
    )


def cached_logits(model, inputs, tokens):
    """Logits of keras-hub's cached decoding, one token at a time.

    Seeds the caches as `generate` does (`_build_cache` on the first token),
    then feeds `tokens[:, i]` at cache index `i`.
    """
    encoder_ids = inputs["encoder_token_ids"]
    encoder_mask = inputs["encoder_padding_mask"]
    _, encoder_states, self_cache, cross_cache = model._build_cache(
        encoder_ids, encoder_mask, tokens[:, :1]
    )
    # `_build_cache` sized the self-attention cache for one token.
    self_cache = keras.ops.pad(
        self_cache,
        [[0, 0], [0, 0], [0, 0], [0, tokens.shape[1] - 1], [0, 0], [0, 0]],
    )
    logits = []
    for index in range(tokens.shape[1]):
        step_logits, _, self_cache, _ = model.call_decoder_with_cache(
            encoder_hidden_states=encoder_states,
            encoder_padding_mask=encoder_mask,
            decoder_token_ids=tokens[:, index : index + 1],
            self_attention_cache=self_cache,
            self_attention_cache_update_index=index,
            cross_attention_cache=cross_cache,
            cross_attention_cache_update_index=None,
        )
        logits.append(keras.ops.convert_to_numpy(step_logits)[:, 0])
    return np.stack(logits, axis=1)


def assert_cached_decoding_matches(model, traced=False):
    """Cached decoding equals the full pass, and `generate` is its greedy
    decoding.

    Float tolerance, not equality: the cached path attends one query at a
    time, through other kernels than the full pass, so the two round
    differently on different CPUs. For the same reason a token is checked to
    be a best one of the full pass up to that tolerance, teacher-forced on
    the generated sequence: a near tie may fall either way on another CPU.

    Args:
        traced: whether `generate` runs traced (see `greedy_generate`).

    Returns:
        The generated tokens.
    """
    inputs = generate_inputs()
    generated = greedy_generate(model, inputs, traced)
    np.testing.assert_array_equal(
        generated[:, 0], inputs["decoder_token_ids"][:, 0]
    )
    full = full_forward_logits(model, inputs, generated)
    np.testing.assert_allclose(
        cached_logits(model, inputs, generated), full, atol=1e-4, rtol=1e-4
    )
    assert_greedy_of_full_pass(model, inputs, generated, full)
    return generated


def assert_greedy_of_full_pass(model, inputs, generated, full=None):
    """Each generated token is a best one of the full (functional) pass,
    teacher-forced on `generated`, up to a float tolerance (see
    `assert_cached_decoding_matches`)."""
    if full is None:
        full = full_forward_logits(model, inputs, generated)
    # The logits at step t choose the token at step t + 1.
    chosen = np.take_along_axis(full[:, :-1], generated[:, 1:, None], -1)
    best = full[:, :-1].max(-1, keepdims=True)
    np.testing.assert_array_less(best - chosen, 1e-4 * (1 + np.abs(best)))


def _forced_tokens(batch=2):
    """Fixed decoder tokens (the start token, then random ones)."""
    rng = np.random.default_rng(7)
    tokens = rng.integers(2, helpers.T5["vocabulary_size"], (batch, MAX_LENGTH))
    tokens[:, 0] = 0
    return tokens.astype("int32")


@functools.cache
def _base():
    """The base T5 task's embeddings, and its logits on the fixed tokens,
    once per process."""
    base = helpers.MODEL_CASES["t5_seq2seq"].build()
    logits = full_forward_logits(base, generate_inputs(), _forced_tokens())
    return _embeddings(base), logits


def _embeddings(model):
    return keras.ops.convert_to_numpy(model.backbone.token_embedding.embeddings)


def assert_changes_logits(model):
    """The method moves the decoder's logits away from the base model's,
    teacher-forced on fixed tokens (`model` is the T5 test task)."""
    embeddings, base = _base()
    # Exact: the same base weights, set from the same values.
    np.testing.assert_array_equal(_embeddings(model), embeddings)
    logits = full_forward_logits(model, generate_inputs(), _forced_tokens())
    assert np.abs(logits - base).max() > 1e-2 * np.abs(base).max()
