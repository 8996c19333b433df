"""Prefix tuning: trainable keys and values prepended at an attention layer."""

import functools

import keras
from keras import ops
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.disabling import is_disabled
from keras_peft.layers.validation import check_int
from keras_peft.layers.wrapper import Wrapper

# T5 folds its attention mask into the position bias with this value.
_T5_MASK_BIAS = -1e9
# In float16 -1e9 is -inf, and a kept position's 0 * -inf is NaN: there the
# fold uses float16's most negative finite value.
_T5_MASK_BIAS_FLOAT16 = -65504.0


def attention_dims(layer):
    """`(heads, key_dim, value_dim)` of a supported attention layer."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return layer.num_heads, layer.key_dim, layer.value_dim or layer.key_dim
    if isinstance(layer, T5MultiHeadAttention):
        head_dim = layer.key_value_dim
        return layer.num_heads, head_dim, head_dim
    raise TypeError(
        "PrefixAttention wraps a keras.layers.MultiHeadAttention or "
        f"keras-hub's T5MultiHeadAttention. Received: {type(layer).__name__}"
    )


def _slot_of(layer, name):
    """The slot of adapter `name` in `layer` (`None`: slot 0)."""
    if name is None or not layer.slot_names:
        return 0
    return layer.slot_names.index(name)


def _check_source(source, index, length, heads, head_dim):
    expected = (length, heads, head_dim)
    found = (source.length, source.num_heads, source.head_dim)
    if found != expected:
        raise ValueError(
            "The prefix source's (length, num_heads, head_dim) "
            f"{found} do not match the attention layer's {expected}."
        )
    if not isinstance(index, int) or not 0 <= index < source.num_layers:
        raise ValueError(
            f"`source_index` must be in [0, {source.num_layers}). "
            f"Got {index!r}."
        )


@keras.saving.register_keras_serializable(package="keras_peft")
class PrefixAttention(Wrapper, AdapterLayer):
    """An attention layer whose keys and values start with a trained prefix.

    At every call, `length` trainable key vectors `P_k` and value vectors
    `P_v` (per head) are prepended to the projected keys and values, and the
    attention mask grows with ones for them, so each query attends over
    `[P_k; K]`. Query length and output shapes are unchanged. By the unified
    view of He et al. (2022) the output is
    `(1 - lambda) * Attn(Q, K, V) + lambda * Attn(Q, P_k, P_v)`.

    Holding several named adapters (one prefix slot each), the layer masks
    the prefix keys out (mask 0, or T5's mask bias) where the adapter
    computing, or an example's adapter inside `keras_peft.multi_task`,
    holds no slot: zero keys would still take a share of the attention.

    The wrapped layer's own code does the attention: for a
    `keras.layers.MultiHeadAttention` only its `_compute_attention` step is
    extended (the prefix joins the projected keys and values); for keras-hub's
    `T5MultiHeadAttention` the prefix enters through the layer's key/value
    cache, so full forward passes and keras-hub's cached decoding see the
    same prefix. T5's relative position bias is 0 for prefix keys: they have
    no position. The bias of real keys is exactly as before.

    Args:
        attention_layer: a built `keras.layers.MultiHeadAttention` or
            `T5MultiHeadAttention`.
        length: int. Number of prefix vectors `l`.
        prefix_initializer: initializer of the `(length, heads, head_dim)`
            prefix keys and values. Defaults to `RandomNormal(stddev=0.02)`.
        prefix_source: optional `keras_peft.layers.PrefixReparametrization`
            shared by several layers; the prefix is then its output for
            `source_index` (Li & Liang's reparametrization) until `eject()`.
        source_index: int. This layer's index in `prefix_source`.
        **kwargs: base layer arguments such as `name`.

    Example:
    ```python
    mha = keras.layers.MultiHeadAttention(num_heads=4, key_dim=16)
    mha.build((None, 10, 64), (None, 10, 64))
    layer = keras_peft.layers.PrefixAttention(mha, length=30)
    y = layer(x, x)  # same call signature as the wrapped layer
    ```

    Reference:
        - [Li & Liang, 2021](https://arxiv.org/abs/2101.00190)
        - [He et al., 2022](https://arxiv.org/abs/2110.04366)
    """

    method = "prefix_tuning"
    base_argument = "attention_layer"
    switchable = True

    def __new__(cls, attention_layer=None, *args, **kwargs):
        # One public layer; each attention kind has its own call signature.
        if cls is PrefixAttention and isinstance(
            attention_layer, T5MultiHeadAttention
        ):
            cls = T5PrefixAttention
        return super().__new__(cls, attention_layer, *args, **kwargs)

    def __init__(
        self,
        attention_layer,
        length,
        prefix_initializer=None,
        prefix_source=None,
        source_index=0,
        **kwargs,
    ):
        heads, key_dim, value_dim = attention_dims(attention_layer)
        check_int("length", length)
        if not attention_layer.built:
            raise ValueError(
                f"PrefixAttention needs a built attention layer; "
                f"{attention_layer.name!r} is not built."
            )
        super().__init__(attention_layer, **kwargs)
        self.length = length
        self.num_heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        self.prefix_initializer = keras.initializers.get(
            prefix_initializer or keras.initializers.RandomNormal(stddev=0.02)
        )
        if prefix_source is not None:
            _check_source(prefix_source, source_index, length, heads, key_dim)
            if key_dim != value_dim:
                raise ValueError(
                    "A shared prefix source needs equal key and value widths."
                )
        self.prefix_source = prefix_source
        self.source_index = source_index
        if prefix_source is not None:
            prefix_source.serve(source_index, attention_layer)
        self.build()
        self.freeze_base()
        if isinstance(attention_layer, keras.layers.MultiHeadAttention):
            # The smallest piece of Keras' attention to extend: the step that
            # attends over the projected keys and values.
            original = functools.partial(
                type(attention_layer)._compute_attention, attention_layer
            )
            # Another prefix layer's step, while this one is planned to
            # become its slot (`add_slot`): given back on `release`.
            self._previous_step = vars(attention_layer).get(
                "_compute_attention"
            )
            self._attention_step = functools.partial(
                self._compute_attention_with_prefix, original
            )
            attention_layer._compute_attention = self._attention_step

    def build(self, *args, **kwargs):
        if self.built:
            return
        if self.prefix_source is None:
            self._add_prefix_weights(self.prefix_initializer)
        self.built = True

    def _add_prefix_weights(self, initializer, values=None):
        self.prefix_key = self.add_weight(
            name="prefix_key",
            shape=(self.length, self.num_heads, self.key_dim),
            initializer=initializer,
        )
        self.prefix_value = self.add_weight(
            name="prefix_value",
            shape=(self.length, self.num_heads, self.value_dim),
            initializer=initializer,
        )
        if values is not None:
            self.prefix_key.assign(values[0])
            self.prefix_value.assign(values[1])

    def prefix(self, name=None):
        """The prefix keys and values, each `(length, heads, head_dim)`.

        Args:
            name: str or `None`. The named adapter whose prefix to give;
                `None`: the layer's first (slot 0).
        """
        source = self.prefix_source
        if source is not None:
            slot = _slot_of(source, name)
            return source.layer_prefix(self.source_index, slot=slot)
        return tuple(self.slot_variables(_slot_of(self, name)))

    def eject(self):
        """Keeps the computed prefix and drops the shared source.

        Replaces the reparametrization by its output for this layer: the
        layer computes the same, and from then on owns (and trains) just its
        `2 * length * heads * head_dim` prefix values (per named adapter it
        holds).
        """
        source = self.prefix_source
        if source is None:
            return
        names = self.slot_names or (None,)
        values = [
            [ops.convert_to_numpy(v) for v in self.prefix(name)]
            for name in names
        ]
        self._tracker.unlock()
        try:
            self._tracker.untrack(source)
            self.prefix_source = None
            self._add_prefix_weights("zeros", values[0])
        finally:
            self._tracker.lock()
        self._set_bank_rows(values[1:])

    def signature_config(self):
        # Not `get_config()`: a T5 attention layer has none to give.
        return {
            "length": self.length,
            "reparam": self.prefix_source is not None,
        }

    def _template_variables(self):
        # A shared MLP's variables are its own slots', not this layer's.
        variables = super()._template_variables()
        if self.prefix_source is None:
            return variables
        theirs = {id(v) for v in self.prefix_source.weights}
        return [v for v in variables if id(v) not in theirs]

    def check_slot_source(self, source):
        super().check_slot_source(source)
        mine, theirs = self.prefix_source, source.prefix_source
        if mine is None:
            return
        # Adapters whose MLPs feed the same layers share one MLP layer,
        # one slot each: the same attention layer at every index.
        if mine.served_layers() != theirs.served_layers():
            raise ValueError(
                f"PrefixAttention {self.path!r}: the prefix MLP of adapters "
                f"{list(self.slot_names)} feeds other attention layers than "
                "the new adapter's. Prefixes trained through an MLP share "
                "layers only where they select the same attention layers "
                "(`attention`): select the same ones, or eject the model's "
                "prefixes (`keras_peft.eject_prefix`) and train the new one "
                "with reparam=False."
            )
        mine.check_slot_source(theirs)

    def _acting_prefix(self):
        """The prefix to compute with: `prefix()`, or while switched the
        active slot's (zeros for none), each `(batch, l, heads, dim)` while
        routed per example."""
        if self.prefix_source is not None:
            return self.prefix_source.layer_prefix(self.source_index)
        return self.slot_values(self.prefix_key, self.prefix_value)

    def _prefix_acts(self):
        """Whether the prefix acts: `None` while the layer holds one
        adapter (it always acts); else a bool, scalar or one per example
        while routed, false where the adapter computing holds no slot here.

        A prefix cannot be switched off by zeros, as other adapters are:
        zero keys still take a share of the attention. Its keys are masked
        out instead."""
        if not self.switched:
            return None
        return ops.less(self._slot_index(), max(len(self.slot_names), 1))

    def _batched_prefix(self, batch_size, dtype):
        keys, values = (ops.cast(v, dtype) for v in self._acting_prefix())
        if self.routed:
            return keys, values
        return (
            ops.broadcast_to(keys[None], (batch_size, *keys.shape)),
            ops.broadcast_to(values[None], (batch_size, *values.shape)),
        )

    def _batched_prefix_cache(self, batch_size, dtype):
        """The prefix as a T5 cache, `(batch, 2, length, heads, dim)`."""
        return ops.stack(self._batched_prefix(batch_size, dtype), axis=1)

    def _prefix_mask(self, shape, dtype):
        """The attention mask's `length` prefix columns, of `shape`
        (`(batch, ..., length)`): ones, or, while switched, where the prefix
        acts."""
        acts = self._prefix_acts()
        if acts is None:
            return ops.ones(shape, dtype)
        if self.routed:
            acts = ops.reshape(acts, (-1,) + (1,) * (len(shape) - 1))
        return ops.cast(ops.broadcast_to(acts, shape), dtype)

    def _compute_attention_with_prefix(
        self,
        original,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
    ):
        if is_disabled(self):
            extra = {"use_causal_mask": True} if use_causal_mask else {}
            return original(
                query,
                key,
                value,
                attention_mask,
                training,
                return_attention_scores,
                **extra,
            )
        batch_size = ops.shape(key)[0]
        prefix_key, prefix_value = self._batched_prefix(batch_size, key.dtype)
        query_length, key_length = ops.shape(query)[1], ops.shape(key)[1]
        if use_causal_mask and attention_mask is None:
            attention_mask = ops.tril(
                ops.ones((1, query_length, key_length), "bool"),
                k=key_length - query_length,
            )
        if attention_mask is None and self.switched:
            # Masking the prefix out needs a mask.
            attention_mask = ops.ones((1, query_length, key_length), "bool")
        key = ops.concatenate([prefix_key, key], axis=1)
        value = ops.concatenate([prefix_value, value], axis=1)
        if attention_mask is not None:
            if self.routed:
                attention_mask = ops.broadcast_to(
                    attention_mask,
                    (batch_size, *ops.shape(attention_mask)[1:]),
                )
            prefix_mask = self._prefix_mask(
                (*ops.shape(attention_mask)[:-1], self.length),
                attention_mask.dtype,
            )
            attention_mask = ops.concatenate(
                [prefix_mask, attention_mask], axis=-1
            )
        return original(
            query, key, value, attention_mask, training, return_attention_scores
        )

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        return self.base_layer(
            query,
            value,
            key=key,
            query_mask=query_mask,
            value_mask=value_mask,
            key_mask=key_mask,
            attention_mask=attention_mask,
            return_attention_scores=return_attention_scores,
            training=training,
            use_causal_mask=use_causal_mask,
        )

    def release(self):
        """Gives the attention layer back the attention step it had (its
        own) and its flags."""
        base = self.base_layer
        step = getattr(self, "_attention_step", None)
        if step is not None and vars(base).get("_compute_attention") is step:
            if self._previous_step is None:
                del base._compute_attention
            else:
                base._compute_attention = self._previous_step
        return super().release()

    def add_slot(self, name, source):
        super().add_slot(name, source)
        mlp = self.prefix_source
        if mlp is not None and name not in mlp.slot_names:
            # The first of the layers it feeds to take the adapter.
            mlp.add_slot(name, source.prefix_source)
        # `source` was built around the same attention layer and took over
        # its attention step; from now on this layer computes its prefix.
        if source.base_layer is self.base_layer:
            source.release()

    def get_config(self):
        if self.prefix_source is not None:
            raise ValueError(
                f"PrefixAttention {self.name!r} draws its prefix from a shared "
                "PrefixReparametrization and cannot be serialized on its own; "
                "call `eject()` first."
            )
        config = super().get_config()
        config.update(
            {
                "length": self.length,
                "prefix_initializer": keras.initializers.serialize(
                    self.prefix_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_peft")
class T5PrefixAttention(PrefixAttention):
    """`PrefixAttention` around keras-hub's `T5MultiHeadAttention`.

    `PrefixAttention(t5_attention, length)` returns one of these; it takes
    and returns what `T5MultiHeadAttention` does, with one difference in the
    cache it returns. Keys and values are projected by this layer and handed
    to the wrapped one as a ready cache `[P; K]`:

    - a self-attention cache comes back as the wrapped layer would return
      it (the new keys and values written at `cache_update_index`), never
      holding the prefix, so caches keep their size;
    - a cross-attention cache that this layer fills (a call with
      `key_value_states`, `cache` and `cache_update_index`) comes back
      `length` rows longer, the prefix in front. keras-hub fills the
      cross-attention cache once and reuses it at every decoding step,
      which then copies nothing. A cross-attention cache spans the whole
      source sequence, so one whose static length is the source's plus
      `length` is recognised as holding the prefix.
    """

    def call(
        self,
        hidden_states,
        mask=None,
        key_value_states=None,
        position_bias=None,
        cache=None,
        cache_update_index=None,
        training=False,
    ):
        base = self.base_layer
        if is_disabled(self):
            return base(
                hidden_states,
                mask=mask,
                key_value_states=key_value_states,
                position_bias=position_bias,
                cache=cache,
                cache_update_index=cache_update_index,
                training=training,
            )
        batch_size, query_length = ops.shape(hidden_states)[:2]
        # Keys and values are projected here and the attention reads them
        # from a ready cache `[P; K]`: shifting the wrapped layer's own cache
        # update past the prefix would copy the whole cache into a longer
        # one at every decoding step and slice it back, and filling a cache
        # (`slice_update`) has no gradient on TensorFlow in full passes.
        holds_prefix = self._holds_prefix(cache, key_value_states)
        query_start = 0
        if cache is None:
            keys = self._project(hidden_states, key_value_states)
        elif cache_update_index is None:
            keys = cache
        else:
            projected = self._project(hidden_states, key_value_states)
            start = cache_update_index + (self.length if holds_prefix else 0)
            keys = ops.slice_update(
                cache, (0, 0, start, 0, 0), ops.cast(projected, cache.dtype)
            )
            query_start = cache_update_index
        if holds_prefix:
            extended_cache = keys
            key_length = ops.shape(keys)[2] - self.length
        else:
            key_length = ops.shape(keys)[2]
            extended_cache = ops.concatenate(
                [self._batched_prefix_cache(batch_size, keys.dtype), keys],
                axis=2,
            )
        new_cache = None
        if cache is not None:
            # A cross-attention cache this layer fills leaves holding the
            # prefix, so the decoding steps that reuse it copy nothing.
            keeps_prefix = holds_prefix or (
                cache_update_index is not None
                and self._sized_for_source(cache, key_value_states, 0)
            )
            new_cache = extended_cache if keeps_prefix else keys

        if position_bias is None:
            if base.use_relative_attention_bias:
                position_bias = base.compute_bias(
                    query_length, key_length, query_start_index=query_start
                )
            else:
                position_bias = ops.zeros(
                    (1, self.num_heads, query_length, key_length),
                    base.compute_dtype,
                )
            if mask is not None:
                mask = ops.cast(mask[:, None, :, :], position_bias.dtype)
                if keras.backend.standardize_dtype(mask.dtype) == "float16":
                    # Clamped too: a negative bias plus the fill would be
                    # -inf, and a later layer given a fully masked row NaN.
                    position_bias = ops.maximum(
                        position_bias + (1.0 - mask) * _T5_MASK_BIAS_FLOAT16,
                        _T5_MASK_BIAS_FLOAT16,
                    )
                else:
                    position_bias = position_bias + (1.0 - mask) * _T5_MASK_BIAS
        # Prefix keys have no position: their bias is 0 (or the mask's fill
        # where the prefix is switched off). The bias passed on to the next
        # layer of the stack stays without the prefix columns, so wrapped
        # and plain layers can follow one another.
        outputs, _, _ = base(
            hidden_states,
            key_value_states=key_value_states,
            position_bias=self._with_prefix_bias(position_bias, batch_size),
            cache=extended_cache,
            training=training,
        )
        return outputs, position_bias, new_cache

    def _with_prefix_bias(self, position_bias, batch_size):
        """`position_bias` with the prefix columns in front."""
        leading = ops.shape(position_bias)[:-1]
        if self.routed:
            leading = (batch_size, *leading[1:])
            position_bias = ops.broadcast_to(
                position_bias, (*leading, ops.shape(position_bias)[-1])
            )
        shape = (*leading, self.length)
        dtype = position_bias.dtype
        if self.switched:
            fill = (
                _T5_MASK_BIAS_FLOAT16
                if keras.backend.standardize_dtype(dtype) == "float16"
                else _T5_MASK_BIAS
            )
            prefix_bias = (1.0 - self._prefix_mask(shape, dtype)) * fill
        else:
            prefix_bias = ops.zeros(shape, dtype)
        return ops.concatenate([prefix_bias, position_bias], axis=-1)

    def _sized_for_source(self, cache, key_value_states, extra):
        """Whether a cross-attention cache statically spans the source."""
        if cache is None or key_value_states is None:
            return False
        source_length = key_value_states.shape[1]
        return (
            source_length is not None
            and cache.shape[2] is not None
            and cache.shape[2] == source_length + extra
        )

    def _holds_prefix(self, cache, key_value_states):
        # A cross-attention cache spans the whole source sequence, so one
        # `length` rows longer can only be one this layer filled, prefix
        # first. Self-attention caches never hold the prefix.
        return self._sized_for_source(cache, key_value_states, self.length)

    def _project(self, hidden_states, key_value_states):
        """Projected keys and values, `(batch, 2, length, heads, dim)`."""
        base = self.base_layer
        sources = (
            hidden_states if key_value_states is None else key_value_states
        )
        batch_size, length = ops.shape(sources)[:2]
        return ops.stack(
            [
                ops.reshape(
                    projector(sources),
                    (batch_size, length, self.num_heads, self.key_dim),
                )
                for projector in (base.key_projector, base.value_projector)
            ],
            axis=1,
        )
