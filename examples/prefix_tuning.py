"""Prefix tuning on T5 for table-to-text, end to end.

Li & Liang 2021's generation task: a restaurant's meaning representation
(`name[The Eagle], eatType[pub], food[French], area[riverside]`) becomes an
English sentence, as in the E2E data set. The script applies
`keras_peft.PrefixTuningConfig` (the paper's reparametrization: each layer's
prefix computed by an MLP from a smaller `P'`) to a `T5Seq2SeqLM`, prints
the trainable-parameter summary, trains with `model.fit`, prints a few
generated sentences with the BLEU and ROUGE-L of all validation sentences
(keras-hub's metrics) before and after training, saves the adapter (the
prefix the MLP computes, 35 KiB), reloads it into a fresh model and
checks that the logits and the generated sentences match.

One learning rate trains the whole prefix: `T5Seq2SeqLM` has no head of its
own (its output layer is the token embedding, frozen with the backbone;
`keras_peft.variable_groups` finds only the prefix), so
`keras_peft.GroupedOptimizer` has no second group to give another rate.

Offline by default: a synthetic E2E-style data set the script generates, and
a small T5 (2 layers, width 64) with a SentencePiece vocabulary trained on
the data, first pretrained for a minute as a denoising autoencoder on the
unpaired MRs and sentences (`--pretrain-epochs`; 0 keeps it random). A
prefix steers what a model already does: on a random T5 it learns the
templates but cannot make the model copy names. `--data` reads E2E's CSV
files (`mr,ref`, several references per MR), `--val-data` its development
set (else validation MRs are split off `--data`). `--preset` fine-tunes a
real checkpoint: a keras-hub preset name such as `t5_small_multi`
(downloaded) or a local directory. The default learning rate is the one
measured offline; tune it for a preset.

    python examples/prefix_tuning.py
    python examples/prefix_tuning.py --data ../shared/data/e2e/trainset.csv \\
        --val-data ../shared/data/e2e/devset.csv --train 4000 --val 200
    python examples/prefix_tuning.py --preset t5_small_multi

Needs `sentencepiece` and `rouge-score`: `pip install -e ".[examples]"`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import table_to_text  # noqa: E402

import keras_peft  # noqa: E402

DEFAULTS = {
    "default": dict(
        train=2000,
        val=100,
        epochs=4,
        pretrain_epochs=3,
        learning_rate=3e-3,
        reparam_hidden=256,
    ),
    "tiny": dict(
        train=512,
        val=16,
        epochs=4,
        pretrain_epochs=0,
        learning_rate=1e-2,
        reparam_hidden=64,
    ),
}


def add_arguments(parser):
    parser.add_argument("--length", type=int, default=10, help="prefix l")
    parser.add_argument("--reparam-hidden", type=int, help="width of P'")


def main():
    args = table_to_text.parse_args(
        __doc__.splitlines()[0], DEFAULTS, add_arguments
    )
    setup = table_to_text.setup(args)
    model = setup.model

    # 1. Apply prefix tuning: the whole T5 is frozen; the prefix of every
    #    attention layer (encoder, decoder and cross) is computed from P'.
    config = keras_peft.PrefixTuningConfig(
        length=args.length, reparam_hidden=args.reparam_hidden
    )
    keras_peft.apply(model, config)
    table_to_text.print_summary(model)

    # 2. Train with plain model.fit; score generated sentences.
    predictions = table_to_text.train(model, setup.task, args)

    # 3. Save the adapter, load it into a fresh model with the same base
    #    weights, and check that it computes what the trained model does.
    table_to_text.save_and_reload(model, setup, args, predictions)


if __name__ == "__main__":
    main()
