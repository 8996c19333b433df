"""The prompt tuning config."""

import dataclasses
import typing

from keras_peft.core import config as config_lib
from keras_peft.layers.validation import check_int

PROMPT_INITS = ("random", "vocab", "labels", "text")


def check_init(owner, init, allowed, init_text):
    """Validates an `init` choice and its `init_text`, shared by configs."""
    if init not in allowed:
        raise ValueError(
            f"{owner} `init` must be one of {allowed}. Got {init!r}."
        )
    if init == "text":
        if not isinstance(init_text, str) or not init_text.strip():
            raise ValueError(
                f"{owner} init='text' needs a non-empty `init_text` string. "
                f"Got init_text={init_text!r}."
            )
    elif init_text is not None:
        raise ValueError(
            f"{owner} `init_text` is only used with init='text'; got "
            f"init={init!r} with init_text={init_text!r}."
        )


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig(config_lib.PeftConfig):
    """Prompt tuning: `length` trainable vectors among the input embeddings.

    The whole backbone is frozen; only the `length x hidden_dim` prompt (and
    a task's head) trains. BERT: the prompt goes right after `[CLS]`, takes
    position slots (inputs may be up to `max_sequence_length - length`
    long) and is removed from `sequence_output`, so outputs keep their input
    length. T5: the prompt is prepended to the encoder input, whose output
    (and the decoder's cross-attention) then spans `length + T` positions.
    Named adapters sharing a model (`keras_peft.apply(..., name=...)`) may
    have prompts of other lengths, or none: the sequence grows by the
    longest, each adapter's unused positions masked out
    (docs/multi_task.md).

    Args:
        length: int. Number of prompt vectors `l`. Defaults to `20`.
        init: str. How the prompt starts (Lester et al. 2021): `"random"`
            (uniform in `[-0.5, 0.5]`), `"vocab"` (embeddings of tokens
            sampled from the 5,000 most common vocabulary entries: the first
            ones of the vocabulary, skipping special tokens when a tokenizer
            is known), `"labels"` (each class label's embedding, averaged
            over its tokens; later positions fall back to `"vocab"`) or
            `"text"` (the embeddings of `init_text`'s tokens, repeated or
            cut to `length`). Defaults to `"vocab"`.
        init_text: str. The text for `init="text"`.
        class_labels: list of str. The label words for `init="labels"`.
        tokenizer: a keras-hub tokenizer, needed by the `"labels"` and
            `"text"` inits. Defaults to the model's `preprocessor.tokenizer`
            when it has one. Not stored in adapter files.

    Example:
    ```python
    config = keras_peft.PromptTuningConfig(
        length=20, init="labels", class_labels=["negative", "positive"])
    keras_peft.apply(classifier, config)  # tokenizer from the preprocessor
    ```

    Reference:
        - [Lester et al., 2021](https://arxiv.org/abs/2104.08691)
    """

    method: typing.ClassVar[str] = "prompt_tuning"
    foreign_names: typing.ClassVar[dict] = {
        "num_virtual_tokens": "keras-peft calls it `length`",
        "prompt_tuning_init": 'keras-peft calls it `init` ("random", '
        '"vocab", "labels" or "text")',
        "prompt_tuning_init_text": "keras-peft calls it `init_text`",
        "prompt_length": "keras-peft calls it `length`",
        "prompt_init": 'keras-peft calls it `init` ("random", "vocab", '
        '"labels" or "text")',
        "tokenizer_name_or_path": "pass the tokenizer object as "
        "`tokenizer` (a keras-hub tokenizer, e.g. "
        "`model.preprocessor.tokenizer`)",
    }

    length: int = 20
    init: str = "vocab"
    init_text: str | None = None
    class_labels: tuple | None = None
    tokenizer: object = config_lib.runtime_field()

    def __post_init__(self):
        owner = "PromptTuningConfig"
        check_int("length", self.length, owner=owner + " ")
        check_init(owner, self.init, PROMPT_INITS, self.init_text)
        labels = self.class_labels
        if labels is not None:
            if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
                raise ValueError(
                    f"{owner} `class_labels` must be a list of strings. "
                    f"Got {labels!r}."
                )
            labels = tuple(labels)
            if not labels or not all(
                isinstance(label, str) and label.strip() for label in labels
            ):
                raise ValueError(
                    f"{owner} `class_labels` must be non-empty strings. "
                    f"Got {labels!r}."
                )
            if len(labels) > self.length:
                raise ValueError(
                    f"{owner} has {len(labels)} class labels but only "
                    f"length={self.length} prompt vectors to put them in."
                )
            object.__setattr__(self, "class_labels", labels)
        if self.init == "labels" and labels is None:
            raise ValueError(
                f"{owner} init='labels' needs `class_labels`, e.g. "
                "class_labels=['negative', 'positive']."
            )
        if self.init != "labels" and labels is not None:
            raise ValueError(
                f"{owner} `class_labels` is only used with init='labels'; "
                f"got init={self.init!r}."
            )
