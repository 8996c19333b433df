"""Checks that the methods learn: SST-2 on a real pretrained BERT (MiniLM-L6).

Fine-tunes `keras_hub.models.BertTextClassifier` (2 classes) built from the
pretrained all-MiniLM-L6-v2 checkpoint that `../shared/tools/minilm` provides
(6 layers, hidden 384) on the same N examples of the GLUE SST-2 training set
(`../shared/data/sst2/train.tsv`) for the same number of epochs, five ways:

- `head`: head only, the whole backbone frozen (`backbone.trainable = False`);
- `lora`: `keras_peft.apply(model, LoRAConfig(rank=8, alpha=16))` (LoRA on
  the attention query and value projections, classification head trainable);
- `prompt`: `PromptTuningConfig(length=20, init="labels", class_labels=
  ["negative", "positive"])` (prompt after [CLS], head trainable at its own
  learning rate, `--lr-prompt-head`);
- `prefix`: `PrefixTuningConfig(length=10)` (every self-attention, MLP
  reparametrization, head trainable at `--lr-prompt-head`);
- `full`: full fine-tuning.

SST-2's labelled test set is not public, so a validation set is split off the
training file with a fixed seed (exact duplicate sentences are dropped first,
so no validation sentence is also a training sentence; the file holds
overlapping sub-phrases of the same reviews, so the split is still easier
than GLUE's dev set). Reported per variant: validation accuracy after each
epoch, trainable parameters, training wall time per epoch (first step's
start to last step's end; the first epoch includes tracing) and the median
step time.

The checkpoint is loaded with the two fixes `../shared/tools/minilm`
documents: exact GELU in the feed-forward blocks, and a tokenizer that
strips accents. The results replace the `sst2_minilm` section of
`benchmarks/RESULTS.md`. If `../shared` or the checkpoint is missing the
script says so and exits without doing anything.

Run:

    python benchmarks/sst2_minilm.py
    python benchmarks/sst2_minilm.py --train 64 --val 64 --epochs 1 --no-write
    python benchmarks/sst2_minilm.py --variants lora --train 300 --val 300 \
        --batch 8 --epochs 2 --no-write
"""

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

