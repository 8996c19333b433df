"""keras-peft quickstart: LoRA on a BERT classifier, end to end.

Builds a small BERT text classifier, applies LoRA, trains it with
`model.fit` on a small sentiment data set this script makes itself, prints the
trainable-parameter summary, saves the adapter, reloads it into a fresh model
and checks that the predictions match.

Offline by default (a small randomly initialized BERT with its own
vocabulary). With `--preset` it fine-tunes a real checkpoint instead: a
keras-hub preset name such as `bert_tiny_en_uncased` (downloaded) or a local
directory keras-hub can load, including Hugging Face format directories.

    python examples/quickstart.py
    python examples/quickstart.py --preset bert_tiny_en_uncased
"""

import argparse
import os
import random
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_peft  # noqa: E402

POSITIVE = ["great", "wonderful", "superb", "delightful", "moving", "brilliant"]
NEGATIVE = ["awful", "boring", "dreadful", "tedious", "clumsy", "terrible"]
SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the script"]
FILLERS = ["honestly", "overall", "i think", "frankly", "in the end", "really"]
SEQUENCE_LENGTH = 24


def make_dataset(size, seed):
    """Sentences whose label is the sentiment of their adjective."""
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
    words = {
        w for p in POSITIVE + NEGATIVE + SUBJECTS + FILLERS for w in p.split()
    }
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return special + sorted(words | {"was"})


def small_classifier(base_weights_path=None):
    """A small random BERT classifier; same base weights if a path is given."""
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=make_vocabulary())
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=SEQUENCE_LENGTH
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        intermediate_dim=128,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    if base_weights_path:
        backbone.load_weights(base_weights_path)
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor
    )


def preset_classifier(preset):
    model = keras_hub.models.BertTextClassifier.from_preset(
        preset, num_classes=2
    )
    # The sentences are short; the preset's default (512) wastes compute.
    model.preprocessor.sequence_length = SEQUENCE_LENGTH
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="keras-hub preset name or directory")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--output", default=None, help="adapter directory")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    workdir = tempfile.mkdtemp(prefix="keras-peft-quickstart-")

    if args.preset:
        model = preset_classifier(args.preset)
        learning_rate = args.learning_rate or 1e-3
    else:
        model = small_classifier()
        learning_rate = args.learning_rate or 5e-3
        base_weights = os.path.join(workdir, "base.weights.h5")
        model.backbone.save_weights(base_weights)

    # 1. Apply LoRA: the backbone is frozen, the new low-rank weights and the
    #    classification head train.
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=args.rank, alpha=16))
    print(keras_peft.trainable_summary(model))

    # 2. Train with plain model.fit.
    x_train, y_train = make_dataset(512, seed=1)
    x_val, y_val = make_dataset(128, seed=2)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=args.epochs,
        batch_size=32,
        verbose=2,
    )

    # 3. Save only the adapter (and the trained head): kilobytes.
    adapter_dir = args.output or os.path.join(workdir, "adapter")
    keras_peft.save_adapter(model, adapter_dir)
    size = sum(
        os.path.getsize(os.path.join(adapter_dir, f))
        for f in os.listdir(adapter_dir)
    )
    print(f"Saved adapter to {adapter_dir} ({size / 1024:.1f} KiB)")

    # 4. Load it into a fresh model with the same base weights.
    if args.preset:
        fresh = preset_classifier(args.preset)
    else:
        fresh = small_classifier(base_weights)
    keras_peft.load_adapter(fresh, adapter_dir)
    expected = model.predict(x_val, verbose=0)
    reloaded = fresh.predict(x_val, verbose=0)
    difference = float(np.max(np.abs(expected - reloaded)))
    accuracy = float(np.mean(np.argmax(reloaded, -1) == y_val))
    print(
        f"Reloaded model: validation accuracy {accuracy:.3f}, max logit "
        f"difference {difference:.2e}"
    )
    if difference > 1e-4:
        raise SystemExit("Reloaded predictions differ from the trained model.")
    print("OK: reloaded adapter reproduces the trained model's predictions.")


if __name__ == "__main__":
    main()
