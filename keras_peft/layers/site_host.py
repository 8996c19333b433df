"""Delta modules at a layer: what lets several methods act on one layer."""

import inspect
import threading

import keras


class Tap:
    """Hands a site's input from the layer that reads it to the layer that
    writes the site's output, within one forward pass.

    keras-hub writes its feed-forward networks inline, so no one layer sees
    both the FFN's input and its output; the `SiteHost` of the FFN's first
    layer records the input here and the host of its last layer reads it.
    Thread-local, so that replicas traced in threads (`tf.distribute`) keep
    their own.
    """

    def __init__(self, site_name):
        self.site_name = site_name
        self._local = threading.local()

    def record(self, value):
        self._local.value = value

    def read(self):
        value = getattr(self._local, "value", None)
        if value is None:
            raise ValueError(
                f"The input of site {self.site_name!r} was not recorded: the "
                "layer that reads it did not run before the layer that "
                "writes the site's output."
            )
        return value

    def clear(self):
        self._local.value = None


class SiteHost(keras.layers.Layer):
    """Runs a layer, then adds its delta modules' contributions.

    `base_layer` is the layer at a site (a plain layer, or a replacing
    wrapper such as `LoRADense` or `PrefixAttention` around it). The host
    takes its place, calls it with the same arguments, and changes its
    (first) output `h`:

    1. each parallel module `m` (e.g. `ParallelAdapter`) maps `(x, h)` to a
       new `h`, where `x` is the base layer's first input or, for a module
       reading another layer's input, that layer's recorded input (`Tap`);
    2. then each sequential module (e.g. `Adapter`) maps `h` to a new `h`.

    A host also records its first input into its `records` taps. Other
    outputs (attention scores, T5's position bias and cache) pass through.

    Args:
        base_layer: the layer to run.
        parallel: sequence of `(module, tap)`; `tap` is `None` to read the
            base layer's own first input. Defaults to `()`.
        sequential: sequence of modules applied to `h` in order. Defaults to
            `()`.
        records: sequence of `Tap`s that receive the first input. Defaults
            to `()`.
        **kwargs: base layer arguments; name and dtype default to the base
            layer's.
    """

    def __new__(cls, base_layer=None, *args, **kwargs):
        # Keras reads a layer's call signature (its tensor arguments, its
        # `training` and `mask`): a host must show its base layer's.
        if cls is SiteHost:
            cls = _host_class(type(base_layer))
        return super().__new__(cls, base_layer, *args, **kwargs)

    def __init__(
        self, base_layer, parallel=(), sequential=(), records=(), **kwargs
    ):
        kwargs.setdefault("name", base_layer.name)
        kwargs.setdefault("dtype", base_layer.dtype_policy)
        super().__init__(**kwargs)
        self.base_layer = base_layer
        self.parallel_modules = [module for module, _ in parallel]
        self._parallel_taps = tuple(tap for _, tap in parallel)
        self.sequential_modules = list(sequential)
        self._records = tuple(records)
        parameters = iter(inspect.signature(base_layer.call).parameters)
        self._input_name = next(parameters)
        # Built at once (it has no weights of its own), inside the caller's
        # name scope: that gives it its path.
        self.build()

    def build(self, *args, **kwargs):
        self.built = True

    @property
    def wrapped_layer(self):
        return self.base_layer

    @property
    def parallel(self):
        """The `(module, tap)` pairs this host applies."""
        return tuple(zip(self.parallel_modules, self._parallel_taps))

    @property
    def records(self):
        return self._records

    def call(self, *args, **kwargs):
        return self.host_call(*args, **kwargs)

    def host_call(self, *args, **kwargs):
        inputs = args[0] if args else kwargs[self._input_name]
        for tap in self._records:
            tap.record(inputs)
        outputs = self.base_layer(*args, **kwargs)
        if not self.parallel_modules and not self.sequential_modules:
            return outputs
        several = isinstance(outputs, (tuple, list))
        hidden = outputs[0] if several else outputs
        try:
            for module, tap in self.parallel:
                hidden = module(inputs if tap is None else tap.read(), hidden)
        finally:
            # The recorded input belongs to this call (and its trace) only.
            for tap in set(self._parallel_taps) - {None}:
                tap.clear()
        for module in self.sequential_modules:
            hidden = module(hidden)
        if not several:
            return hidden
        return type(outputs)([hidden, *outputs[1:]])

    def compute_output_spec(self, *args, **kwargs):
        return self.base_layer.compute_output_spec(*args, **kwargs)

    def release(self):
        """The base layer, which the host never changed."""
        return self.base_layer


_HOST_CLASSES = {}


def _host_class(base_class):
    """A `SiteHost` subclass whose `call` has `base_class.call`'s signature."""
    if base_class not in _HOST_CLASSES:

        def call(self, *args, **kwargs):
            return self.host_call(*args, **kwargs)

        call.__signature__ = inspect.signature(base_class.call)
        _HOST_CLASSES[base_class] = type(
            f"SiteHost[{base_class.__name__}]", (SiteHost,), {"call": call}
        )
    return _HOST_CLASSES[base_class]