VARIANTS = ("head", "lora", "prompt", "prefix", "full")
LABELS = {
    "head": "head only (backbone frozen)",
    "lora": "keras-peft LoRA r=8 (q, v)",
    "prompt": "keras-peft prompt tuning l=20 (labels init)",
    "prefix": "keras-peft prefix tuning l=10 (MLP reparam.)",
    "full": "full fine-tuning",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--train", type=int, default=2000, help="training examples (N)"
    )
    parser.add_argument(
        "--val", type=int, default=1000, help="validation examples"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="batch size")
    parser.add_argument(
        "--seq", type=int, default=64, help="preprocessor sequence length"
    )
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lr-head", type=float, default=3e-2)
    parser.add_argument("--lr-lora", type=float, default=2e-3)
    parser.add_argument("--lr-prompt", type=float, default=3e-3)
    parser.add_argument("--lr-prefix", type=float, default=5e-4)
    parser.add_argument("--lr-full", type=float, default=5e-5)
    parser.add_argument(
        "--lr-prompt-head",
        type=float,
        default=1e-2,
        help="the classification head's own learning rate in the prompt "
        "and prefix variants",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument(
        "--data",
        default=os.path.join(SHARED, "data", "sst2", "train.tsv"),
        help="SST-2 train.tsv (sentence<TAB>label)",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="all-MiniLM-L6-v2 directory (default: ../shared/tools/minilm)",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print only; leave benchmarks/RESULTS.md alone (smoke runs)",
    )
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--variants must be a subset of {VARIANTS}: {unknown}")
    if min(args.train, args.val, args.epochs, args.batch, args.seq) < 1:
        parser.error("sizes and --epochs must be positive")
    return args


def find_checkpoint(args):
    """The checkpoint directory, or `None` with a reason printed."""
    if args.checkpoint:
        path = args.checkpoint
    else:
        tool = os.path.join(SHARED, "tools", "minilm")
        if not os.path.exists(tool):
            print(f"skipped: {tool} not found (no ../shared checkout).")
            return None
        try:
            result = subprocess.run(
                [tool], capture_output=True, text=True, timeout=600
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            print(f"skipped: {tool} failed: {error}")
            return None
        path = result.stdout.strip()
        if result.returncode != 0 or not path:
            print(f"skipped: {tool} could not provide the checkpoint.")
            return None
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        print(f"skipped: no model.safetensors under {path!r}.")
        return None
    return path


def load_sst2(path, args):
    """(train, val) lists of (sentence, label), disjoint, seeded shuffle."""
    import numpy as np

    rows, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            sentence, _, label = line.rstrip("\n").rpartition("\t")
            sentence = sentence.strip()
            if not label.strip().isdigit():
                continue  # the header row
            if sentence and sentence not in seen:
                seen.add(sentence)
                rows.append((sentence, int(label)))
    if args.train + args.val > len(rows):
        raise SystemExit(
            f"--train + --val = {args.train + args.val} exceeds the "
            f"{len(rows)} distinct sentences in {path}"
        )
    order = np.random.default_rng(args.seed).permutation(len(rows))
    val = [rows[i] for i in order[: args.val]]
    train = [rows[i] for i in order[args.val : args.val + args.train]]
    return train, val


def build_model(variant, checkpoint, args):
    import keras
    import keras_hub

    import keras_peft

    keras.utils.set_random_seed(args.seed)
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=os.path.join(checkpoint, "vocab.txt"),
        lowercase=True,
        strip_accents=True,
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=args.seq
    )
    model = keras_hub.models.BertTextClassifier.from_preset(
        checkpoint, num_classes=2, preprocessor=preprocessor
    )
    # keras-hub's BERT uses the tanh-approximate GELU; the checkpoint was
    # trained with the exact one.
    for layer in model.backbone._flatten_layers(include_self=False):
        dense = getattr(layer, "_feedforward_intermediate_dense", None)
        if dense is not None:
            dense.activation = keras.activations.gelu
    if variant == "head":
        model.backbone.trainable = False
        lr = args.lr_head
    elif variant == "lora":
        config = keras_peft.LoRAConfig(rank=args.rank, alpha=2 * args.rank)
        keras_peft.apply(model, config)
        lr = args.lr_lora
    elif variant == "prompt":
        config = keras_peft.PromptTuningConfig(
            length=20, init="labels", class_labels=["negative", "positive"]
        )
        keras_peft.apply(model, config)
        lr = args.lr_prompt
    elif variant == "prefix":
        keras_peft.apply(model, keras_peft.PrefixTuningConfig(length=10))
        lr = args.lr_prefix
    else:
        lr = args.lr_full
    head_lr = None
    if variant in ("prompt", "prefix"):
        head_lr = args.lr_prompt_head
    model.compile(
        optimizer=head_scaled_adam(model, lr, head_lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model, lr, head_lr


def head_scaled_adam(model, lr, head_lr):
    """Adam at `lr`, with the classification head at `head_lr` if given."""
    import keras

    import keras_peft

    if head_lr is None:
        return keras.optimizers.Adam(lr)
    return keras_peft.GroupedOptimizer(
        keras.optimizers.Adam(lr), learning_rates={"head": head_lr}, model=model
    )


def make_dataset(rows, args, shuffle):
    import tensorflow as tf

    sentences = tf.constant([s for s, _ in rows])
    labels = tf.constant([y for _, y in rows], dtype=tf.int32)
    ds = tf.data.Dataset.from_tensor_slices((sentences, labels))
    if shuffle:
        ds = ds.shuffle(len(rows), seed=args.seed)
    return ds.batch(args.batch)


def epoch_recorder(variant, epochs):
    """A callback that times each epoch's training steps and keeps the
    validation accuracy Keras computes after each epoch."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_s, self.step_s, self.accuracy = [], [], []

        def on_train_batch_begin(self, batch, logs=None):
            self._step_start = time.perf_counter()
            if batch == 0:
                self._epoch_start = self._step_start

        def on_train_batch_end(self, batch, logs=None):
            self._step_end = time.perf_counter()
            self.step_s.append(self._step_end - self._step_start)

        def on_epoch_end(self, epoch, logs=None):
            # From the first step's start to the last step's end: before
            # the first, Keras drops the last epoch's tf.data iterator, which
            # can stall for many seconds, idle, on tf.data's autotuning
            # thread; after the last, validation runs.
            self.epoch_s.append(self._step_end - self._epoch_start)
            self.accuracy.append(float(logs["val_accuracy"]))
            print(
                f"{variant}: epoch {epoch + 1}/{epochs} "
                f"{self.epoch_s[-1]:.1f} s, val accuracy "
                f"{self.accuracy[-1]:.4f}",
                flush=True,
            )

    return EpochRecorder()


def run_variant(variant, checkpoint, train, val, args):
    import keras_peft

    model, lr, head_lr = build_model(variant, checkpoint, args)
    summary = keras_peft.trainable_summary(model)
    recorder = epoch_recorder(variant, args.epochs)
    # One `fit` for all epochs, so Keras keeps one validation iterator.
    model.fit(
        make_dataset(train, args, shuffle=True),
        validation_data=make_dataset(val, args, shuffle=False),
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
        callbacks=[recorder],
    )
    # The first step traces the training function.
    steps = recorder.step_s[1:]
    return {
        "lr": f"{lr:g}" + ("" if head_lr is None else f" (head {head_lr:g})"),
        "trainable": int(summary.trainable),
        "total": int(summary.total),
        "epoch_s": recorder.epoch_s,
        "step_ms": 1e3 * statistics.median(steps) if steps else None,
        "accuracy": recorder.accuracy,
    }


def report(results, args, checkpoint, wall):
    import results_file

    lines = [
        "## SST-2 on pretrained MiniLM-L6 (`benchmarks/sst2_minilm.py`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {results_file.machine()}",
        f"- Checkpoint: {os.path.basename(checkpoint.rstrip('/'))} "
        "(6 layers, hidden 384) as a `BertTextClassifier` (2 classes, "
        "pooled [CLS]) with exact GELU and an accent-stripping tokenizer.",
        f"- Data: the same {args.train} SST-2 training examples for every "
        f"variant, validation on {args.val} other ones split off "
        f"`train.tsv` (distinct sentences, seed {args.seed}); sequence "
        f"length {args.seq}, batch {args.batch}, {args.epochs} epoch(s), "
        "Adam, dropout 0.1.",
        "- Epoch time runs from the first training step's start to the "
        "last one's end (validation and tf.data iterator setup excluded); "
        "the first epoch includes tracing. The median step time (over all "
        "steps but the first, which traces) is the steadier figure when "
        "the machine is not idle.",
        "- Learning rates: the checkpoint's pooler output is tiny (about "
        "0.04 std), so the head alone needs a large one; LoRA's update also "
        "reaches the logits through that frozen pooler. Prompt and prefix "
        "tuning train the new head at its own rate "
        f"({args.lr_prompt_head:g}, with `keras_peft.GroupedOptimizer`): at "
        "the prompt's or prefix's rate the head barely moves and the model "
        "predicts the majority class; at the "
        "head's rate the MLP-reparametrized prefix collapses the [CLS] "
        "representation (majority class too, measured at 5e-3).",
        f"- Whole run {wall / 60:.1f} min.",
        "",
        "| variant | learning rate | trainable params | val accuracy by "
        "epoch | final val accuracy | s per epoch | median step (ms) |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for variant, r in results.items():
        curve = " / ".join(f"{a:.3f}" for a in r["accuracy"])
        times = " / ".join(f"{t:.0f}" for t in r["epoch_s"])
        share = 100 * r["trainable"] / r["total"]
        step = "n/a" if r["step_ms"] is None else f"{r['step_ms']:.0f}"
        lines.append(
            f"| {LABELS[variant]} | {r['lr']} | {r['trainable']:,} "
            f"({share:.2f}%) | {curve} | {r['accuracy'][-1]:.3f} | "
            f"{times} | {step} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.exists(args.data):
        print(f"skipped: SST-2 data not found at {args.data}.")
        return
    checkpoint = find_checkpoint(args)
    if checkpoint is None:
        return
    started = time.perf_counter()
    train, val = load_sst2(args.data, args)
    print(
        f"checkpoint {checkpoint}; {len(train)} train / {len(val)} val "
        f"examples ({sum(y for _, y in train)} positive in train)",
        flush=True,
    )
    results = {}
    for variant in args.variants:
        results[variant] = run_variant(variant, checkpoint, train, val, args)
    body = report(results, args, checkpoint, time.perf_counter() - started)
    print(body)
    if args.no_write:
        print("\n(--no-write: benchmarks/RESULTS.md left unchanged)")
    else:
        import results_file

        results_file.update_section("sst2_minilm", body)
        print(f"\nwrote the sst2_minilm section of {results_file.RESULTS}")


if __name__ == "__main__":
    main()
