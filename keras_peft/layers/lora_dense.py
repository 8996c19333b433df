"""LoRA: a trainable low-rank update beside a frozen dense layer."""

import math
import string

import keras
from keras import ops

from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.disabling import is_disabled
from keras_peft.layers.validation import check_int
from keras_peft.layers.wrapper import Wrapper

_DENSE_EQUATION = "...a,ab->...b"


def is_linear(activation):
    """Whether `activation` leaves its input as it is (`None` too)."""
    return activation is None or activation is keras.activations.linear


def _expand_ellipsis(equation, input_rank):
    """Writes the `...` of an einsum equation out as letters."""
    input_spec = equation.split(",")[0]
    if "..." not in equation:
        if input_rank != len(input_spec):
            raise ValueError(
                f"An input of rank {input_rank} does not fit the einsum "
                f"equation {equation!r}."
            )
        return equation
    count = input_rank - (len(input_spec) - 3)
    if count < 0:
        raise ValueError(
            f"An input of rank {input_rank} does not fit the einsum "
            f"equation {equation!r}."
        )
    free = [c for c in string.ascii_lowercase if c not in equation]
    return equation.replace("...", "".join(free[:count]))


def _parse_equation(equation, input_rank=None):
    """Splits a dense einsum equation into LoRA's equations.

    The kernel's axes that the input shares are the ones LoRA's down matrix
    `A` contracts; the rest are the output axes LoRA's up matrix `B` spans.
    With `input_rank`, `...` is written out and the gradient equations of
    the fused forward pass are included.
    """
    try:
        inputs, output = equation.split("->")
        input_spec, kernel_spec = inputs.split(",")
    except ValueError:
        raise ValueError(
            f"Cannot apply LoRA to einsum equation {equation!r}: expected "
            "the form 'input,kernel->output'."
        ) from None
    if input_rank is not None:
        equation = _expand_ellipsis(equation, input_rank)
        inputs, output = equation.split("->")
        input_spec, kernel_spec = inputs.split(",")
    in_axes = "".join(c for c in kernel_spec if c in input_spec)
    out_axes = "".join(c for c in kernel_spec if c not in input_spec)
    shared = [c for c in in_axes if c in output]
    missing = [c for c in out_axes if c not in output]
    if shared or missing or not in_axes or not out_axes:
        raise ValueError(
            f"Cannot apply LoRA to einsum equation {equation!r}: the kernel "
            "must split into axes contracted with the input and axes that "
            "appear in the output."
        )
    used = set(equation)
    rank_axis = next(c for c in string.ascii_lowercase if c not in used)
    rest = input_spec
    for axis in in_axes:
        rest = rest.replace(axis, "")
    z = rank_axis
    b = input_spec[0]
    return {
        # The fused pass's gradients need every non-contracted input axis in
        # the output; an equation that sums one away takes the plain path.
        "fusable": set(rest) <= set(output),
        "in_axes": [kernel_spec.index(c) for c in in_axes],
        "out_axes": [kernel_spec.index(c) for c in out_axes],
        "down": f"{input_spec},{in_axes}{z}->{rest}{z}",
        "up": f"{rest}{z},{z}{out_axes}->{output}",
        # With one A and B per example (the input's first axis).
        "down_per_example": f"{input_spec},{b}{in_axes}{z}->{rest}{z}",
        "up_per_example": f"{rest}{z},{b}{z}{out_axes}->{output}",
        "merge": f"{in_axes}{z},{z}{out_axes}->{kernel_spec}",
        # Gradients of the fused forward pass (see `LoRADense._fused`).
        "grad_input": f"{output},{kernel_spec}->{input_spec}",
        "grad_b": f"{rest}{z},{output}->{z}{out_axes}",
        "grad_down": f"{output},{z}{out_axes}->{rest}{z}",
        "grad_a": f"{input_spec},{rest}{z}->{in_axes}{z}",
    }


