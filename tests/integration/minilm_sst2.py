"""Real pretrained BERT (MiniLM) and real SST-2 sentences from ../shared."""

import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from tests import helpers

SST2 = os.path.join(helpers.SHARED, "data", "sst2", "train.tsv")


def checkpoint():
    """The MiniLM checkpoint's path; skips when ../shared lacks it or SST-2."""
    path = helpers.minilm_path()
    if path is None or not os.path.exists(SST2):
        pytest.skip("../shared (MiniLM checkpoint, SST-2) is not available")
    return path


def sst2(count, offset):
    """`count` (sentences, labels) of SST-2's training file from `offset`."""
    with open(SST2) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    rows = [r for r in rows[1:] if len(r) == 2 and r[1] in ("0", "1")]
    rows = rows[offset : offset + count]
    return np.array([r[0] for r in rows]), np.array([int(r[1]) for r in rows])


def classifier(path):
    keras.utils.set_random_seed(0)
    model = keras_hub.models.BertTextClassifier.from_preset(path, num_classes=2)
    model.preprocessor.sequence_length = 32
    return model


def compile_classifier(model, learning_rate, head_learning_rate=None):
    """Adam; the classification head at its own rate if one is given.

    The checkpoint's pooler output is tiny (about 0.04 std): a new head on
    it needs a far larger step than a prompt or prefix does.
    """
    optimizer = keras.optimizers.Adam(learning_rate)
    if head_learning_rate is not None:
        optimizer = keras_peft.GroupedOptimizer(
            optimizer,
            learning_rates={"head": head_learning_rate},
            model=model,
        )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def frozen_values(model):
    return [(v, np.array(v.numpy())) for v in model.weights if not v.trainable]


def assert_unchanged(frozen):
    # Exact: a frozen weight is never written.
    for variable, value in frozen:
        np.testing.assert_array_equal(variable.numpy(), value, variable.path)


def adapter_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
