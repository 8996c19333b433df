"""Real pretrained BERT (MiniLM) and real SST-2 sentences from ../shared.

The tests that use these train for tens of steps on a few CPU cores, so
fixed costs count as much as steps do: sentences are tokenized once and the
classifiers take token ids (`fit` or `predict` on strings rebuilds the
tokenizing `tf.data` pipeline on every call, seconds each), and validation
metrics come from `predict`, whose traced graph the round-trip checks reuse
(`evaluate` would trace one more).
"""

import dataclasses
import functools
import os

import keras
import keras_hub
import numpy as np
import pytest

import keras_peft
from tests import helpers

SST2 = os.path.join(helpers.SHARED, "data", "sst2", "train.tsv")

# SST-2 sentences are short. With this checkpoint's vocabulary, [CLS] and
# [SEP] included, the training file's median is 10 tokens, 73% of sentences
# fit in 16 and 95% in 32; a step costs about twice as much at 32 as at 16.
SEQUENCE_LENGTH = 16
# Multiples of every batch size used: a smaller last batch would trace the
# train or predict function a second time.
TRAIN = 640
VALIDATION = 512
BATCH_SIZE = 32
VALIDATION_OFFSET = 60000  # far from the training rows


def checkpoint():
    """The MiniLM checkpoint's path; skips when ../shared lacks it or SST-2."""
    path = helpers.minilm_path()
    if path is None or not os.path.exists(SST2):
        pytest.skip("../shared (MiniLM checkpoint, SST-2) is not available")
    return path


@functools.cache
def _rows():
    with open(SST2) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return [r for r in rows[1:] if len(r) == 2 and r[1] in ("0", "1")]


def sst2(count, offset):
    """`count` (sentences, labels) of SST-2's training file from `offset`."""
    rows = _rows()[offset : offset + count]
    return np.array([r[0] for r in rows]), np.array([int(r[1]) for r in rows])


def preprocessor(path):
    return keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        path, sequence_length=SEQUENCE_LENGTH
    )


@dataclasses.dataclass(frozen=True)
class Split:
    """Tokenized training and validation sentences, with their labels."""

    x_train: dict
    y_train: np.ndarray
    x_val: dict
    y_val: np.ndarray

    def sample(self, count=BATCH_SIZE):
        """The first `count` validation inputs (for round-trip checks)."""
        return {k: v[:count] for k, v in self.x_val.items()}


def split(path, train=TRAIN, validation=VALIDATION):
    tokenize = preprocessor(path)

    def features(sentences):
        return {k: np.asarray(v) for k, v in tokenize(sentences).items()}

    x_train, y_train = sst2(train, offset=0)
    x_val, y_val = sst2(validation, offset=VALIDATION_OFFSET)
    return Split(features(x_train), y_train, features(x_val), y_val)


def classifier(path, seed=0):
    """A 2-class classifier on the checkpoint that takes token ids.

    Without dropout: in a run of tens of steps its noise only blurs what
    the method learned (prompt tuning most: measured, see the tests).
    """
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone.from_preset(path, dropout=0.0)
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None, dropout=0.0
    )


def compile_classifier(model, learning_rate, head_learning_rate=None):
    """Adam; the classification head at its own rate if one is given.

    The checkpoint's pooler output is tiny (about 0.04 std): a new head on
    it needs a far larger step than a prompt or prefix does.

    Under XLA: on CPU a step takes half the time (measured on a 2-core
    machine, a prompt-tuned batch of 32: 0.69 s, against 1.35 s without),
    and it is the path TPUs take.
    """
    optimizer = keras.optimizers.Adam(learning_rate)
    if head_learning_rate is not None:
        optimizer = keras_peft.GroupedOptimizer(
            optimizer,
            learning_rates={"head": head_learning_rate},
            model=model,
        )
    helpers.compile(
        model,
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True,
    )


def frozen_values(model):
    return [(v, np.array(v.numpy())) for v in model.weights if not v.trainable]


def assert_unchanged(frozen):
    # Exact: a frozen weight is never written.
    for variable, value in frozen:
        np.testing.assert_array_equal(variable.numpy(), value, variable.path)


def adapter_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def logits(model, x):
    """The model's logits for `x`, computed eagerly.

    Round-trip checks compare two models run the same way: eagerly, as a
    fresh (not compiled) model runs, not through the trained model's XLA
    `predict`.
    """
    return keras.ops.convert_to_numpy(model(x, training=False))


def evaluate(model, data):
    """Validation loss and accuracy, from `predict`'s logits."""
    logits = model.predict(data.x_val, batch_size=BATCH_SIZE, verbose=0)
    logits = logits - logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    labels = data.y_val
    return {
        "accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels)),
        "loss": float(-np.mean(log_probs[np.arange(len(labels)), labels])),
    }


def learn(
    model,
    data,
    epochs,
    learning_rate,
    head_learning_rate=None,
    batch_size=BATCH_SIZE,
):
    """Trains on `data`; returns validation metrics before and after.

    Checks that no frozen weight moved.
    """
    frozen = frozen_values(model)
    compile_classifier(model, learning_rate, head_learning_rate)
    before = evaluate(model, data)
    model.fit(
        data.x_train,
        data.y_train,
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
    )
    after = evaluate(model, data)
    assert_unchanged(frozen)
    return before, after
