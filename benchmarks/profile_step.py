"""Where a training step's time goes: a `tf.profiler` trace, summarized.

For each variant of `train_step.py` (same model, batch and configs) it
warms up, traces `--steps` training steps with `tf.profiler`, and sums the
CPU time of the TensorFlow ops in the trace by op type and by pass: forward
(the model's ops), backward (ops under `gradient_tape/`) and update (the
optimizer's). CPU time adds up every thread's ops, so it can exceed the
wall time on several cores; the shares are what compare.

Writes the `train_step_profile` section of `benchmarks/RESULTS.md` (run it
on an otherwise idle machine, like `train_step.py`).

Run:

    python benchmarks/profile_step.py
    python benchmarks/profile_step.py --variants full,prompt --no-write
"""

import argparse
import collections
import datetime
import glob
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import results_file  # noqa: E402
import tensorflow as tf  # noqa: E402
import train_step  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

DEFAULT_VARIANTS = ("full", "keras_peft_lora", "prompt", "prefix", "mh_pa")
TOP = 8  # op types listed per variant


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--steps", type=int, default=5, help="traced steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(train_step.VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}: {train_step.VARIANTS}")
    return args


def _pass_of(name):
    if "gradient_tape/" in name or "/gradients/" in name:
        return "backward"
    if "optimizer" in name.lower() or "adam" in name.lower():
        return "update"
    return "forward"


def summarize(logdir):
    """`{(pass, op type): microseconds}` over the trace's TensorFlow ops."""
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=1)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {i: m.name for i, m in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # Executed ops are traced as "node name:OpType".
                if ":" not in name or name.startswith(("$", "<")):
                    continue
                node, op_type = name.rsplit(":", 1)
                # TensorFlow ops only: not the executor's own events
                # ("Process", "Run"), which span the ops they run.
                if not hasattr(tf.raw_ops, op_type):
                    continue
                totals[_pass_of(node), op_type] += event.duration_ps / 1e6
    return totals


def profile(variant, args, x, y):
    bench_args = train_step.parse_args(
        ["--seq", str(args.seq), "--batch", str(args.batch), "--no-write"]
        + ["--variants", variant]
    )
    model = train_step.build_model(variant, bench_args)
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    logdir = tempfile.mkdtemp(prefix=f"keras-peft-profile-{variant}-")
    tf.profiler.experimental.start(logdir)
    for _ in range(args.steps):
        model.train_on_batch(x, y)
    tf.profiler.experimental.stop()
    return summarize(logdir)


def report(results, args):
    lines = [
        "## Where a training step's time goes (`benchmarks/profile_step.py`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {results_file.machine()}",
        "- Model, batch and configs as in the `train_step` section (batch "
        f"{args.batch} x sequence {args.seq}, no XLA); `tf.profiler` traces "
        f"{args.steps} `train_on_batch` steps after {args.warmup} warm-up "
        "steps. CPU time of the TensorFlow ops in the trace, per step, by "
        "pass (backward: ops under `gradient_tape/`; update: the "
        "optimizer's) and by op type; CPU time sums every thread's ops.",
        "",
        "| variant | forward (ms) | backward (ms) | update (ms) | total (ms) "
        "| vs full | top op types (ms: forward / backward) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    full_total = sum(results["full"].values()) if "full" in results else None
    for variant, totals in results.items():
        per_pass = collections.Counter()
        per_type = collections.Counter()
        for (phase, op_type), us in totals.items():
            per_pass[phase] += us / args.steps / 1e3
            per_type[op_type] += us / args.steps / 1e3
        total = sum(per_pass.values())
        top = ", ".join(
            f"{op} {totals[('forward', op)] / args.steps / 1e3:.0f} / "
            f"{totals[('backward', op)] / args.steps / 1e3:.0f}"
            for op, _ in per_type.most_common(TOP)
        )
        ratio = (
            f"{total / (full_total / args.steps / 1e3):.3f}x"
            if full_total
            else "n/a"
        )
        lines.append(
            f"| {train_step.LABELS[variant]} | {per_pass['forward']:.0f} | "
            f"{per_pass['backward']:.0f} | {per_pass['update']:.0f} | "
            f"{total:.0f} | {ratio} | {top} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    bench_args = train_step.parse_args(
        ["--seq", str(args.seq), "--batch", str(args.batch), "--no-write"]
        + ["--variants", "full"]
    )
    x, y = train_step.make_batch(bench_args)
    results = {}
    for variant in args.variants:
        results[variant] = profile(variant, args, x, y)
        print(f"profiled {variant}", flush=True)
    body = report(results, args)
    print(body)
    if not args.no_write:
        results_file.update_section("train_step_profile", body)
        print(f"\nwrote train_step_profile in {results_file.RESULTS}")


if __name__ == "__main__":
    main()
