"""The sentiment task the examples share: data and BERT classifiers.

- `make_dataset`: a synthetic two-class sentiment data set, made offline;
- `make_vocabulary`: the WordPiece vocabulary of its words;
- `small_classifier`: a small random BERT classifier for it, offline;
- `preset_classifier`: a classifier on a real checkpoint (a keras-hub
  preset name or a local directory, Hugging Face format too);
- `load_tsv`: training and validation sets from an SST-2 style
  `sentence<TAB>label` file.

Used by `quickstart.py`, `prompt_tuning.py` and `compare_methods.py`:
`python examples/NAME.py` puts this folder on `sys.path`.
"""

import json
import os
import random

import keras
import keras_hub
import numpy as np

POSITIVE = ["great", "wonderful", "superb", "delightful", "moving", "brilliant"]
NEGATIVE = ["awful", "boring", "dreadful", "tedious", "clumsy", "terrible"]
SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the script"]
FILLERS = ["honestly", "overall", "i think", "frankly", "in the end", "really"]
SEQUENCE_LENGTH = 24


def make_dataset(size, seed):
    """Sentences whose label is the sentiment of their adjective.

    Args:
        size: int. Number of sentences.
        seed: int. Seed of the sentences drawn.

    Returns:
        `(sentences, labels)`: a string array and an int array of 0
        (negative) and 1 (positive).
    """
    rng = random.Random(seed)
    sentences, labels = [], []
    for _ in range(size):
        label = rng.randrange(2)
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        words = [
            rng.choice(FILLERS),
            rng.choice(SUBJECTS),
            "was",
            adjective,
            rng.choice(FILLERS),
        ]
        sentences.append(" ".join(words))
        labels.append(label)
    return np.array(sentences), np.array(labels)


def make_vocabulary():
    """BERT's special tokens, then every word of `make_dataset`."""
    words = {
        w for p in POSITIVE + NEGATIVE + SUBJECTS + FILLERS for w in p.split()
    }
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return special + sorted(words | {"was"})


def small_classifier(
    base_weights_path=None,
    sequence_length=SEQUENCE_LENGTH,
    dropout=0.1,
    weight_scale=1.0,
):
    """A small random BERT classifier for `make_dataset`'s sentences.

    Two layers of width 64, four heads, `SEQUENCE_LENGTH` positions, two
    classes, and a preprocessor with `make_vocabulary`'s words.

    Args:
        base_weights_path: str. A backbone weights file
            (`model.backbone.save_weights`) to load, for a model with the
            same base weights as the one saved. Defaults to `None`: random
            weights.
        sequence_length: int. The preprocessor's sequence length. Defaults
            to `SEQUENCE_LENGTH`.
        dropout: float. Dropout rate of the backbone and of the head.
            Defaults to `0.1`, keras-hub's.
        weight_scale: float. Multiplies the backbone's random weight
            matrices (keras-hub draws them with standard deviation 0.02).
            Ignored when `base_weights_path` is given. Defaults to `1.0`.
    """
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=make_vocabulary())
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=SEQUENCE_LENGTH,
        dropout=dropout,
    )
    if base_weights_path:
        backbone.load_weights(base_weights_path)
    elif weight_scale != 1.0:
        for variable in backbone.weights:
            # Matrices only: layer norms and biases keep their 1 and 0.
            if len(variable.shape) >= 2:
                variable.assign(variable * weight_scale)
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor, dropout=dropout
    )


