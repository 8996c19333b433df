"""One backbone serving 100 tasks: memory and mixed-batch throughput.

A `keras_hub.models.BertTextClassifier` over a randomly initialised
`BertBackbone` (hidden 256, 4 layers, 4 heads, FFN 1024, 2 classes), for
each method (`--methods`: LoRA with rank 8 and alpha 16 on the attention
query and value projections; prompt tuning with 20 prompt vectors; prefix
tuning with 20 keys and values per attention layer, trained directly, as
served; BitFit), with:

- `one`: one adapter, the model as a single-task user has it;
- `active`: 100 such adapters, each with its own head, one active
  (`keras_peft.set_active`), every batch for that task;
- `mixed`: the same 100 adapters behind `keras_peft.multi_task`, every
  batch of 32 drawing its task ids uniformly at random.

Memory: each variant builds in a process of its own; the script reports
the bytes of the model's variables and the resident size (VmRSS) once the
model is built and its `predict` traced, then the rise of the peak
resident size (VmHWM, reset through `/proc/self/clear_refs`) over
`--steps` predictions. Served: the single-task model and `multi_task`
models of 2 and of all the tasks are exported (`export_saved_model`),
each SavedModel loaded in 3 fresh processes and served; the median
resident sizes. Target: the served model grows by the adapters' (and heads')
bytes only.

Throughput: in one process, batches of `--batch` x `--seq` random token
ids through each variant's compiled `predict_on_batch`, the first calls
(tracing) not timed, rounds alternating between the variants. Target: the
mixed batches at least 0.85x the single-task throughput.

Results replace the `multi_task` (LoRA), `multi_task_prompt`,
`multi_task_prompt_lengths` (prompts of 10 to 30 vectors, each example's
placed per example), `multi_task_prefix` and `multi_task_bitfit` (each
task's own biases) sections of `benchmarks/RESULTS.md`.

Run:

    python benchmarks/multi_task.py
    python benchmarks/multi_task.py --tasks 10 --rounds 2 --no-write
    python benchmarks/multi_task.py --methods prompt,prefix
    python benchmarks/multi_task.py --methods prompt_lengths
    python benchmarks/multi_task.py --methods bitfit
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_models  # noqa: E402
import child_memory  # noqa: E402
import numpy as np  # noqa: E402
import results_file  # noqa: E402

import keras_peft  # noqa: E402

VARIANTS = ("one", "active", "mixed")
LABELS = {
    "one": "1 {method} task (plain model)",
    "pair": "2 {method} tasks, mixed batches (multi_task)",
    "active": "{tasks} {method} tasks, one active (set_active)",
    "mixed": "{tasks} {method} tasks, mixed batches (multi_task)",
}
PROMPT_LENGTH = 20


def prompt_length(index):
    """`--methods prompt_lengths`: task `index`'s prompt length, 10 to 30
    (20 for the middle task, the single-task model)."""
    return 10 + (index * 8 + 9) % 21


# Each method's config for task `index` (`one` builds the middle task's).
METHODS = {
    "lora": ("LoRA", lambda index: keras_peft.LoRAConfig(rank=8, alpha=16)),
    "prompt": (
        "prompt",
        lambda index: keras_peft.PromptTuningConfig(
            length=PROMPT_LENGTH, init="random"
        ),
    ),
    # Every example placed per example (`keras_peft.layers.prompt_layout`).
    "prompt_lengths": (
        "prompt",
        lambda index: keras_peft.PromptTuningConfig(
            length=prompt_length(index), init="random"
        ),
    ),
    # Each task's own copies of every bias and layer-norm offset.
    "bitfit": ("BitFit", lambda index: keras_peft.BitFitConfig()),
    # Served prefixes are ejected (or trained directly): no MLP.
    "prefix": (
        "prefix",
        lambda index: keras_peft.PrefixTuningConfig(
            length=PROMPT_LENGTH, reparam=False
        ),
    ),
}
SECTIONS = {
    "lora": "multi_task",
    "prompt": "multi_task_prompt",
    "prompt_lengths": "multi_task_prompt_lengths",
    "prefix": "multi_task_prefix",
    "bitfit": "multi_task_bitfit",
}
# BitFit's values per task: per layer the query, key, value and output
# biases, two layer-norm offsets, the FFN's two biases; then the
# embeddings' layer-norm offset and the pooler's bias.
BITFIT_VALUES = 4 * (4 * 256 + 2 * 256 + 1024 + 256) + 256 + 256
ADAPTERS = {
    "lora": "LoRA rank 8 on q and v",
    "prompt": f"prompts of {PROMPT_LENGTH} vectors",
    "prompt_lengths": "prompts of 10 to 30 vectors (20 for the single "
    "task; the sequence grows by 30 in the 100-task model)",
    "prefix": f"prefixes of {PROMPT_LENGTH} keys and values per attention "
    "layer (no MLP)",
    "bitfit": f"BitFit ({BITFIT_VALUES:,} biases and layer-norm offsets per "
    "task: trained in place by the single task, kept as each task's own "
    "copies by the 100)",
}


def build(variant, args):
    """The variant's model and a function giving its inputs for a batch."""
    model = bench_models.bert_classifier(args.vocab, seed=args.seed)
    tasks = {"one": 1, "pair": 2}.get(variant, args.tasks)
    indices = [args.tasks // 2] if variant == "one" else range(tasks)
    names = [f"task{i:03d}" for i in range(tasks)]
    rng = np.random.default_rng(args.seed)
    for name, index in zip(names, indices):
        keras_peft.apply(model, METHODS[args.method][1](index), name=name)
    # Trained-looking values: B off zero.
    for variable in model.trainable_weights:
        value = 0.02 * rng.normal(size=variable.shape)
        variable.assign(value.astype(variable.dtype))
    tokens = rng.integers(1, args.vocab, (args.batch, args.seq), "int32")
    x = {
        "token_ids": tokens,
        "segment_ids": np.zeros_like(tokens),
        "padding_mask": np.ones_like(tokens),
    }
    if variant in ("mixed", "pair"):
        server = keras_peft.multi_task(model, names)

        def inputs():
            ids = rng.integers(0, tasks, (args.batch,), "int32")
            return {**x, "task_ids": ids}

        server.compile()
        return server, inputs
    if variant == "active":
        keras_peft.set_active(model, names[tasks // 2])
    model.compile()
    return model, lambda: x


def variable_bytes(model):
    return sum(
        int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
        for v in model.weights
    )


def bank_overhead_bytes(model):
    """`(spare, padding)`: the bytes of banks' rows kept spare for more
    slots (`bank_capacity`), and of the zeros padding slots of other
    shapes (prompts of other lengths) to one."""
    from keras_peft.core import switching

    spare = padding = 0
    for layer in switching.adapter_layers(model):
        slots = range(1, len(layer.slot_names))
        for i, bank in enumerate(layer.bank_variables):
            itemsize = np.dtype(bank.dtype).itemsize
            row = int(np.prod(bank.shape[1:]))
            spare += (bank.shape[0] - len(slots)) * row * itemsize
            used = sum(
                int(np.prod(layer.slot_variables(slot)[i].shape))
                for slot in slots
            )
            padding += (len(slots) * row - used) * itemsize
    return spare, padding


def memory_child(variant, args):
    model, inputs = build(variant, args)
    model.predict_on_batch(inputs())  # traces
    built = child_memory.memory_kib("VmRSS")
    child_memory.reset_peak()
    for _ in range(args.steps):
        model.predict_on_batch(inputs())
    peak = child_memory.memory_kib("VmHWM")
    print(
        json.dumps(
            {
                "variant": variant,
                "variable_mib": variable_bytes(model) / 2**20,
                "spare_mib": bank_overhead_bytes(model)[0] / 2**20,
                "padding_mib": bank_overhead_bytes(model)[1] / 2**20,
                "rss_mib": built / 1024,
                "peak_rise_mib": (peak - built) / 1024,
            }
        )
    )


SERVED = ("one", "pair", "mixed")
# Each SavedModel is loaded in this many processes: the resident size of
# one load varies by up to about 30 MiB (by hand, 2026-12-01: the same
# 2-task SavedModel measured 1055 and 1087 MiB in two runs).
SERVED_LOADS = 3
# What a median of `SERVED_LOADS` may still be off by: four loads of one
# 100-task LoRA SavedModel spread over 4.7 MiB (by hand, 2026-12-01).
SERVED_NOISE_MIB = 5


def export_child(variant, directory, args):
    """Exports the variant's model (`one`: its adapter as it is, not
    folded, so that both SavedModels hold their adapters' bytes)."""
    model, _ = build(variant, args)
    keras_peft.export_saved_model(model, directory, merge=False)
    print(json.dumps({"exported": directory}))


def serve_child(variant, directory, args):
    """Loads a SavedModel as a server would (TensorFlow only) and serves
    `--steps` batches through its `serve` endpoint."""
    import tensorflow as tf

    rng = np.random.default_rng(args.seed)
    tasks = {"one": 1, "pair": 2}.get(variant, args.tasks)
    tokens = rng.integers(1, args.vocab, (args.batch, args.seq), "int32")
    x = {
        "token_ids": tf.constant(tokens),
        "segment_ids": tf.zeros_like(tokens),
        "padding_mask": tf.ones_like(tokens),
    }

    def inputs():
        if variant == "one":
            return x
        ids = rng.integers(0, tasks, (args.batch,), "int32")
        return {**x, "task_ids": tf.constant(ids)}

    served = tf.saved_model.load(directory)
    served.serve(inputs())
    built = child_memory.memory_kib("VmRSS")
    child_memory.reset_peak()
    for _ in range(args.steps):
        served.serve(inputs())
    peak = child_memory.memory_kib("VmHWM")
    nodes = graph_nodes(directory)  # read once the sizes are taken
    disk = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(directory)
        for name in names
    )
    print(
        json.dumps(
            {
                "variant": variant,
                "disk_mib": disk / 2**20,
                "graph_nodes": nodes,
                "rss_mib": built / 1024,
                "peak_rise_mib": (peak - built) / 1024,
            }
        )
    )


def graph_nodes(directory):
    """The nodes of the largest function a SavedModel holds: its serving
    function (TensorFlow loads and runs each node)."""
    from tensorflow.python.saved_model import loader_impl

    graph = loader_impl.parse_saved_model(directory).meta_graphs[0]
    return max(len(f.node_def) for f in graph.graph_def.library.function)


def child_command(args, *flags):
    command = [sys.executable, os.path.abspath(__file__), *flags]
    command += ["--tasks", str(args.tasks), "--methods", args.method]
    command += ["--batch", str(args.batch), "--seq", str(args.seq)]
    command += ["--steps", str(args.steps), "--vocab", str(args.vocab)]
    return command


def measure_served(args):
    """Each of `SERVED`, exported in one process and served from its
    SavedModel in `SERVED_LOADS` fresh ones: the median resident sizes,
    and their spread."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in SERVED:
            directory = os.path.join(tmp, variant)
            flags = ("--dir", directory)
            child_memory.run_child(
                child_command(args, "--export-child", variant, *flags)
            )
            loads = [
                child_memory.run_child(
                    child_command(args, "--serve-child", variant, *flags)
                )
                for _ in range(SERVED_LOADS)
            ]
            print(loads, flush=True)
            rss = [load["rss_mib"] for load in loads]
            rows[variant] = {
                "disk_mib": loads[0]["disk_mib"],
                "graph_nodes": loads[0]["graph_nodes"],
                "rss_mib": statistics.median(rss),
                "rss_spread_mib": max(rss) - min(rss),
                "peak_rise_mib": statistics.median(
                    load["peak_rise_mib"] for load in loads
                ),
            }
    return rows


def measure_memory(args):
    rows = {}
    for variant in VARIANTS:
        rows[variant] = child_memory.run_child(
            child_command(args, "--memory-child", variant)
        )
        print(rows[variant], flush=True)
    return rows


def measure_throughput(args):
    built = {variant: build(variant, args) for variant in VARIANTS}
    for model, inputs in built.values():
        for _ in range(2):
            model.predict_on_batch(inputs())
    times = {variant: [] for variant in VARIANTS}
    order = list(VARIANTS)
    for _ in range(args.rounds):
        for variant in order:
            model, inputs = built[variant]
            for _ in range(args.steps):
                batch = inputs()
                start = time.perf_counter()
                model.predict_on_batch(batch)
                times[variant].append(time.perf_counter() - start)
        order = order[1:] + order[:1]
    return {
        variant: args.batch / statistics.median(values)
        for variant, values in times.items()
    }


def adapter_bytes(args, index):
    """What task `index` adds, float32: its LoRA A and B (q and v of 4
    layers), its prompt, or its prefix keys and values (4 layers), and its
    head."""
    adapter = {
        "lora": 4 * 2 * (256 * 8 + 8 * 256),
        "prompt": PROMPT_LENGTH * 256,
        "prompt_lengths": prompt_length(index) * 256,
        "prefix": 4 * 2 * PROMPT_LENGTH * 256,
        "bitfit": BITFIT_VALUES,
    }[args.method]
    return 4 * (adapter + HEAD)


HEAD = 256 * 2 + 2


def single_task_bytes(args):
    """What the single-task model adds to the base model, float32: its
    adapter and head; BitFit trains the base's biases in place (its head
    only)."""
    if args.method == "bitfit":
        return 4 * HEAD
    return adapter_bytes(args, args.tasks // 2)


def report(memory, served, throughput, args, wall, loads):
    one = throughput["one"]
    expected_growth = (
        sum(adapter_bytes(args, index) for index in range(args.tasks))
        - single_task_bytes(args)
    ) / 2**20
    growth = memory["active"]["variable_mib"] - memory["one"]["variable_mib"]
    spare = memory["active"]["spare_mib"]
    padding = memory["active"]["padding_mib"]
    switching = growth - expected_growth - spare - padding
    label, _ = METHODS[args.method]
    adapter = ADAPTERS[args.method]
    lines = [
        f"## One backbone, {args.tasks} {label} tasks "
        f"(`benchmarks/multi_task.py --methods {args.method}`)",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {results_file.machine()}",
        f"- Load average at start / end: {loads[0]} / {loads[1]}",
        "- BERT classifier, hidden 256, 4 layers, FFN 1024, 2 classes; "
        f"{adapter}; {args.tasks} tasks; batches of "
        f"{args.batch} x {args.seq} tokens; compiled `predict_on_batch`, "
        f"median of {args.rounds} x {args.steps} timed batches per variant "
        "(rounds alternate between the variants); wall "
        f"{wall / 60:.1f} min.",
        "",
        "| variant | variables (MiB) | RSS built (MiB) | peak rise in "
        "predict (MiB) | examples/s | vs 1 task |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        row = memory[variant]
        lines.append(
            f"| {LABELS[variant].format(tasks=args.tasks, method=label)} | "
            f"{row['variable_mib']:.2f} | "
            f"{row['rss_mib']:.0f} | {row['peak_rise_mib']:.1f} | "
            f"{throughput[variant]:.0f} | {throughput[variant] / one:.3f}x |"
        )
    lines += [
        "",
        "| served from its SavedModel | on disk (MiB) | graph nodes | RSS "
        f"loaded and served, median of {SERVED_LOADS} (MiB) | their spread "
        "(MiB) | peak rise in serve (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in SERVED:
        row = served[variant]
        lines.append(
            f"| {LABELS[variant].format(tasks=args.tasks, method=label)} | "
            f"{row['disk_mib']:.2f} | {row['graph_nodes']} | "
            f"{row['rss_mib']:.0f} | "
            f"{row['rss_spread_mib']:.0f} | {row['peak_rise_mib']:.1f} |"
        )
    ratio = throughput["mixed"] / one
    rss_growth = memory["active"]["rss_mib"] - memory["one"]["rss_mib"]
    served_growth = served["mixed"]["rss_mib"] - served["pair"]["rss_mib"]
    disk_growth = served["mixed"]["disk_mib"] - served["pair"]["disk_mib"]
    exact = abs(switching * 2**20) < 1024
    lines += [
        "",
        f"- Variables: {args.tasks} tasks hold {growth:.3f} MiB more than "
        f"one: the {label} weights and heads that the single-task model "
        f"does not hold, {expected_growth:.3f} MiB; rows the banks keep "
        f"spare for more tasks, {spare:.3f} MiB; zeros padding slots of "
        f"other shapes to one, {padding:.3f} MiB; the int32 slot variables, "
        f"{switching * 2**20:.0f} bytes. Target (grows by the adapters' "
        "bytes only): "
        + (
            "missed."
            if not exact
            else "met."
            if spare + padding == 0
            else f"met, plus {100 * (spare + padding) / expected_growth:.0f}"
            "% of spare rows and padding."
        ),
        f"- Served (each SavedModel, `export_saved_model(merge=False)` of "
        "the single-task model or of a `multi_task` model, loaded in "
        f"{SERVED_LOADS} fresh processes by `tf.saved_model.load`, each "
        f"serving {args.steps + 1} batches): from 2 tasks to {args.tasks}, the "
        f"resident size grows by {served_growth:.1f} MiB and the SavedModel "
        f"by {disk_growth:.1f} MiB (its variables: the adapters, heads and "
        "spare rows, each stored once). Target (grows by the adapters' bytes "
        "only): "
        + (
            "met"
            if served_growth <= disk_growth + SERVED_NOISE_MIB
            else "missed"
        )
        + f" (allowing {SERVED_NOISE_MIB} MiB for the noise of a process's "
        "resident size). Serving mixed batches at all costs "
        f"{served['pair']['rss_mib'] - served['one']['rss_mib']:.1f} MiB "
        "more than the single-task model, whatever the number of tasks; "
        "its served graph has "
        f"{served['pair']['graph_nodes'] - served['one']['graph_nodes']} "
        "more nodes (the routing per example), each loaded and run by "
        "TensorFlow.",
        f"- Building, in the process that applied them: {rss_growth:.0f} MiB "
        f"more with {args.tasks} tasks (one active) than with one, of "
        f"which {growth:.1f} MiB are the variables; the rest is what "
        f"applying {args.tasks} adapters one by one leaves in TensorFlow's "
        "runtime for the process's life (no layer or variable outlives "
        "`apply`: counted with `gc`).",
        f"- Mixed batches: {ratio:.3f}x the single-task throughput. Target "
        ">= 0.85x: " + ("met." if ratio >= 0.85 else "missed."),
    ]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        default="lora,prompt",
        help="comma-separated: lora, prompt, prompt_lengths, prefix, bitfit",
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--memory-child", choices=VARIANTS)
    parser.add_argument("--export-child", choices=SERVED)
    parser.add_argument("--serve-child", choices=SERVED)
    parser.add_argument("--dir")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown --methods {unknown}; known: {sorted(METHODS)}")
    args.method = args.methods[0]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    if args.export_child:
        export_child(args.export_child, args.dir, args)
        return
    if args.serve_child:
        serve_child(args.serve_child, args.dir, args)
        return
    for method in args.methods:
        args.method = method
        start = time.time()
        loads = [" ".join(f"{x:.2f}" for x in os.getloadavg())]
        memory = measure_memory(args)
        served = measure_served(args)
        throughput = measure_throughput(args)
        print(throughput, flush=True)
        loads.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
        text = report(
            memory, served, throughput, args, time.time() - start, loads
        )
        print(text)
        if not args.no_write:
            results_file.update_section(SECTIONS[method], text)


if __name__ == "__main__":
    main()
