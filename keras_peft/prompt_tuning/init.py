"""Lester et al.'s initial values for a prompt."""

import keras
import numpy as np

from keras_peft.core import tokens

OWNER = "PromptTuningConfig"


def initial_prompt(config, embeddings, tokenizer):
    """The `(length, d)` starting prompt for `config`.

    Args:
        config: a `PromptTuningConfig`.
        embeddings: the `(vocabulary, d)` token embedding matrix (NumPy).
        tokenizer: a keras-hub tokenizer or `None`.
    """
    length, width = config.length, embeddings.shape[1]
    vocabulary = embeddings.shape[0]
    if config.init == "random":
        return np.random.uniform(-0.5, 0.5, (length, width))
    if config.init == "vocab":
        return _sampled_vocabulary(embeddings, length, tokenizer)
    tokenizer = tokens.require_tokenizer(tokenizer, OWNER, config.init)
    if config.init == "text":
        ids = tokens.text_token_ids(tokenizer, config.init_text, vocabulary)
        return tokens.repeat_to(embeddings[ids], length)
    labels = np.stack(
        [
            embeddings[
                tokens.text_token_ids(tokenizer, label, vocabulary)
            ].mean(axis=0)
            for label in config.class_labels
        ]
    )
    rest = _sampled_vocabulary(embeddings, length - len(labels), tokenizer)
    return np.concatenate([labels, rest], axis=0)


def _sampled_vocabulary(embeddings, count, tokenizer):
    candidates = tokens.common_token_ids(embeddings.shape[0], tokenizer)
    ids = np.random.choice(
        candidates, size=count, replace=count > len(candidates)
    )
    return embeddings[ids]


def embedding_matrix(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), "float32")
