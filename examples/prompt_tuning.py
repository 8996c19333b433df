"""keras-peft example: prompt tuning for BERT text classification.

Prompt tuning (Lester et al. 2021) freezes the whole model and learns a few
vectors, the prompt, placed among the input embeddings; a classifier's new
head trains with them.

Give the head a far larger learning rate than the prompt, with
`keras_peft.GroupedOptimizer`. With one rate for everything (the Keras
habit), prompt tuning on MiniLM predicted a single class: at the prompt's
rate the new head barely moves, since the frozen model's pooled output is
tiny (benchmarks/RESULTS.md). This script compiles with

    keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(prompt_rate),
        learning_rates={"head": head_rate},
        model=model,  # after keras_peft.apply
    )

It builds a `BertTextClassifier`, applies `keras_peft.PromptTuningConfig`,
prints the trainable-parameter summary, trains with `model.fit`, saves the
adapter, loads it into a fresh model, checks that the predictions match and
prints the validation accuracy and the words nearest the learned prompt.

Offline by default: a small random BERT and a synthetic sentiment data set
(`sentiment_task.py`). Its weights are drawn ten times wider than
keras-hub's (standard deviation 0.2, not 0.02): at keras-hub's scale a
random BERT's attention is near uniform and its [CLS] output barely depends
on the other tokens, and prompt tuning stayed at the majority class
(measured); a pretrained model's attention is sharp. Measured (seed 0):
validation accuracy 0.992 after 3 epochs, 0.758 with the prompt frozen
(the head alone); `--tiny`, one epoch for tests: 0.922.

`--preset` takes a real checkpoint: a keras-hub preset name (downloaded) or
a local directory, Hugging Face format too. `--data` takes an SST-2 style
`sentence<TAB>label` file (a header row is skipped; a validation set is
split off it); it needs `--preset`, as the offline vocabulary knows only the
synthetic sentences' words. Measured with the defaults on MiniLM
(all-MiniLM-L6-v2) and SST-2: validation accuracy 0.818 after 2 epochs of
2000 sentences (untrained: 0.536; majority class: 0.542), adapter 34.5 KiB;
6 minutes on 2 CPU cores shared with other jobs (compiled with XLA; 14
without).

    python examples/prompt_tuning.py
    python examples/prompt_tuning.py --preset "$(../shared/tools/minilm)" \\
        --data ../shared/data/sst2/train.tsv
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

# Per mode: sizes, the prompt's length and the learning rates. The preset
# rates were measured on MiniLM and SST-2 (benchmarks/RESULTS.md).
DEFAULTS = {
    "offline": dict(
        train_size=1536,
        val_size=256,
        epochs=3,
        batch_size=16,
        sequence_length=16,
        length=8,
        learning_rate=1e-2,
        head_learning_rate=3e-2,
    ),
    "tiny": dict(val_size=128, epochs=1),
    "preset": dict(
        train_size=2000,
        val_size=500,
        epochs=2,
        batch_size=32,
        sequence_length=32,
        length=20,
        learning_rate=3e-3,
        head_learning_rate=1e-2,
    ),
}
# A random BERT at keras-hub's scale ignores the prompt; see the docstring.
OFFLINE_WEIGHT_SCALE = 10.0
# The largest logit difference allowed between the trained and the reloaded
# model. Both run the same ops on the same values (measured: 0); a weight
# that did not round-trip moves logits by far more.
TOLERANCE = 1e-4


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="keras-hub preset name or directory")
    parser.add_argument(
        "--data", help="sentence<TAB>label file (needs --preset)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="one epoch, validated only at the end: the test's run",
    )
    offline, preset = DEFAULTS["offline"], DEFAULTS["preset"]
    for key, kind, help_text in (
        ("train_size", int, "training examples"),
        ("val_size", int, "validation examples"),
        ("epochs", int, "epochs"),
        ("batch_size", int, "batch size"),
        ("sequence_length", int, "preprocessor sequence length"),
        ("length", int, "prompt length"),
        ("learning_rate", float, "the prompt's learning rate"),
        ("head_learning_rate", float, "the classification head's rate"),
    ):
        parser.add_argument(
            "--" + key.replace("_", "-"),
            type=kind,
            help=f"{help_text} (default: {offline[key]} offline, "
            f"{preset[key]} with --preset)",
        )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the weights, the data and its order (default: 0)",
    )
    parser.add_argument("--output", help="adapter directory")
    args = parser.parse_args()
    if args.data and not args.preset:
        parser.error(
            "--data needs --preset (the offline model's vocabulary knows "
            "only the synthetic sentences' words)"
        )
    if args.tiny and args.preset:
        parser.error("--tiny is for the offline model")
    defaults = dict(DEFAULTS["preset" if args.preset else "offline"])
    if args.tiny:
        defaults.update(DEFAULTS["tiny"])
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def load_data(args):
    if args.data:
        return sentiment_task.load_tsv(
            args.data, args.train_size, args.val_size, args.seed
        )
    train = sentiment_task.make_dataset(args.train_size, seed=args.seed + 1)
    val = sentiment_task.make_dataset(args.val_size, seed=args.seed + 2)
    return train, val


def batches(sentences, labels, batch_size, seed=None):
    """A `tf.data.Dataset` of batches, reshuffled each epoch if `seed` is
    given: `fit(shuffle=True)` cannot shuffle the dataset keras-hub makes
    of arrays (Keras warns, and trains in the same order every epoch)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((sentences, labels))
    if seed is not None:
        dataset = dataset.shuffle(len(labels), seed=seed)
    return dataset.batch(batch_size)


