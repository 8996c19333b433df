"""LoRA on T5 for table-to-text, end to end, then merged.

The same task, data, model and checks as `examples/prefix_tuning.py`, so
the two methods compare: a restaurant's meaning representation
(`name[The Eagle], eatType[pub], food[French], area[riverside]`) becomes an
English sentence, as in the E2E data set. The script applies
`keras_peft.LoRAConfig` (by default rank 8 on the query and value
projections of every attention layer: encoder, decoder and cross) to a
`T5Seq2SeqLM`, prints the trainable-parameter summary, trains with
`model.fit`, prints a few generated sentences with the BLEU and ROUGE-L of
all validation sentences (keras-hub's metrics) before and after training,
saves the adapter, reloads it into a fresh model and checks that the logits
and the generated sentences match. Last, `keras_peft.merge_lora` folds the
update into the reloaded model's kernels, which must then give the same
logits to `table_to_text.TOLERANCE` (1e-4) times the largest logit and the
same sentences.

One learning rate trains every LoRA weight: `T5Seq2SeqLM` has no head of
its own (its output layer is the token embedding, frozen with the
backbone), so `keras_peft.GroupedOptimizer` has no second group.

Offline by default (a synthetic E2E-style data set and a small T5 pretrained
here as a denoising autoencoder; see `prefix_tuning.py`). `--data` reads
E2E's CSV files, `--val-data` its development set, and `--preset` fine-tunes
a real checkpoint (a keras-hub preset name such as `t5_small_multi`, or a
local directory). The default learning rate is the one measured offline.

    python examples/lora_t5.py
    python examples/lora_t5.py --data ../shared/data/e2e/trainset.csv \\
        --val-data ../shared/data/e2e/devset.csv --train 4000 --val 200
    python examples/lora_t5.py --preset t5_small_multi --targets all

Needs `sentencepiece` and `rouge-score`: `pip install -e ".[examples]"`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import table_to_text  # noqa: E402

import keras_peft  # noqa: E402

DEFAULTS = {
    "default": dict(
        train=2000, val=100, epochs=4, pretrain_epochs=3, learning_rate=3e-3
    ),
    "tiny": dict(
        train=512, val=16, epochs=4, pretrain_epochs=0, learning_rate=1e-2
    ),
}


def add_arguments(parser):
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument(
        "--targets", default="attn", help='"attn", "ffn" or "all"'
    )


def main():
    args = table_to_text.parse_args(
        __doc__.splitlines()[0], DEFAULTS, add_arguments
    )
    setup = table_to_text.setup(args)
    model = setup.model

    # 1. Apply LoRA: the whole T5 is frozen; each targeted projection gets
    #    a low-rank update that starts at zero.
    config = keras_peft.LoRAConfig(
        rank=args.rank, alpha=args.alpha, targets=args.targets
    )
    keras_peft.apply(model, config)
    table_to_text.print_summary(model)

    # 2. Train with plain model.fit; score generated sentences.
    predictions = table_to_text.train(model, setup.task, args)

    # 3. Save the adapter, load it into a fresh model with the same base
    #    weights, and check that it computes what the trained model does.
    fresh = table_to_text.save_and_reload(model, setup, args, predictions)

    # 4. Merge: the update folded into the kernels, no inference cost.
    batch = table_to_text.fixed_batch(fresh, setup.task)
    unmerged = table_to_text.logits(fresh, batch)
    keras_peft.merge_lora(fresh)
    table_to_text.check_same_outputs(
        "Merged model", unmerged, fresh, batch, setup.task, predictions
    )


if __name__ == "__main__":
    main()
