"""Tokens for initializing prompts and prefixes, and for reading them back."""

import re

import keras
import numpy as np

# Entries such as "[unused7]", "[CLS]" or "<extra_id_0>": not words.
_SPECIAL_PATTERN = re.compile(r"^(\[.*\]|<.*>)$")
COMMON_VOCABULARY = 5000


def resolve_tokenizer(context, tokenizer):
    """The tokenizer given, else the model's preprocessor's, else `None`."""
    if tokenizer is not None:
        return tokenizer
    preprocessor = getattr(context.model, "preprocessor", None)
    return getattr(preprocessor, "tokenizer", None)


def require_tokenizer(tokenizer, owner, init):
    if tokenizer is None:
        raise ValueError(
            f"{owner} init={init!r} needs a tokenizer: pass `tokenizer=` (a "
            "keras-hub tokenizer) or use a model with a preprocessor."
        )
    for name in ("tokenize", "id_to_token"):
        if not callable(getattr(tokenizer, name, None)):
            raise TypeError(
                f"{owner} `tokenizer` must be a keras-hub tokenizer with "
                f"`tokenize` and `id_to_token`. Got {type(tokenizer).__name__}."
            )
    return tokenizer


def text_token_ids(tokenizer, text, vocabulary_size):
    """The token ids of `text`, as a 1-D int array (no special tokens)."""
    ids = np.asarray(keras.ops.convert_to_numpy(tokenizer.tokenize(text)))
    ids = ids.reshape(-1).astype("int64")
    if ids.size == 0:
        raise ValueError(f"{text!r} tokenizes to no tokens.")
    if ids.min() < 0 or ids.max() >= vocabulary_size:
        raise ValueError(
            f"The tokenizer maps {text!r} to ids {ids.tolist()}, outside the "
            f"model's vocabulary of {vocabulary_size}: is it the model's "
            "tokenizer?"
        )
    return ids


def _is_special(tokenizer, token_id, special_ids):
    if token_id in special_ids:
        return True
    return bool(_SPECIAL_PATTERN.match(str(tokenizer.id_to_token(token_id))))


def common_token_ids(vocabulary_size, tokenizer=None):
    """Ids of the most common vocabulary entries.

    WordPiece and SentencePiece vocabularies list entries roughly by
    frequency, so these are the first `5000` ids, skipping special and
    reserved entries (`[CLS]`, `[unused7]`, `<extra_id_0>`) when a
    tokenizer tells which those are.
    """
    if tokenizer is None:
        return np.arange(min(COMMON_VOCABULARY, vocabulary_size))
    try:
        special_ids = set(tokenizer.special_token_ids)
    except (AttributeError, ValueError):
        special_ids = set()
    found = []
    for token_id in range(vocabulary_size):
        if not _is_special(tokenizer, token_id, special_ids):
            found.append(token_id)
            if len(found) == COMMON_VOCABULARY:
                break
    if not found:
        raise ValueError(
            "The tokenizer's vocabulary holds only special tokens."
        )
    return np.asarray(found)


def repeat_to(values, length):
    """Repeats or cuts `values` along axis 0 to `length` rows."""
    repeats = -(-length // len(values))
    return np.concatenate([values] * repeats, axis=0)[:length]
