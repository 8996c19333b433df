"""Compares fine-tuning methods on one backbone and one task.

In the style of He et al. 2022 (Fig. 1): the same `BertTextClassifier` is
trained once per method, on the same data, for the same number of epochs,
and each method's validation accuracy is set against the share of the
parameters it trains. The methods:

- `full`: full fine-tuning;
- `bitfit`: `keras_peft.BitFitConfig()`;
- `prompt`: `keras_peft.PromptTuningConfig(length=...)`;
- `prefix`: `keras_peft.PrefixTuningConfig(length=...)`;
- `lora_attn`, `lora_ffn`: `keras_peft.LoRAConfig(rank=8, targets=...)`;
- `adapter`: a sequential adapter, `keras_peft.AdapterConfig(bottleneck=r)`;
- `parallel`: a parallel adapter (`parallel=True`);
- `scaled_pa`: a scaled parallel adapter (`parallel=True, scale=4.0`);
- `mam`: `keras_peft.MAMConfig(prefix_length=30, bottleneck=r)`.

Where a method needs it (BitFit, prompt, prefix, the adapters and MAM: a
new classification head on a frozen backbone), groups of variables train at
their own rates with `keras_peft.GroupedOptimizer`, the head's far larger.
The default rates for a `--preset` are those measured on all-MiniLM-L6-v2
and SST-2 (`benchmarks/sst2_minilm.py`, `benchmarks/RESULTS.md`; the
comments in `PRESET_RATES` say which); `--lr`, `--head-lr` and `--group-lr`
override them per method.

Offline by default: the quickstart's small random BERT and its synthetic
sentiment task (`examples/sentiment_task.py`), a check that everything runs.
That BERT is not pretrained: its [CLS] output barely depends on the other
tokens, so the methods that keep its attention as it is (the adapters at the
FFN, BitFit, prompt and prefix) stay near chance there; compare methods on a
real checkpoint. `--preset` takes a keras-hub preset name or a local
directory (Hugging Face format too: its activation and accent stripping are
then read from its `config.json` and `tokenizer_config.json`, which
keras-hub's converter ignores), and `--data` a `sentence<TAB>label` file (a
header row is skipped; exact duplicate sentences are dropped, then
validation and training sets are split off it with `--seed`).

Writes a markdown table (to stdout and `--out`) and, when matplotlib is
installed (`pip install "keras-peft[plot]"`), a plot of accuracy against
the trainable share (`--plot`).

    python examples/compare_methods.py
    python examples/compare_methods.py --methods lora_attn,bitfit --epochs 2
    python examples/compare_methods.py --preset "$(../shared/tools/minilm)" \\
        --data ../shared/data/sst2/train.tsv --train 2000 --val 1000
"""

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import sentiment_task  # noqa: E402

import keras_peft  # noqa: E402

METHODS = (
    "full",
    "bitfit",
    "prompt",
    "prefix",
    "lora_attn",
    "lora_ffn",
    "adapter",
    "parallel",
    "scaled_pa",
    "mam",
)
# Learning rate, and the rates of variable groups that train at their own
# (`keras_peft.variable_groups`: "head", "adapter", ...), per method.
# With a preset: measured on MiniLM-L6 and SST-2 where noted
# (benchmarks/RESULTS.md); the checkpoint's pooler output is tiny (about
# 0.04 std), so a new head on it needs large steps.
PRESET_RATES = {
    "full": (5e-5, {}),  # measured
    # Probed (40 steps): at 5e-3 BitFit, at 3e-3 the adapters predict the
    # majority class.
    "bitfit": (2e-3, {"head": 1e-2}),
    "prompt": (3e-3, {"head": 1e-2}),  # measured
    "prefix": (5e-4, {"head": 1e-2}),  # measured; at 5e-3 it collapses [CLS]
    "lora_attn": (2e-3, {}),  # measured
    "lora_ffn": (2e-3, {}),  # LoRA attn's, not tuned: 0.752 on SST-2
    "adapter": (1e-3, {"head": 1e-2}),
    "parallel": (1e-3, {"head": 1e-2}),
    # s = 4 multiplies the adapter's update: at the parallel adapter's rate
    # it reached 0.757 on SST-2, at a quarter of it 0.821 (RESULTS.md).
    "scaled_pa": (2.5e-4, {"head": 1e-2}),
    # The prefix's rates, and the scaled PA's for its adapters (0.755 on
    # SST-2; the adapters at the prefix's 5e-4: 0.717; at 3e-3 the majority
    # class).
    "mam": (5e-4, {"head": 1e-2, "adapter": 2.5e-4}),
}
# The quickstart's random BERT learns its task at larger rates.
OFFLINE_RATES = {
    "full": (1e-3, {}),
    "bitfit": (1e-2, {}),
    "prompt": (3e-2, {}),
    "prefix": (3e-3, {"head": 3e-2}),
    "lora_attn": (5e-3, {}),
    "lora_ffn": (5e-3, {}),
    "adapter": (5e-3, {}),
    "parallel": (5e-3, {}),
    "scaled_pa": (5e-3, {}),
    "mam": (3e-3, {"head": 3e-2}),
}
# Sizes when not given: the offline task is small and its model's position
# table short (24 positions, of which a prompt takes `--prompt-length`).
DEFAULTS = {
    "offline": {
        "train": 512,
        "val": 256,
        "epochs": 4,
        "seq": 16,
        "batch": 32,
        "prompt_length": 8,
    },
    "preset": {
        "train": 2000,
        "val": 1000,
        "epochs": 3,
        "seq": 64,
        "batch": 32,
        "prompt_length": 20,
    },
}


