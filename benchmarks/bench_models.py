"""The model the speed and memory benchmarks measure."""

import keras
import keras_hub


def bert_classifier(vocab, seq=512, seed=0):
    """A 2-class `BertTextClassifier` over a randomly initialised
    `BertBackbone`: hidden 256, 4 layers, 4 heads, FFN 1024, positions for
    at least 512 tokens."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocab,
        num_layers=4,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        max_sequence_length=max(512, seq),
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None
    )