def hugging_face_fixes(preset):
    """For a Hugging Face format directory: `(gelu_exact, tokenizer_kwargs)`
    of what keras-hub's converter leaves out, else `None`."""
    config_path = os.path.join(preset, "config.json")
    # keras-hub's own preset directories hold a config.json too, and a
    # metadata.json that Hugging Face ones lack.
    if not os.path.isfile(config_path) or os.path.isfile(
        os.path.join(preset, "metadata.json")
    ):
        return None
    with open(config_path) as f:
        config = json.load(f)
    tokenizer_config = {}
    path = os.path.join(preset, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            tokenizer_config = json.load(f)
    lowercase = tokenizer_config.get("do_lower_case", True)
    # Hugging Face's BertTokenizer strips accents when it lowercases, unless
    # told otherwise; keras-hub's converter never does.
    strip_accents = tokenizer_config.get("strip_accents")
    if strip_accents is None:
        strip_accents = lowercase
    tokenizer = {
        "vocabulary": os.path.join(preset, "vocab.txt"),
        "lowercase": lowercase,
        "strip_accents": strip_accents,
    }
    # keras-hub's BERT uses the tanh-approximate GELU; "gelu" is the exact.
    return config.get("hidden_act") == "gelu", tokenizer


def preset_classifier(
    preset, num_classes=2, sequence_length=SEQUENCE_LENGTH, dropout=None
):
    """A `BertTextClassifier` on a real checkpoint, with a new head.

    A Hugging Face format directory gets what keras-hub's converter leaves
    out (`hugging_face_fixes`): its exact GELU and its accent stripping.

    Args:
        preset: str. A keras-hub preset name (downloaded) or a local
            directory keras-hub can load.
        num_classes: int. Number of classes. Defaults to `2`.
        sequence_length: int. The preprocessor's sequence length; the
            preset's (512) wastes compute on short sentences. Defaults to
            `SEQUENCE_LENGTH`.
        dropout: float. Dropout rate of the backbone and of the head.
            Defaults to `None`: the preset's.
    """
    fixes = hugging_face_fixes(preset)
    kwargs = {}
    if fixes is not None:
        tokenizer = keras_hub.models.BertTokenizer(**fixes[1])
        kwargs["preprocessor"] = (
            keras_hub.models.BertTextClassifierPreprocessor(
                tokenizer, sequence_length=sequence_length
            )
        )
    if dropout is not None:
        kwargs["dropout"] = dropout
        kwargs["backbone"] = keras_hub.models.BertBackbone.from_preset(
            preset, dropout=dropout
        )
    model = keras_hub.models.BertTextClassifier.from_preset(
        preset, num_classes=num_classes, **kwargs
    )
    model.preprocessor.sequence_length = sequence_length
    if fixes is not None and fixes[0]:
        for layer in model.backbone._flatten_layers(include_self=False):
            dense = getattr(layer, "_feedforward_intermediate_dense", None)
            if dense is not None:
                dense.activation = keras.activations.gelu
    return model


def load_tsv(path, train_size, val_size, seed):
    """Disjoint training and validation sets from a `sentence<TAB>label`
    file, after a seeded shuffle.

    A header row (a label that is not a number) is skipped, and exact
    duplicate sentences are dropped, so that no validation sentence is
    trained on.

    Args:
        path: str. The file, e.g. SST-2's `train.tsv`.
        train_size: int. Number of training examples.
        val_size: int. Number of validation examples.
        seed: int. Seed of the shuffle.

    Returns:
        `(train, val)`, each a pair of a string array of sentences and an
        int array of labels.
    """
    rows, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            sentence, _, label = line.rstrip("\n").rpartition("\t")
            sentence = sentence.strip()
            if not label.strip().isdigit():
                continue
            if sentence and sentence not in seen:
                seen.add(sentence)
                rows.append((sentence, int(label)))
    if train_size + val_size > len(rows):
        raise SystemExit(
            f"{train_size} training + {val_size} validation examples exceed "
            f"the {len(rows)} distinct sentences in {path}"
        )
    order = np.random.default_rng(seed).permutation(len(rows))

    def pick(indices):
        return (
            np.array([rows[i][0] for i in indices]),
            np.array([rows[i][1] for i in indices]),
        )

    return pick(order[val_size : val_size + train_size]), pick(order[:val_size])
