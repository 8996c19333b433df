"""The prefix tuning config."""

import dataclasses
import typing

from keras_peft.core import config as config_lib
from keras_peft.layers.validation import check_int
from keras_peft.prompt_tuning.config import check_init

PREFIX_INITS = ("random", "text")
ATTENTION_KINDS = ("encoder", "decoder", "cross")


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig(config_lib.PeftConfig):
    """Prefix tuning: trained keys and values prepended at every attention.

    Each selected attention layer gets `length` key and value vectors per
    head, its own, prepended to its projected keys and values; the query
    length and every output shape stay as they were. T5's relative position
    bias is 0 for prefix keys (they have no position).

    Args:
        length: int. Prefix length `l`. Defaults to `30`.
        reparam: bool. Compute every layer's prefix as `MLP(P')` (Li &
            Liang's reparametrization, for stable training).
            `keras_peft.save_adapter` stores the computed prefix, not the
            MLP, unless told otherwise; `keras_peft.eject_prefix` drops the
            MLP from the model. `False` trains the prefix directly.
            Defaults to `True`.
        reparam_hidden: int. Width of `P'` and of the MLP. Defaults to `512`.
        init: str. `"random"`, or `"text"`: each layer's prefix starts as the
            keys and values the frozen model computes for `init_text`'s
            tokens at that layer (repeated or cut to `length`). Defaults to
            `"random"`.
        init_text: str. The text for `init="text"`, e.g. `"summarize"`.
        tokenizer: a keras-hub tokenizer for `init="text"`. Defaults to the
            model's `preprocessor.tokenizer` when it has one. Not stored in
            adapter files.
        attention: tuple of str. The attention kinds to prefix:
            `"encoder"` (encoder self-attention), `"decoder"` (decoder
            self-attention), `"cross"` (decoder cross-attention). The
            default, all three, means every attention layer of the model
            (BERT has only `"encoder"`); naming a kind the model lacks is an
            error.

    Example:
    ```python
    config = keras_peft.PrefixTuningConfig(
        length=30, init="text", init_text="summarize")
    keras_peft.apply(seq2seq_lm, config)
    ...  # fit
    keras_peft.eject_prefix(seq2seq_lm)  # keep P, drop the MLP
    ```

    Reference:
        - [Li & Liang, 2021](https://arxiv.org/abs/2101.00190)
    """

    method: typing.ClassVar[str] = "prefix_tuning"
    foreign_names: typing.ClassVar[dict] = {
        "num_virtual_tokens": "keras-peft calls it `length`",
        "prefix_projection": "keras-peft calls it `reparam`",
        "encoder_hidden_size": "keras-peft calls it `reparam_hidden`",
        "prefix_length": "keras-peft calls it `length`",
        "bottleneck_size": "keras-peft calls the MLP's width `reparam_hidden`",
        "flat": "keras-peft says `reparam=False` for a flat prefix",
    }

    length: int = 30
    reparam: bool = True
    reparam_hidden: int = 512
    init: str = "random"
    init_text: str | None = None
    tokenizer: object = config_lib.runtime_field()
    attention: tuple = ATTENTION_KINDS

    def __post_init__(self):
        owner = "PrefixTuningConfig"
        check_int("length", self.length, owner=owner + " ")
        check_int("reparam_hidden", self.reparam_hidden, owner=owner + " ")
        if not isinstance(self.reparam, bool):
            raise ValueError(
                f"{owner} `reparam` must be a bool. Got {self.reparam!r}."
            )
        check_init(owner, self.init, PREFIX_INITS, self.init_text)
        kinds = self.attention
        if isinstance(kinds, str):
            kinds = (kinds,)
        if (
            not isinstance(kinds, (list, tuple))
            or not kinds
            or any(kind not in ATTENTION_KINDS for kind in kinds)
            or len(set(kinds)) != len(kinds)
        ):
            raise ValueError(
                f"{owner} `attention` must be a non-empty selection, without "
                f"repeats, of {ATTENTION_KINDS}. Got {self.attention!r}."
            )
        object.__setattr__(self, "attention", tuple(kinds))

    @property
    def selects_every_attention(self):
        return set(self.attention) == set(ATTENTION_KINDS)
