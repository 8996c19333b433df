"""Prompt tuning: trainable vectors inserted among the input embeddings."""

import keras
from keras import ops

from keras_peft.layers import prompt_layout
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.validation import check_int


@keras.saving.register_keras_serializable(package="keras_peft")
class PromptEmbedding(AdapterLayer):
    """Inserts `length` trainable prompt vectors into a sequence of embeddings.

    Maps `(embeddings [B, T, d], padding_mask [B, T])` to
    `(embeddings [B, length + T, d], padding_mask [B, length + T])`: the prompt
    is inserted at position `insert_at` (0 prepends it; 1 puts it right after
    a leading `[CLS]`), and the mask grows with ones for it. With
    `num_prompts=K > 1` the layer holds a bank of K prompts and a `task_ids
    [B]` input picks one per example, so one batch can mix tasks.
    Named adapters sharing the layer may have prompts of other lengths (or,
    where the layer holds none for an adapter, no prompt): the sequence
    then grows by the longest, `total_length`, and a shorter prompt's
    unused positions go to the end, masked out
    (`keras_peft.layers.prompt_layout`).

    Args:
        length: int. Number of prompt vectors `l`.
        num_prompts: int. Number of prompts in the bank. Defaults to `1`.
        insert_at: int. Sequence position of the first prompt vector.
            Defaults to `0`.
        prompt_initializer: initializer of the `(num_prompts, length, d)`
            prompt variable. Defaults to uniform in `[-0.5, 0.5]` (Lester et
            al.'s random initialization).
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:
    ```python
    prompt = keras_peft.layers.PromptEmbedding(length=20, num_prompts=3)
    x, mask = prompt(embeddings, padding_mask, task_ids=np.array([0, 2]))
    sequence = prompt.remove_prompt(transformer_output)  # back to length T
    ```

    Reference:
        - [Lester et al., 2021](https://arxiv.org/abs/2104.08691)
    """

    method = "prompt_tuning"
    switchable = True
    # Named adapters sharing the layer may have prompts of other lengths
    # (`keras_peft.layers.prompt_layout`).
    per_slot_settings = ("length",)
    padded_axes = {"prompt": 1}

    def __init__(
        self,
        length,
        num_prompts=1,
        insert_at=0,
        prompt_initializer=None,
        **kwargs,
    ):
        for name, value, minimum in (
            ("length", length, 1),
            ("num_prompts", num_prompts, 1),
            ("insert_at", insert_at, 0),
        ):
            check_int(name, value, minimum)
        super().__init__(**kwargs)
        self.length = length
        self.num_prompts = num_prompts
        self.insert_at = insert_at
        self.prompt_initializer = keras.initializers.get(
            prompt_initializer or keras.initializers.RandomUniform(-0.5, 0.5)
        )

    def build(
        self, embeddings_shape, padding_mask_shape=None, task_ids_shape=None
    ):
        self.prompt = self.add_weight(
            name="prompt",
            shape=(self.num_prompts, self.length, embeddings_shape[-1]),
            initializer=self.prompt_initializer,
        )

    def _prompts_for(self, batch_size, task_ids):
        prompt = self.slot_values(self.prompt)
        if self.routed:
            # One prompt per example, by its adapter: `(batch, 1, l, d)`.
            if self.num_prompts != 1 or task_ids is not None:
                raise ValueError(
                    f"PromptEmbedding {self.name!r} holds a bank of "
                    f"{self.num_prompts} prompts picked by `task_ids`; it "
                    "cannot also be routed per named adapter."
                )
            return ops.cast(prompt[:, 0], self.compute_dtype)
        prompt = ops.cast(prompt, self.compute_dtype)
        if task_ids is None:
            if self.num_prompts != 1:
                raise ValueError(
                    f"PromptEmbedding {self.name!r} holds {self.num_prompts} "
                    "prompts: pass `task_ids` to pick one per example."
                )
            return ops.repeat(prompt, batch_size, axis=0)
        return ops.take(prompt, ops.cast(task_ids, "int32"), axis=0)

    def check_slot_source(self, source):
        super().check_slot_source(source)
        if self.num_prompts != 1 and source.length != self.length:
            raise ValueError(
                f"PromptEmbedding {self.name!r} holds a bank of "
                f"{self.num_prompts} prompts of length {self.length}; "
                f"another adapter's prompts must have that length too, "
                f"not {source.length}."
            )

    @property
    def total_length(self):
        """The positions the prompt adds to a sequence: `length`, or the
        longest prompt among the named adapters sharing the layer."""
        return prompt_layout.total_length(self)

    def call(self, embeddings, padding_mask=None, task_ids=None):
        batch_size = ops.shape(embeddings)[0]
        prompts = ops.cast(
            self._prompts_for(batch_size, task_ids), embeddings.dtype
        )
        lengths = prompt_layout.example_lengths(self)
        at = self.insert_at
        outputs = prompt_layout.insert(embeddings, prompts, at, lengths)
        if padding_mask is None:
            padding_mask = ops.ones(ops.shape(embeddings)[:2], "int32")
        mask = prompt_layout.grow_mask(
            padding_mask, self.total_length, at, lengths
        )
        return outputs, mask

    def remove_prompt(self, sequence):
        """Drops the prompt positions from a `[B, total_length + T, ...]`
        tensor."""
        return prompt_layout.strip(
            sequence,
            self.total_length,
            self.insert_at,
            prompt_layout.example_lengths(self),
        )

    def compute_output_shape(
        self, embeddings_shape, padding_mask_shape=None, task_ids_shape=None
    ):
        length = embeddings_shape[1]
        length = None if length is None else length + self.total_length
        batch = embeddings_shape[0]
        return (batch, length, embeddings_shape[-1]), (batch, length)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "length": self.length,
                "num_prompts": self.num_prompts,
                "insert_at": self.insert_at,
                "prompt_initializer": keras.initializers.serialize(
                    self.prompt_initializer
                ),
            }
        )
        return config