@keras.saving.register_keras_serializable(package="keras_peft")
class LoRADense(Wrapper, AdapterLayer):
    """A frozen `Dense` or `EinsumDense` plus a trainable low-rank update.

    Computes `activation(base(x) + scale * dropout(x) @ A @ B)`, where `base`
    is the frozen layer without its activation, `A` (input width x `rank`)
    starts He-uniform and `B` (`rank` x output width) starts at zero, so the
    layer computes exactly what `base` computed until it trains. `scale` is
    `alpha / rank`, or `alpha / sqrt(rank)` with `use_rslora=True`. For an
    `EinsumDense`, `A` spans the kernel axes contracted with the input and
    `B` the kernel axes of the output, so a `(d, heads, head_dim)` attention
    projection gets `A: (d, rank)` and `B: (rank, heads, head_dim)`.

    `A` and `B` are float32 whatever the dtype policy. `merge()` folds the
    update into the base kernel (no inference cost); `unmerge()` takes it out.

    Without active dropout the forward pass is one product with the kernel
    `W + scale * A @ B`, by the base layer's own op (`matmul` for `Dense`,
    its einsum for `EinsumDense`), so it costs what the base costs and an
    untrained update returns the base's output bit for bit. A custom
    gradient gives `A` and `B` their gradients through thin rank-`r`
    products, never forming the full kernel gradient that keras' built-in
    `enable_lora` computes.

    Args:
        units: int. Output width of a new frozen `Dense`, when `base_layer` is
            not given. Defaults to `None`.
        rank: int. Rank of the update. Defaults to `8`.
        alpha: float. Scale numerator. Defaults to `8.0`.
        dropout: float. Dropout rate on the update's input. Defaults to `0.0`.
        use_rslora: bool. Scale by `alpha / sqrt(rank)` (rank-stabilized
            LoRA) instead of `alpha / rank`. Defaults to `False`.
        base_layer: a `keras.layers.Dense` or `keras.layers.EinsumDense` to
            wrap. Its variables are frozen and its activation moves to this
            layer. Defaults to `None`.
        activation: activation of a new `Dense` built from `units`. Defaults
            to `None`.
        use_bias: bool. Whether a new `Dense` has a bias. Defaults to `True`.
        kernel_initializer: initializer of a new `Dense`'s frozen kernel.
            Defaults to `"glorot_uniform"`.
        lora_a_initializer: initializer of `A`. Defaults to `"he_uniform"`.
        merged: bool. Whether the base kernel already holds the update (set
            by `from_config`). Defaults to `False`.
        **kwargs: base layer arguments such as `name` and `dtype`.

    Example:
    ```python
    dense = keras.layers.Dense(64)
    dense.build((None, 32))
    layer = keras_peft.layers.LoRADense(base_layer=dense, rank=4, alpha=8)
    y = layer(np.ones((2, 32)))  # equals dense(x) until A and B train
    layer.merge()                # y unchanged; the update is in the kernel
    ```

    Reference:
        - [Hu et al., 2021](https://arxiv.org/abs/2106.09685)
        - [Kalajdzievski, 2023](https://arxiv.org/abs/2312.03732) (rsLoRA)
    """

    method = "lora"
    switchable = True
    # Moved from the base layer, which every adapter at the layer shares.
    slot_independent_settings = ("activation",)
    # Adapters of other ranks and scales share the layer: each slot keeps
    # its own, padded with zero rank components where slots are stacked.
    per_slot_settings = ("rank", "alpha", "use_rslora")
    padded_axes = {"lora_a": -1, "lora_b": 0}

    def __init__(
        self,
        units=None,
        rank=8,
        alpha=8.0,
        dropout=0.0,
        use_rslora=False,
        base_layer=None,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        lora_a_initializer="he_uniform",
        merged=False,
        **kwargs,
    ):
        _validate_hyperparameters(rank, alpha, dropout)
        if base_layer is None:
            if not isinstance(units, int) or isinstance(units, bool):
                raise ValueError(
                    "LoRADense needs either `units` (a positive int) or a "
                    f"`base_layer`. Received: units={units!r}"
                )
            if units <= 0:
                raise ValueError(f"`units` must be positive. Got {units}.")
        else:
            _validate_base_layer(base_layer)
            _parse_equation(getattr(base_layer, "equation", _DENSE_EQUATION))
            if units is not None:
                raise ValueError(
                    "Pass either `units` or `base_layer` to LoRADense, not "
                    f"both. Received: units={units!r}, base_layer="
                    f"{base_layer.name!r}"
                )
        super().__init__(base_layer, **kwargs)
        self.rank = rank
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.use_rslora = bool(use_rslora)
        self.merged = bool(merged)
        self.lora_a_initializer = keras.initializers.get(lora_a_initializer)

        if base_layer is None:
            # Made here, once this layer's dtype policy is known.
            base_layer = self.base_layer = keras.layers.Dense(
                units,
                use_bias=use_bias,
                kernel_initializer=kernel_initializer,
                dtype=self.dtype_policy,
                name="dense",
            )
            self.activation = keras.activations.get(activation)
        else:
            own = keras.activations.get(activation)
            if not is_linear(own) and not is_linear(base_layer.activation):
                raise ValueError(
                    f"Both LoRADense and its base layer {base_layer.name!r} "
                    "have an activation; give it to only one of them."
                )
            self.activation = base_layer.activation if is_linear(own) else own
        # The update must act before the activation, so this layer applies
        # it and the base computes only the affine part.
        self._base_activation = base_layer.activation
        if not is_linear(base_layer.activation):
            base_layer.activation = keras.activations.linear
        # The kernel as it was before `merge()`, so that `unmerge()` restores
        # it bit for bit: `(k + d) - d` is not `k` in floating point.
        self._kernel_before_merge = None
        self.dropout_layer = (
            keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
            if self.dropout > 0
            else None
        )
        if base_layer.built:
            self.build(base_layer.get_build_config()["input_shape"])

    @property
    def scale(self):
        """The factor the update `x @ A @ B` is multiplied by."""
        return self.slot_scale(0)

    def slot_scale(self, slot):
        """The scale of slot `slot`'s update (its own rank and alpha)."""
        rank = self.slot_setting(slot, "rank")
        alpha = self.slot_setting(slot, "alpha")
        if self.slot_setting(slot, "use_rslora"):
            return alpha / math.sqrt(rank)
        return alpha / rank

    def slot_scales(self, name):
        # Switched, each slot's B is scaled by its own scale as it is
        # taken; a layer with one adapter scales it in `call`.
        if name != "lora_b":
            return None
        return [self.slot_scale(s) for s in range(max(len(self.slot_names), 1))]

    def _equations(self, input_rank=None):
        equation = getattr(self.base_layer, "equation", _DENSE_EQUATION)
        return _parse_equation(equation, input_rank)

    def build(self, input_shape):
        if not self.base_layer.built:
            self.base_layer.build(input_shape)
        self.freeze_base()
        kernel_shape = self.base_layer.kernel.shape
        equations = self._equations()
        # LoRA weights should be float32 to avoid the risk of underflow
        # during fine-tuning under a mixed-precision policy.
        self.lora_a = self.add_weight(
            name="lora_a",
            shape=[kernel_shape[i] for i in equations["in_axes"]] + [self.rank],
            initializer=self.lora_a_initializer,
            dtype="float32",
        )
        self.lora_b = self.add_weight(
            name="lora_b",
            shape=[self.rank]
            + [kernel_shape[i] for i in equations["out_axes"]],
            initializer="zeros",
            dtype="float32",
        )

    def call(self, inputs, training=None):
        if self.merged and training:
            raise ValueError(
                f"LoRADense {self.name!r} is merged: its update is inside the "
                "frozen kernel, so training would not reach A and B. Call "
                "`unmerge()` (or `keras_peft.unmerge_lora(model)`) before "
                "training."
            )
        if self.merged or is_disabled(self):
            return self.activation(self.base_layer(inputs))
        if not keras.backend.is_float_dtype(inputs.dtype):
            # As the base's matmul or einsum promotes integer inputs.
            inputs = ops.cast(inputs, self.compute_dtype)
        lora_a, lora_b = self.slot_values(self.lora_a, self.lora_b)
        # Scaling the small B, not the activation-sized update, saves a
        # full-size multiply per call. Switched, `slot_values` scaled each
        # slot's B by its own scale.
        if not self.switched:
            lora_b = ops.multiply(lora_b, self.scale)
        lora_a = ops.cast(lora_a, inputs.dtype)
        lora_b = ops.cast(lora_b, inputs.dtype)
        equations = self._equations(len(inputs.shape))
        if (
            (self.dropout_layer is not None and training)
            or not equations["fusable"]
            or not self._base_call_is_standard
            or self.routed
        ):
            x = inputs
            if self.dropout_layer is not None:
                x = self.dropout_layer(inputs, training=training)
            # Routed per example, A and B carry a leading batch axis.
            down_equation, up_equation = (
                (equations["down_per_example"], equations["up_per_example"])
                if self.routed
                else (equations["down"], equations["up"])
            )
            down = ops.einsum(down_equation, x, lora_a)
            update = ops.einsum(up_equation, down, lora_b)
            outputs = ops.add(self.base_layer(inputs), update)
        else:
            outputs = self._fused(equations, self._base_product)(
                inputs,
                ops.cast(self.base_layer.kernel, inputs.dtype),
                lora_a,
                lora_b,
            )
            if self.base_layer.bias is not None:
                bias = ops.cast(self.base_layer.bias, outputs.dtype)
                outputs = ops.add(outputs, bias)
        return self.activation(outputs)

    @property
    def _base_call_is_standard(self):
        """Whether the base computes `activation(x W + b)` as Keras' own
        `Dense`/`EinsumDense` do: only then can the fused pass stand in for
        it. A subclass with its own `call` runs itself, the update added."""
        return type(self.base_layer).call in (
            keras.layers.Dense.call,
            keras.layers.EinsumDense.call,
        )

    def _base_product(self, inputs, kernel):
        """`inputs` times `kernel` by the very op the base layer uses.

        matmul and einsum round differently on some CPUs, so only the base's
        own op makes an update of zero give the base's output bit for bit.
        """
        if isinstance(self.base_layer, keras.layers.EinsumDense):
            return ops.einsum(self.base_layer.equation, inputs, kernel)
        return ops.matmul(inputs, kernel)

    @staticmethod
    def _fused(equations, product):
        """`x -> product(x, W + A B)` with the gradients of the low-rank form.

        The forward pass is one product with the merged kernel, as cheap as
        the base layer's and computed by the base layer's own op (`product`).
        The backward pass never forms the full kernel gradient (which the
        base kernel, being frozen, does not need): `A` and `B` get theirs
        from thin rank-`r` products, and the input gets the merged kernel's
        transpose product.
        """

        @ops.custom_gradient
        def fused(x, kernel, lora_a, lora_b):
            merged = ops.add(
                kernel, ops.einsum(equations["merge"], lora_a, lora_b)
            )
            outputs = product(x, merged)

            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                down = ops.einsum(equations["down"], x, lora_a)
                grad_down = ops.einsum(equations["grad_down"], upstream, lora_b)
                return (
                    ops.einsum(equations["grad_input"], upstream, merged),
                    ops.zeros_like(kernel),
                    ops.einsum(equations["grad_a"], x, grad_down),
                    ops.einsum(equations["grad_b"], down, upstream),
                )

            return outputs, grad

        return fused

    def delta_kernel(self):
        """The update `scale * A @ B` in the base kernel's layout (float32)."""
        delta = ops.einsum(self._equations()["merge"], self.lora_a, self.lora_b)
        return delta * self.scale

    def merge(self):
        """Folds the update into the base kernel. Idempotent.

        Keeps a host copy of the kernel so that `unmerge()` is exact; the copy
        goes with the layer (`keras_peft.merge_lora(model, unload=True)`).
        """
        if self.merged:
            return
        if len(self.slot_names) > 1 or self.active_slot is not None:
            raise ValueError(
                f"LoRADense {self.name!r} holds several named adapters "
                f"({list(self.slot_names)}): merging one into the shared "
                "kernel would change the others. Delete the other adapters "
                "first (`keras_peft.delete_adapter`)."
            )
        kernel = self.base_layer.kernel
        self._kernel_before_merge = ops.convert_to_numpy(kernel)
        delta = ops.cast(self.delta_kernel(), kernel.dtype)
        kernel.assign(ops.add(kernel, delta))
        self.merged = True

    def unmerge(self):
        """Takes the update back out of the base kernel. Idempotent.

        Restores the kernel exactly as it was before `merge()`, whatever
        `A` and `B` hold now. A layer that was saved merged and reloaded
        has no such copy; the update is subtracted instead.
        """
        if not self.merged:
            return
        kernel = self.base_layer.kernel
        if self._kernel_before_merge is not None:
            kernel.assign(self._kernel_before_merge)
        else:
            delta = ops.cast(self.delta_kernel(), kernel.dtype)
            kernel.assign(ops.subtract(kernel, delta))
        self._kernel_before_merge = None
        self.merged = False

    def release(self):
        """Gives the base layer back its activation and trainable flags.

        Returns:
            The base layer, as it was before this layer wrapped it (its kernel
            keeps whatever `merge()` put into it).
        """
        self.base_layer.activation = self._base_activation
        return super().release()

    def compute_output_shape(self, input_shape):
        return self.base_layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        base_layer = config.pop("base_layer")
        activation = self.activation
        if not is_linear(self._base_activation):
            # The activation came from the base: store it there, so that the
            # restored layer takes it over again and `release()` gives it
            # back to the base.
            base_layer["config"]["activation"] = keras.activations.serialize(
                self._base_activation
            )
            activation = keras.activations.linear
        config.update(
            {
                "rank": self.rank,
                "alpha": self.alpha,
                "dropout": self.dropout,
                "use_rslora": self.use_rslora,
                "merged": self.merged,
                "activation": keras.activations.serialize(activation),
                "lora_a_initializer": keras.initializers.serialize(
                    self.lora_a_initializer
                ),
                "base_layer": base_layer,
            }
        )
        return config


def _validate_hyperparameters(rank, alpha, dropout):
    check_int("rank", rank, owner="LoRA ")
    if (
        not isinstance(alpha, (int, float))
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(
            f"LoRA `alpha` must be a positive number. Got {alpha!r}."
        )
    if (
        not isinstance(dropout, (int, float))
        or isinstance(dropout, bool)
        or not 0 <= dropout < 1
    ):
        raise ValueError(
            f"LoRA `dropout` must be a number in [0, 1). Got {dropout!r}."
        )


def _validate_base_layer(layer):
    if not isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
        raise TypeError(
            "LoRADense wraps a keras.layers.Dense or keras.layers.EinsumDense. "
            f"Received: {type(layer).__name__} {getattr(layer, 'name', '')!r}"
        )
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(
            f"Cannot wrap layer {layer.name!r}: it is quantized "
            f"({layer.quantization_mode}). Apply LoRA before quantizing."
        )
    if getattr(layer, "lora_enabled", False):
        raise ValueError(
            f"Layer {layer.name!r} already has Keras' built-in LoRA enabled "
            "(`enable_lora`); use one or the other."
        )
