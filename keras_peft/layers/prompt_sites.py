"""Wrappers that put a prompt into a backbone's sequence and keep the layers
after it in step with the longer sequence."""

from keras import ops

from keras_peft.layers import prompt_layout
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.disabling import is_disabled
from keras_peft.layers.validation import check_int
from keras_peft.layers.wrapper import Wrapper


class _PassThrough(Wrapper, AdapterLayer):
    """A wrapper that takes whatever arguments its wrapped layer takes.

    Calls go straight to `call`: the wrapped layer's own `__call__` does the
    dtype, training and mask handling, and Keras' argument inspection has
    no use for a generic `(inputs, *args, **kwargs)` signature (it rejects
    keyword arguments that mix tensors and `None`).
    """

    method = "prompt_tuning"
    # No weights of their own: the sequence keeps the longest prompt's
    # length whichever adapter acts, and the wrappers place each example's
    # prompt (`prompt_layout`).
    switchable = True

    def build(self, *args, **kwargs):
        # Nothing to create: building only gives the layer its path.
        pass

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)

    def _template_variables(self):
        return []

    def signature_config(self):
        return {key: getattr(self, key) for key in self._signature_keys}

    _signature_keys = ()


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def _with_first(outputs, first):
    if isinstance(outputs, tuple):
        return (first, *outputs[1:])
    if isinstance(outputs, list):
        return [first, *outputs[1:]]
    return first


class PromptInsertion(_PassThrough):
    """Wraps the layer at which a prompt joins the sequence.

    Inserts the prompt of a `PromptEmbedding` into the wrapped layer's
    output (`where="output"`, e.g. token embeddings) or first input
    (`where="input"`, e.g. a first transformer layer), growing the layer's
    mask argument with it.

    Args:
        base_layer: the wrapped layer.
        prompt: a `keras_peft.layers.PromptEmbedding`.
        where: `"output"` or `"input"`.
        mask_argument: str or `None`. A mask argument of the wrapped layer
            that grows with the prompt (`where="input"` only).
        max_length: int or `None`. The longest sequence the model takes;
            a longer prompted input raises a `ValueError`.
        **kwargs: base layer arguments such as `name`.
    """

    def __init__(
        self,
        base_layer,
        prompt,
        where="output",
        mask_argument=None,
        max_length=None,
        **kwargs,
    ):
        if where not in ("output", "input"):
            raise ValueError(
                f"`where` must be 'output' or 'input'. Got {where!r}."
            )
        if max_length is not None:
            check_int("max_length", max_length)
        super().__init__(base_layer, **kwargs)
        self.prompt = prompt
        self.where = where
        self.mask_argument = mask_argument
        self.max_length = max_length
        self.build()

    _signature_keys = ("where", "mask_argument", "max_length")

    def slot_signature(self):
        signature = super().slot_signature()
        for key, value in self.prompt.slot_signature().items():
            signature[f"prompt {key}"] = value
        return signature

    def add_slot(self, name, source):
        """Adds adapter `name`'s prompt (from `source`, a planned
        `PromptInsertion`) to this layer's `PromptEmbedding`."""
        self.prompt.add_slot(name, source.prompt)
        super().add_slot(name, source)

    def _insert(self, sequence):
        length = sequence.shape[1]
        total = self.prompt.total_length
        if (
            self.max_length is not None
            and length is not None
            and length + total > self.max_length
        ):
            raise ValueError(
                f"Inputs of length {length} do not fit with a prompt of "
                f"length {total}: the model takes at most "
                f"{self.max_length} positions, so inputs may be at most "
                f"{self.max_length - total} long."
            )
        return self.prompt(sequence)[0]

    def call(self, inputs, *args, **kwargs):
        if is_disabled(self):
            return self.base_layer(inputs, *args, **kwargs)
        if self.where == "output":
            return self._insert(self.base_layer(inputs, *args, **kwargs))
        mask = kwargs.get(self.mask_argument)
        if mask is not None:
            kwargs[self.mask_argument] = prompt_layout.grow_mask(
                mask,
                self.prompt.total_length,
                self.prompt.insert_at,
                prompt_layout.example_lengths(self.prompt),
            )
        return self.base_layer(self._insert(inputs), *args, **kwargs)