def build_classifier(args, base_weights=None):
    """The frozen base: the same weights for every call with the same
    `base_weights` file (offline) or preset.

    Without dropout: in a run this short its noise drowns what the prompt
    learns (measured on MiniLM: tests/integration/minilm_sst2.py).
    """
    if args.preset:
        return sentiment_task.preset_classifier(
            args.preset,
            sequence_length=args.sequence_length,
            dropout=0.0,
        )
    return sentiment_task.small_classifier(
        base_weights,
        sequence_length=args.sequence_length,
        dropout=0.0,
        weight_scale=OFFLINE_WEIGHT_SCALE,
    )


def prompt_config(args):
    if args.preset:
        # Lester et al.'s best init: the prompt starts as the label words.
        return keras_peft.PromptTuningConfig(
            length=args.length,
            init="labels",
            class_labels=["negative", "positive"],
        )
    # Embeddings of the vocabulary's words, none of them special tokens.
    return keras_peft.PromptTuningConfig(length=args.length, init="vocab")


def evaluate(logits, labels):
    """`(accuracy, loss)` of a classifier's logits: its share of correct
    classes, and its mean cross-entropy."""
    logits = logits - logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    accuracy = float(np.mean(np.argmax(logits, axis=-1) == labels))
    loss = float(-np.mean(log_probs[np.arange(len(labels)), labels]))
    return accuracy, loss


def main():
    args = parse_args()
    keras.utils.set_random_seed(args.seed)
    workdir = tempfile.mkdtemp(prefix="keras-peft-prompt-tuning-")
    (x_train, y_train), (x_val, y_val) = load_data(args)

    model = build_classifier(args)
    base_weights = None
    if not args.preset:
        base_weights = os.path.join(workdir, "base.weights.h5")
        model.backbone.save_weights(base_weights)

    # 1. Apply prompt tuning: the backbone is frozen; the prompt and the new
    #    classification head train.
    keras_peft.apply(model, prompt_config(args))
    print(keras_peft.trainable_summary(model))
    # The validation sentences' token ids, for calling models directly:
    # `predict` would trace a function per model, seconds each.
    features = model.preprocessor(x_val)
    logits = keras.ops.convert_to_numpy(model(features, training=False))
    accuracy_before, loss_before = evaluate(logits, y_val)

    # 2. Train with plain model.fit, the head at its own, larger rate (see
    #    the docstring). Make the optimizer after `apply`: it groups the
    #    variables that exist then.
    optimizer = keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(args.learning_rate),
        learning_rates={"head": args.head_learning_rate},
        model=model,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # XLA halves a training step of a real checkpoint on CPU (measured
        # on MiniLM); for the small offline model compiling costs more.
        jit_compile=bool(args.preset),
    )
    # Validation after every epoch; not in the seconds-long --tiny run,
    # where it would trace one more function.
    validation = None if args.tiny else batches(x_val, y_val, args.batch_size)
    model.fit(
        batches(x_train, y_train, args.batch_size, seed=args.seed),
        validation_data=validation,
        epochs=args.epochs,
        shuffle=False,  # `batches` shuffles; Keras' `shuffle` cannot.
        verbose=1,
    )

    # 3. Save only the prompt and the trained head: kilobytes.
    adapter_dir = args.output or os.path.join(workdir, "adapter")
    keras_peft.save_adapter(model, adapter_dir)
    size = sum(
        os.path.getsize(os.path.join(adapter_dir, f))
        for f in os.listdir(adapter_dir)
    )
    print(f"Saved adapter to {adapter_dir} ({size / 1024:.1f} KiB)")

    # 4. Load it into a fresh model with the same base weights.
    fresh = build_classifier(args, base_weights)
    keras_peft.load_adapter(fresh, adapter_dir)
    expected = keras.ops.convert_to_numpy(model(features, training=False))
    reloaded = keras.ops.convert_to_numpy(fresh(features, training=False))
    difference = float(np.max(np.abs(expected - reloaded)))
    accuracy, loss = evaluate(reloaded, y_val)
    majority = float(max(np.mean(y_val), 1 - np.mean(y_val)))
    print(
        f"Reloaded model: validation accuracy {accuracy:.3f} (before "
        f"training {accuracy_before:.3f}, majority class {majority:.3f}), "
        f"validation loss {loss:.4f} (before training {loss_before:.4f}), "
        f"max logit difference {difference:.2e}"
    )
    if difference > TOLERANCE:
        raise SystemExit(
            f"Reloaded predictions differ from the trained model's by more "
            f"than {TOLERANCE:g}."
        )
    print("OK: reloaded adapter reproduces the trained model's predictions.")

    # 5. Read the prompt back: the vocabulary words nearest each vector.
    tokenizer = model.preprocessor.tokenizer
    print("Words nearest the learned prompt vectors:")
    for position, words in enumerate(
        keras_peft.nearest_tokens(model, tokenizer, k=3)
    ):
        print(f"  {position}: {' '.join(words)}")


if __name__ == "__main__":
    main()
