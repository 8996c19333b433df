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
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import sentiment_task  # noqa: E402

import keras_peft  # noqa: E402


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
        model = sentiment_task.preset_classifier(args.preset)
        learning_rate = args.learning_rate or 1e-3
    else:
        model = sentiment_task.small_classifier()
        learning_rate = args.learning_rate or 5e-3
        base_weights = os.path.join(workdir, "base.weights.h5")
        model.backbone.save_weights(base_weights)

    # 1. Apply LoRA: the backbone is frozen, the new low-rank weights and the
    #    classification head train.
    keras_peft.apply(model, keras_peft.LoRAConfig(rank=args.rank, alpha=16))
    print(keras_peft.trainable_summary(model))

    # 2. Train with plain model.fit.
    x_train, y_train = sentiment_task.make_dataset(512, seed=1)
    x_val, y_val = sentiment_task.make_dataset(128, seed=2)
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
        fresh = sentiment_task.preset_classifier(args.preset)
    else:
        fresh = sentiment_task.small_classifier(base_weights)
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