def method_configs(method, args):
    """`(label, configs)`: how the table names a method, and what it
    applies."""
    r, b = args.rank, args.bottleneck
    if method == "full":
        return "full fine-tuning", []
    if method == "bitfit":
        return "BitFit", [keras_peft.BitFitConfig()]
    if method == "prompt":
        # Label-word init where the vocabulary has the words (a real one).
        labels = {}
        if args.preset and args.num_classes == 2:
            labels = {
                "init": "labels",
                "class_labels": ["negative", "positive"],
            }
        config = keras_peft.PromptTuningConfig(
            length=args.prompt_length, **labels
        )
        return f"prompt tuning l={args.prompt_length}", [config]
    if method == "prefix":
        config = keras_peft.PrefixTuningConfig(length=args.prefix_length)
        return f"prefix tuning l={args.prefix_length}", [config]
    if method in ("lora_attn", "lora_ffn"):
        targets = method.split("_")[1]
        config = keras_peft.LoRAConfig(rank=r, alpha=2 * r, targets=targets)
        return f"LoRA r={r} ({targets})", [config]
    if method == "adapter":
        config = keras_peft.AdapterConfig(bottleneck=b)
        return f"sequential adapter r={b} (ffn)", [config]
    if method == "parallel":
        config = keras_peft.AdapterConfig(bottleneck=b, parallel=True)
        return f"parallel adapter r={b} (ffn)", [config]
    if method == "scaled_pa":
        config = keras_peft.AdapterConfig(
            bottleneck=b, parallel=True, scale=args.scale
        )
        return f"scaled PA r={b} s={args.scale:g} (ffn)", [config]
    config = keras_peft.MAMConfig(
        prefix_length=args.mam_prefix_length, bottleneck=b, scale=args.scale
    )
    label = f"MAM l={args.mam_prefix_length} r={b} s={args.scale:g}"
    return label, [config]


