"""Times one training step: full fine-tuning vs the keras-peft methods.

Measures the wall time of one optimizer step (forward, backward, Adam
update) of a `keras_hub.models.BertTextClassifier` over a randomly
initialised `BertBackbone` (hidden 256, 4 layers, 4 heads, FFN 1024) on
random token ids, for these variants, built in one run:

- `full`: every weight trains (full fine-tuning);
- `keras_peft_lora`: `keras_peft.apply(model, LoRAConfig(rank=8, alpha=16))`
  (LoRA on the attention query and value projections);
- `keras_hub_lora`: keras-hub's own `backbone.enable_lora(8)`;
- `bitfit`: `BitFitConfig()` (every bias of the backbone);
- `adapter`: `AdapterConfig(bottleneck=64)` (sequential, at every FFN);
- `parallel`: `AdapterConfig(bottleneck=64, parallel=True)` (FFN);
- `scaled_pa`: `AdapterConfig(bottleneck=64, parallel=True, scale=4.0)`;
- `mh_pa`: `AdapterConfig(bottleneck=8, location="attn", parallel=True,
  multi_head=True)` (a parallel adapter per attention head);
- `mam`: `MAMConfig(prefix_length=30, bottleneck=64)` (prefix with its MLP
  at every attention, scaled parallel adapter at every FFN);
- `prompt`: `PromptTuningConfig(length=20)`;
- `prefix`: `PrefixTuningConfig(length=30)` (trained through its MLP).

Each variant gets its own fresh model, compiled with Adam and sparse
categorical cross-entropy on logits. Steps run through
`model.train_on_batch`, whose first calls (trace and compile) are warm-up
and never timed. Timed steps are taken in rounds that alternate between the
variants, rotating their order each round, so that background load affects
all of them alike; the reported figure is the median over all timed steps.

The targets, as ratios of the full fine-tuning step: LoRA at most 0.68x
(the backward pass through frozen weights still forms the activations'
gradients: about 2/3 of full fine-tuning's work) and no slower than
keras-hub's `enable_lora`; prefix tuning (l=30) at most 0.72x; prompt
tuning (l=20) at most 0.78x; the scaled parallel adapter at most 0.75x. The
results replace the `train_step` (or, with `--jit-compile`, the
`train_step_xla`) section of `benchmarks/RESULTS.md`, with the machine's
load average at the start and the end. Numbers are only meaningful on an
otherwise idle machine.

`--memory` measures memory instead (Linux): each variant in a process of
its own builds and compiles its model, then its peak resident set size is
reset (`/proc/self/clear_refs`) and it trains `--memory-steps` steps; the
rise of the peak over the resident size before them is what training holds
(the traced step, optimizer state, gradients, activations). Target: LoRA's
rise at most 0.55x full fine-tuning's. Written to the `train_step_memory`
(or `train_step_memory_xla`) section.

Run:

    python benchmarks/train_step.py
    python benchmarks/train_step.py --steps 3 --warmup 1 --seq 32 --no-write
    python benchmarks/train_step.py --variants full,scaled_pa --no-write
    python benchmarks/train_step.py --jit-compile
    python benchmarks/train_step.py --memory
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_models  # noqa: E402
import child_memory  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import results_file  # noqa: E402

import keras_peft  # noqa: E402

VARIANTS = (
    "full",
    "keras_peft_lora",
    "keras_hub_lora",
    "bitfit",
    "adapter",
    "parallel",
    "scaled_pa",
    "mh_pa",
    "mam",
    "prompt",
    "prefix",
)
LABELS = {
    "full": "full fine-tuning",
    "keras_peft_lora": "keras-peft LoRA (q, v)",
    "keras_hub_lora": "keras-hub enable_lora (q, v)",
    "bitfit": "BitFit",
    "adapter": "sequential adapter r=64 (ffn)",
    "parallel": "parallel adapter r=64 (ffn)",
    "scaled_pa": "scaled PA r=64 s=4 (ffn)",
    "mh_pa": "multi-head PA r=8 per head (attn)",
    "mam": "MAM l=30 r=64 s=4 (prefix MLP)",
    "prompt": "prompt tuning l=20",
    "prefix": "prefix tuning l=30 (MLP)",
}
# Each variant's configs (LoRA's rank comes from --rank).
CONFIGS = {
    "bitfit": lambda: [keras_peft.BitFitConfig()],
    "adapter": lambda: [keras_peft.AdapterConfig(bottleneck=64)],
    "parallel": lambda: [
        keras_peft.AdapterConfig(bottleneck=64, parallel=True)
    ],
    "scaled_pa": lambda: [
        keras_peft.AdapterConfig(bottleneck=64, parallel=True, scale=4.0)
    ],
    "mh_pa": lambda: [
        keras_peft.AdapterConfig(
            bottleneck=8, location="attn", parallel=True, multi_head=True
        )
    ],
    "mam": lambda: [keras_peft.MAMConfig(prefix_length=30, bottleneck=64)],
    "prompt": lambda: [keras_peft.PromptTuningConfig(length=20)],
    "prefix": lambda: [keras_peft.PrefixTuningConfig(length=30)],
}
# Step time targets, as ratios to the full fine-tuning step.
STEP_TARGETS = {
    "keras_peft_lora": 0.68,
    "prefix": 0.72,
    "prompt": 0.78,
    "scaled_pa": 0.75,
}
MEMORY_VARIANTS = ("full", "keras_peft_lora", "prompt", "prefix", "scaled_pa")
MEMORY_TARGET = 0.55


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=int, default=30, help="timed steps per variant"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps per variant"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="rounds the timed steps are split into, alternating variants",
    )
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument("--batch", type=int, default=16, help="batch size")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument(
        "--vocab", type=int, default=30522, help="vocabulary size"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (full is "
        "always timed: the targets are ratios to it)",
    )
    parser.add_argument(
        "--jit-compile",
        action="store_true",
        help="compile every variant with XLA (jit_compile=True)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="measure the resident memory training adds, per variant",
    )
    parser.add_argument(
        "--memory-steps",
        type=int,
        default=5,
        help="training steps per variant with --memory",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print only; leave benchmarks/RESULTS.md alone (smoke runs)",
    )
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.rounds < 1:
        parser.error("--warmup and --rounds must be at least 1")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the quartiles need two)")
    args.rounds = min(args.rounds, args.steps)
    variants = {v.strip() for v in args.variants.split(",") if v.strip()}
    unknown = sorted(variants - set(VARIANTS))
    if unknown:
        parser.error(f"--variants must be a subset of {VARIANTS}: {unknown}")
    args.variants = [v for v in VARIANTS if v in variants | {"full"}]
    if len(args.variants) < len(VARIANTS) and not args.no_write:
        parser.error(
            "a subset of --variants needs --no-write (the results "
            "section holds every variant)"
        )
    return args


def build_model(variant, args):
    model = bench_models.bert_classifier(args.vocab, args.seq, args.seed)
    backbone = model.backbone
    if variant == "keras_peft_lora":
        config = keras_peft.LoRAConfig(rank=args.rank, alpha=2 * args.rank)
        keras_peft.apply(model, config)
    elif variant == "keras_hub_lora":
        backbone.enable_lora(args.rank)
    elif variant in CONFIGS:
        keras_peft.apply(model, CONFIGS[variant]())
    model.compile(
        jit_compile=True if args.jit_compile else "auto",
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def make_batch(args):
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.seq)
    x = {
        "token_ids": rng.integers(1, args.vocab, shape, dtype="int32"),
        "segment_ids": np.zeros(shape, dtype="int32"),
        "padding_mask": np.ones(shape, dtype="bool"),
    }
    y = rng.integers(0, 2, (args.batch,), dtype="int32")
    # Tensors, not arrays, so every call hits the same traced function.
    x = {k: keras.ops.convert_to_tensor(v) for k, v in x.items()}
    return x, keras.ops.convert_to_tensor(y)


def count_trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def qv_biases_trainable(model):
    """Whether any attention query/value bias is among the trainables."""
    return any(
        w.path.endswith(("query/bias", "value/bias"))
        for w in model.trainable_weights
    )


def time_steps(models, x, y, args):
    times = {v: [] for v in models}
    names = list(models)
    for round_index in range(args.rounds):
        steps = args.steps // args.rounds
        steps += round_index < args.steps % args.rounds
        shift = round_index % len(names)
        for variant in names[shift:] + names[:shift]:
            model = models[variant]
            for _ in range(steps):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times[variant].append(time.perf_counter() - start)
    return times


def quartiles_ms(values):
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 1e3 * q1, 1e3 * statistics.median(values), 1e3 * q3


def verdict(ok):
    return "PASS" if ok else "MISS"


def report(times, stats, args, wall):
    med = {v: quartiles_ms(t)[1] for v, t in times.items()}
    lines = [
        "## Training step time (`benchmarks/train_step.py"
        + (" --jit-compile`, XLA)" if args.jit_compile else "`)"),
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {results_file.machine()}",
        f"- Model: random `BertBackbone` (vocab {args.vocab}, hidden 256, "
        "4 layers, 4 heads, FFN 1024) in a `BertTextClassifier` "
        "(2 classes, no preprocessor); Adam, sparse categorical "
        "cross-entropy on logits; `jit_compile` "
        f"{stats['full']['jit_compile']}.",
        f"- Batch {args.batch} x sequence {args.seq}, random token ids; "
        f"LoRA rank {args.rank}, alpha {2 * args.rank}.",
        f"- {args.warmup} untimed warm-up steps per variant (trace and "
        f"compile), then {args.steps} timed `train_on_batch` steps per "
        f"variant in {args.rounds} rounds alternating the variants "
        "(order rotated each round); median over all timed steps. "
        f"Whole run {wall:.0f} s; 1-minute load average "
        f"{stats['load'][0]:.1f} at the start, {stats['load'][1]:.1f} at "
        f"the end ({os.cpu_count()} cores; other users' processes "
        "included).",
        "",
        "| variant | trainable params | q/v biases trainable | "
        "step median (ms) | p25..p75 (ms) | vs full |",
        "|---|---:|:---:|---:|---:|---:|",
    ]
    for variant in args.variants:
        q1, q2, q3 = quartiles_ms(times[variant])
        s = stats[variant]
        lines.append(
            f"| {LABELS[variant]} | {s['trainable']:,} | "
            f"{'yes' if s['qv_bias'] else 'no'} | {q2:.1f} | "
            f"{q1:.1f}..{q3:.1f} | {q2 / med['full']:.3f}x |"
        )
    targets = []
    for variant, target in STEP_TARGETS.items():
        if variant not in med:
            continue
        ratio = med[variant] / med["full"]
        targets.append(
            f"| {LABELS[variant]} step <= {target:.2f}x full fine-tuning "
            f"step | {ratio:.3f}x | {verdict(ratio <= target)} |"
        )
    if "keras_peft_lora" in med and "keras_hub_lora" in med:
        ratio = med["keras_peft_lora"] / med["keras_hub_lora"]
        targets.append(
            "| keras-peft LoRA step no slower than keras-hub `enable_lora` "
            f"| {ratio:.3f}x | {verdict(ratio <= 1.0)} |"
        )
    if targets:
        lines += ["", "| target | measured | result |", "|---|---:|:---:|"]
        lines += targets
    return "\n".join(lines)


def measure_memory_child(variant, args):
    """In a process of its own: the peak resident size training adds."""
    x, y = make_batch(args)
    model = build_model(variant, args)
    before = child_memory.memory_kib("VmRSS")
    child_memory.reset_peak()
    # The first step traces and creates the optimizer's variables (Adam's
    # two moments per trainable weight): part of what training holds.
    for _ in range(args.memory_steps):
        model.train_on_batch(x, y)
    peak = child_memory.memory_kib("VmHWM")
    steady_before = child_memory.memory_kib("VmRSS")
    child_memory.reset_peak()
    for _ in range(args.memory_steps):
        model.train_on_batch(x, y)
    steady_peak = child_memory.memory_kib("VmHWM")
    print(
        json.dumps(
            {
                "variant": variant,
                "trainable": count_trainable(model),
                "rss_before_mib": before / 1024,
                "peak_mib": peak / 1024,
                "rise_mib": (peak - before) / 1024,
                "steady_rise_mib": (steady_peak - steady_before) / 1024,
            }
        )
    )


def measure_memory(args):
    rows = {}
    for variant in MEMORY_VARIANTS:
        if variant not in args.variants:
            continue
        command = [sys.executable, os.path.abspath(__file__)]
        command += ["--memory-child", variant, "--seq", str(args.seq)]
        command += ["--batch", str(args.batch), "--rank", str(args.rank)]
        command += ["--memory-steps", str(args.memory_steps)]
        command += ["--vocab", str(args.vocab), "--seed", str(args.seed)]
        if args.jit_compile:
            command.append("--jit-compile")
        rows[variant] = child_memory.run_child(command)
        print(rows[variant], flush=True)
    return rows


def memory_report(rows, args, wall):
    full = rows["full"]["rise_mib"]

    def ratio(value):
        return f"{value / full:.3f}x" if full > 0 else "n/a"

    lines = [
        "## Memory that training adds (`benchmarks/train_step.py --memory"
        + (" --jit-compile`)" if args.jit_compile else "`)"),
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {results_file.machine()}",
        "- Model and batch as in the `train_step` section (batch "
        f"{args.batch} x sequence {args.seq}); `jit_compile` "
        f"{'True' if args.jit_compile else 'auto'}.",
        "- Each variant in a process of its own, with glibc's mmap "
        "threshold fixed at 64 KiB (freed buffers leave the resident set). "
        "Rise: the peak resident size (VmHWM, reset through "
        "`/proc/self/clear_refs` once the model is built and compiled) "
        f"over {args.memory_steps} training steps, minus the resident size "
        "(VmRSS) before them; it holds the traced step, the optimizer's "
        "variables (Adam's moments), the gradients and the activations "
        "kept for the backward pass. Steady rise: the same over "
        f"{args.memory_steps} more steps, from the resident size after "
        f"the first ones. Whole run {wall:.0f} s.",
        "",
        "| variant | trainable params | RSS before (MiB) | peak (MiB) | "
        "rise (MiB) | rise vs full | steady rise (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, row in rows.items():
        lines.append(
            f"| {LABELS[variant]} | {row['trainable']:,} | "
            f"{row['rss_before_mib']:.0f} | {row['peak_mib']:.0f} | "
            f"{row['rise_mib']:.1f} | {ratio(row['rise_mib'])} | "
            f"{row['steady_rise_mib']:.1f} |"
        )
    if "keras_peft_lora" in rows and full > 0:
        lora = rows["keras_peft_lora"]["rise_mib"] / full
        lines += [
            "",
            "| target | measured | result |",
            "|---|---:|:---:|",
            f"| keras-peft LoRA's RSS rise <= {MEMORY_TARGET:.2f}x full "
            f"fine-tuning's | {lora:.3f}x | "
            f"{verdict(lora <= MEMORY_TARGET)} |",
        ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        measure_memory_child(args.memory_child, args)
        return
    if args.memory:
        started = time.perf_counter()
        rows = measure_memory(args)
        body = memory_report(rows, args, time.perf_counter() - started)
        print(body)
        if not args.no_write:
            section = "train_step_memory" + ("_xla" if args.jit_compile else "")
            results_file.update_section(section, body)
            print(f"\nwrote {section} in {results_file.RESULTS}")
        return
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    x, y = make_batch(args)
    models, stats = {}, {}
    for variant in args.variants:
        model = build_model(variant, args)
        models[variant] = model
        stats[variant] = {
            "trainable": count_trainable(model),
            "qv_bias": qv_biases_trainable(model),
            "jit_compile": model.jit_compile,
        }
        print(
            f"built {variant}: {stats[variant]['trainable']:,} trainable "
            f"parameters, q/v biases trainable: {stats[variant]['qv_bias']}",
            flush=True,
        )
    # Warm up only once every model is built: seeding the next model
    # (`keras.utils.set_random_seed`) clears TensorFlow's kernel caches, so
    # the next step of every model built before it would be slow again.
    for model in models.values():
        for _ in range(args.warmup):
            model.train_on_batch(x, y)
    times = time_steps(models, x, y, args)
    stats["load"] = load_at_start, os.getloadavg()[0]
    body = report(times, stats, args, time.perf_counter() - started)
    print(body)
    if args.no_write:
        print("\n(--no-write: benchmarks/RESULTS.md left unchanged)")
    else:
        section = "train_step_xla" if args.jit_compile else "train_step"
        results_file.update_section(section, body)
        print(f"\nwrote the {section} section of {results_file.RESULTS}")


if __name__ == "__main__":
    main()