class PromptAlignment(_PassThrough):
    """Keeps a layer after the prompt in step with the prompted sequence.

    Grows the wrapped layer's mask and cache arguments by the prompt's
    positions, fills them into its output, or strips them from it.

    Args:
        base_layer: the wrapped layer.
        length: int. Prompt length. Named adapters sharing the wrapper
            keep their own; the sequence grows by the longest
            (`prompt_layout`).
        insert_at: int. Sequence position of the prompt.
        mask_argument: str or `None`. A mask argument whose last axis grows
            by `length` ones at `insert_at`.
        cache_argument: str or `None`. A key/value cache argument (axis 2
            is the sequence) that grows by `length` zero rows at `insert_at`
            when `cache_index_argument` is not `None` (the cache is being
            filled from the prompted sequence).
        cache_index_argument: str or `None`. See `cache_argument`.
        fill_output: bool. Insert `length` copies of the output position
            before the prompt (or position 0) into the output.
        strip_output: bool. Remove the prompt positions from the (first)
            output.
        **kwargs: base layer arguments such as `name`.
    """

    def __init__(
        self,
        base_layer,
        length,
        insert_at=0,
        mask_argument=None,
        cache_argument=None,
        cache_index_argument=None,
        fill_output=False,
        strip_output=False,
        **kwargs,
    ):
        check_int("length", length)
        check_int("insert_at", insert_at, minimum=0)
        if fill_output and strip_output:
            raise ValueError(
                "`fill_output` and `strip_output` exclude each other."
            )
        super().__init__(base_layer, **kwargs)
        self.length = length
        self.insert_at = insert_at
        self.mask_argument = mask_argument
        self.cache_argument = cache_argument
        self.cache_index_argument = cache_index_argument
        self.fill_output = fill_output
        self.strip_output = strip_output
        self.build()

    # Each named adapter's prompt has its own length.
    per_slot_settings = ("length",)
    _signature_keys = (
        "insert_at",
        "mask_argument",
        "cache_argument",
        "cache_index_argument",
        "fill_output",
        "strip_output",
    )

    def _grow_cache(self, cache, kwargs, total):
        if kwargs.get(self.cache_index_argument) is None:
            return cache
        keys = kwargs.get("encoder_hidden_states")
        if (
            keys is not None
            and keys.shape[1] is not None
            and cache.shape[2] == keys.shape[1]
        ):
            return cache  # already sized for the prompted sequence
        # Rows the cache fill overwrites: only their number matters.
        zeros = ops.zeros(
            (*ops.shape(cache)[:2], total, *ops.shape(cache)[3:]),
            cache.dtype,
        )
        at = self.insert_at
        return ops.concatenate(
            [cache[:, :, :at], zeros, cache[:, :, at:]], axis=2
        )

    def call(self, inputs, *args, **kwargs):
        if is_disabled(self):
            return self.base_layer(inputs, *args, **kwargs)
        total = prompt_layout.total_length(self)
        lengths = prompt_layout.example_lengths(self)
        at = self.insert_at
        mask = kwargs.get(self.mask_argument)
        if mask is not None:
            kwargs[self.mask_argument] = prompt_layout.grow_mask(
                mask, total, at, lengths
            )
        cache = kwargs.get(self.cache_argument)
        if cache is not None:
            kwargs[self.cache_argument] = self._grow_cache(cache, kwargs, total)
        outputs = self.base_layer(inputs, *args, **kwargs)
        first = _first(outputs)
        if self.fill_output:
            source = max(at - 1, 0)
            copies = ops.repeat(first[:, source : source + 1], total, 1)
            first = prompt_layout.insert(first, copies, at, lengths)
        elif self.strip_output:
            first = prompt_layout.strip(first, total, at, lengths)
        return _with_first(outputs, first)