def parse_rates(values, parser, flag, groups=False):
    """`["lora_attn=1e-3"]` -> `{("lora_attn", None): 0.001}`; with
    `groups`, `["mam.adapter=1e-3"]` -> `{("mam", "adapter"): 0.001}`."""
    rates = {}
    for value in values:
        key, _, rate = value.partition("=")
        method, _, group = key.partition(".") if groups else (key, "", "")
        if method not in METHODS or groups != bool(group):
            form = "METHOD.GROUP=RATE" if groups else "METHOD=RATE"
            parser.error(
                f"{flag} {value!r}: expected {form}, METHOD one of {METHODS}"
            )
        try:
            rates[method, group or None] = float(rate)
        except ValueError:
            parser.error(f"{flag} {value!r}: {rate!r} is not a number")
    return rates


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", help="keras-hub preset name or directory")
    parser.add_argument(
        "--data", help="sentence<TAB>label file (needs --preset)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    size = "(default: {} offline, {} with --preset)"
    for name, help_text in (
        ("train", "training examples"),
        ("val", "validation examples"),
        ("epochs", "epochs"),
        ("seq", "preprocessor sequence length"),
        ("batch", "batch size"),
        ("prompt-length", "prompt tuning's length l"),
    ):
        key = name.replace("-", "_")
        parser.add_argument(
            f"--{name}",
            type=int,
            help=f"{help_text} "
            + size.format(DEFAULTS["offline"][key], DEFAULTS["preset"][key]),
        )
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument(
        "--bottleneck", type=int, default=64, help="adapter and MAM width r"
    )
    parser.add_argument(
        "--scale", type=float, default=4.0, help="scaled PA and MAM scale s"
    )
    parser.add_argument("--prefix-length", type=int, default=10)
    parser.add_argument("--mam-prefix-length", type=int, default=30)
    parser.add_argument(
        "--lr",
        action="append",
        default=[],
        metavar="METHOD=RATE",
        help="a method's learning rate (repeatable)",
    )
    parser.add_argument(
        "--head-lr",
        action="append",
        default=[],
        metavar="METHOD=RATE",
        help="the classification head's own learning rate in a method "
        "(repeatable)",
    )
    parser.add_argument(
        "--group-lr",
        action="append",
        default=[],
        metavar="METHOD.GROUP=RATE",
        help="a variable group's own learning rate in a method, e.g. "
        "mam.adapter=1e-3 (repeatable; groups as keras_peft.variable_groups)",
    )
    parser.add_argument(
        "--schedule",
        choices=("constant", "linear"),
        default="constant",
        help="every rate constant, or warmed up linearly over --warmup of "
        "the steps, then decayed linearly, reaching 0 after the last step",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="share of the steps the linear schedule warms up over",
    )
    parser.add_argument(
        "--xla", action="store_true", help="compile with jit_compile=True"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--verbose", type=int, default=1, choices=(0, 1, 2), help="as in fit"
    )
    parser.add_argument(
        "--out", default="compare_methods.md", help="markdown table file"
    )
    parser.add_argument(
        "--plot", help="PNG file (default: --out with the suffix .png)"
    )
    args = parser.parse_args(argv)
    args.command = " ".join(
        ["python", "examples/compare_methods.py"]
        + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
    )
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods must be a subset of {METHODS}: {unknown}")
    if args.data and not args.preset:
        parser.error(
            "--data needs --preset (the offline model's vocabulary "
            "knows only the offline task's words)"
        )
    defaults = DEFAULTS["preset" if args.preset else "offline"]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = (args.train, args.val, args.epochs, args.seq, args.batch)
    if min(sizes) < 1:
        parser.error("sizes and --epochs must be positive")
    if not 0 <= args.warmup < 1:
        parser.error(f"--warmup must be in [0, 1): {args.warmup}")
    rates = PRESET_RATES if args.preset else OFFLINE_RATES
    overrides = parse_rates(args.lr, parser, "--lr")
    heads = parse_rates(args.head_lr, parser, "--head-lr")
    overrides.update({(m, "head"): rate for (m, _), rate in heads.items()})
    overrides.update(parse_rates(args.group_lr, parser, "--group-lr", True))
    args.rates = {}
    for method, (lr, groups) in rates.items():
        groups = dict(groups)
        for (m, group), rate in overrides.items():
            if m == method and group is None:
                lr = rate
            elif m == method:
                groups[group] = rate
        args.rates[method] = lr, groups
    if args.plot is None:
        args.plot = os.path.splitext(args.out)[0] + ".png"
    return args


def load_data(args):
    if args.data:
        return sentiment_task.load_tsv(
            args.data, args.train, args.val, args.seed
        )
    # Different seeds: no validation sentence list is the training one.
    train = sentiment_task.make_dataset(args.train, seed=args.seed + 1)
    val = sentiment_task.make_dataset(args.val, seed=args.seed + 2)
    return train, val


def build_classifier(args):
    """The base model, the same for every method (same seed)."""
    keras.utils.set_random_seed(args.seed)
    if not args.preset:
        return sentiment_task.small_classifier(sequence_length=args.seq)
    return sentiment_task.preset_classifier(
        args.preset, num_classes=args.num_classes, sequence_length=args.seq
    )


def batches(sentences, labels, args, seed=None):
    """A `tf.data.Dataset` of batches, reshuffled each epoch if `seed` is
    given: Keras ignores `fit(shuffle=True)` for the dataset keras-hub
    makes of arrays, and the seed gives every method the same order."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((sentences, labels))
    if seed is not None:
        dataset = dataset.shuffle(len(labels), seed=seed)
    return dataset.batch(args.batch)


@keras.saving.register_keras_serializable(package="compare_methods")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Up to `peak` over `warmup_steps` (step `i` of the warmup at
    `peak (i + 1) / warmup_steps`), then linearly down, reaching 0 at step
    `total_steps`, one past the last (the schedule of He et al.'s and Li &
    Liang's runs)."""

    def __init__(self, peak, warmup_steps, total_steps):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        up = (step + 1) / max(self.warmup_steps, 1)
        down = (self.total_steps - step) / max(
            self.total_steps - self.warmup_steps, 1
        )
        return self.peak * keras.ops.clip(keras.ops.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def rate(value, args):
    """`value`, or the `--schedule` that peaks at it."""
    if args.schedule == "constant":
        return value
    total = args.epochs * -(-args.train // args.batch)
    return LinearWarmupDecay(value, round(args.warmup * total), total)


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train_method(method, train, val, args):
    model = build_classifier(args)
    label, configs = method_configs(method, args)
    if configs:
        keras_peft.apply(model, configs)
    lr, groups = args.rates[method]
    optimizer = keras.optimizers.Adam(rate(lr, args))
    if groups:
        optimizer = keras_peft.GroupedOptimizer(
            optimizer,
            learning_rates={g: rate(v, args) for g, v in groups.items()},
            model=model,
        )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=True if args.xla else "auto",
    )
    summary = keras_peft.trainable_summary(model)
    print(f"\n== {method}: {label}\n{summary}", flush=True)
    timer = StepTimer()
    history = model.fit(
        batches(*train, args, seed=args.seed),
        validation_data=batches(*val, args),
        epochs=args.epochs,
        verbose=args.verbose,
        callbacks=[timer],
    )
    # He et al. count a prefix as what it is after training, and as
    # `save_adapter` stores it: the prefix, without the MLP that
    # reparametrizes it.
    saved = saved_total = None
    if summary.prefix_mlp:
        saved = summary.saved
        saved_total = (
            summary.total - summary.prefix_mlp + summary.computed_prefix
        )
    steps = timer.seconds[1:]  # the first traces the training function
    return {
        "method": method,
        "label": label,
        "lr": f"{lr:g}"
        + "".join(f"; {g} {rate:g}" for g, rate in sorted(groups.items())),
        "trainable": summary.trainable,
        "fraction": summary.fraction,
        "saved": saved,
        "saved_fraction": None if saved is None else saved / saved_total,
        "accuracy": [float(a) for a in history.history["val_accuracy"]],
        "step_ms": 1e3 * statistics.median(steps) if steps else None,
    }


def table(results):
    lines = [
        "| method | learning rate | trainable params | val accuracy | "
        "val accuracy by epoch | median step (ms) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        params = f"{r['trainable']:,} ({100 * r['fraction']:.2f}%)"
        if r["saved"] is not None:
            params += (
                f"; {r['saved']:,} ({100 * r['saved_fraction']:.2f}%) "
                "saved (the computed prefix)"
            )
        curve = " / ".join(f"{a:.3f}" for a in r["accuracy"])
        step = "n/a" if r["step_ms"] is None else f"{r['step_ms']:.0f}"
        lines.append(
            f"| {r['label']} | {r['lr']} | {params} | "
            f"{r['accuracy'][-1]:.3f} | {curve} | {step} |"
        )
    return "\n".join(lines)


def settings(args, wall):
    import tensorflow as tf

    model = args.preset or "the quickstart's small random BERT (offline)"
    data = args.data or "the quickstart's synthetic sentiment task"
    return "\n".join(
        [
            f"- Date: {datetime.date.today().isoformat()}",
            f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}, TensorFlow "
            f"{tf.__version__}, Keras {keras.__version__}, keras-hub "
            f"{keras_hub.__version__}",
            f"- Command: `{args.command}`",
            f"- Model: `BertTextClassifier` ({args.num_classes} classes) "
            f"on {model}; data: {data}, {args.train} training and "
            f"{args.val} validation examples (seed {args.seed}); sequence "
            f"length {args.seq}, batch {args.batch}, {args.epochs} "
            f"epoch(s), Adam, {args.schedule} rates"
            + (
                f" ({args.warmup:g} warmup)"
                if args.schedule != "constant"
                else ""
            )
            + (", XLA." if args.xla else "."),
            "- Trainable share: of all the model's parameters (frozen "
            "backbone, added weights and head). Median step: training steps "
            "but the first (which traces), progress-bar overhead included.",
            f"- Whole run {wall / 60:.1f} min.",
        ]
    )


def plot(results, path, title):
    """Accuracy against trainable share; `False` without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print(
            "matplotlib is not installed (pip install 'keras-peft[plot]'): "
            "no plot."
        )
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7.5, 4.8))
    points = []
    for r in results:
        x, y = 100 * r["fraction"], 100 * r["accuracy"][-1]
        if r["method"] == "full":
            axes.axhline(y, color="gray", linestyle="--", linewidth=0.8)
        if r["saved"] is not None:
            # Where the prefix ends up once its MLP is dropped.
            x_saved = 100 * r["saved_fraction"]
            axes.plot([x, x_saved], [y, y], ":", color="gray")
            axes.scatter([x_saved], [y], facecolors="none", edgecolors="k")
        axes.scatter([x], [y], zorder=3)
        points.append((x, y, r["label"]))
    axes.set_xscale("log")
    shares = [100 * r["fraction"] for r in results] + [
        100 * r["saved_fraction"] for r in results if r["saved"]
    ]
    # Room for the labels, which start right of their points.
    axes.set_xlim(min(shares) / 2, max(shares) * 8)
    axes.margins(y=0.1)
    axes.set_xlabel("trainable parameters (% of the model, log scale)")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    figure.text(
        0.01,
        0.01,
        "hollow: prefix as saved, without its MLP; dashed: full fine-tuning",
        fontsize=7,
        color="gray",
    )
    figure.tight_layout()
    _label_points(figure, axes, points)
    figure.savefig(path, dpi=150)
    pyplot.close(figure)
    return True


def _label_points(figure, axes, points, fontsize=8):
    """Labels each `(x, y, label)` point beside it, on the first side where
    the label covers no point and no label placed before (methods of the
    same size share an x)."""
    to_pixels = figure.dpi / 72
    pixels = [axes.transData.transform((x, y)) for x, y, _ in points]
    taken = [(px - 4, py - 4, px + 4, py + 4) for px, py in pixels]
    sides = ((5, 3), (5, -11), (-5, 3), (-5, -11), (5, 11), (-5, 11))
    for (x, y, label), (px, py) in zip(points, pixels):
        # About 0.6 em per character.
        width = 0.6 * fontsize * len(label) * to_pixels
        height = fontsize * to_pixels
        for dx, dy in sides:
            left = px + dx * to_pixels - (width if dx < 0 else 0)
            bottom = py + dy * to_pixels
            box = (left, bottom, left + width, bottom + height)
            if not any(_overlap(box, other) for other in taken):
                break
        taken.append(box)
        axes.annotate(
            label,
            (x, y),
            textcoords="offset points",
            xytext=(dx, dy),
            ha="right" if dx < 0 else "left",
            fontsize=fontsize,
        )


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    train, val = load_data(args)
    args.num_classes = int(max(train[1].max(), val[1].max())) + 1
    results = [train_method(m, train, val, args) for m in args.methods]
    wall = time.perf_counter() - started
    text = settings(args, wall) + "\n\n" + table(results)
    print("\n" + text)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {args.out}")
    name = os.path.basename(args.preset.rstrip("/")) if args.preset else None
    title = (
        f"{name or 'offline random BERT'}, "
        f"{os.path.basename(args.data) if args.data else 'synthetic task'}: "
        f"{args.train} train / {args.val} val examples, {args.epochs} "
        f"epoch(s), sequence length {args.seq}"
    )
    if plot(results, args.plot, title):
        print(f"wrote {args.plot}")
    return results


if __name__ == "__main__":
    main()
