"""Delta modules at a layer: what lets several methods act on one layer."""

import inspect
import threading

import keras

from keras_peft.layers.disabling import is_disabled
from keras_peft.layers.kept_variable import call_with
from keras_peft.layers.wrapper import Wrapper


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


class _UnlinkedTap(Tap):
    """The tap of a host restored from its config: taps link two layers, and
    a config holds one. Records nothing; reading raises."""

    def record(self, value):
        pass

    def read(self):
        raise ValueError(
            f"This layer was restored from a config, which does not link it "
            f"to the layer that records the input of site "
            f"{self.site_name!r}: a module that reads another layer's input "
            "cannot run in a restored layer. Apply the configs to the base "
            "model again (`keras_peft.load_adapter` restores the weights)."
        )


@keras.saving.register_keras_serializable(package="keras_peft")
class SiteHost(Wrapper):
    """Runs a layer, then adds its delta modules' contributions.

    `base_layer` is the layer at a site (a plain layer, or a replacing
    wrapper such as `LoRADense` or `PrefixAttention` around it). The host
    takes its place, calls it with the same arguments, and changes its
    (first) output `h`:

    1. each parallel module `m` (e.g. `ParallelAdapter`) maps `(x, h)` to a
       new `h`, where `x` is the base layer's first input or, for a module
       reading another layer's input, that layer's recorded input (`Tap`);
    2. then each sequential module (e.g. `Adapter`) maps `h` to a new `h`.

    Its kept variables (`KeptVariable`, one per variable of the innermost
    base layer that named adapters each keep their own value of) act
    before both: the base layer runs with the active adapter's values in
    place of its own.

    A host also records its first input into its `records` taps. Other
    outputs (attention scores, T5's position bias and cache) pass through.

    A host round-trips through `get_config` / `from_config` with its base
    layer and modules. A tap links two layers, which one config cannot
    hold: it is stored by its site's name, and a restored host's taps are
    unlinked. Its own-input parallel modules and sequential modules run as
    before; it records nothing, and calling a module that reads another
    layer's input raises a `ValueError`.

    Args:
        base_layer: the layer to run.
        parallel: sequence of `(module, tap)`; `tap` is `None` to read the
            base layer's own first input. Defaults to `()`.
        sequential: sequence of modules applied to `h` in order. Defaults to
            `()`.
        records: sequence of `Tap`s that receive the first input. Defaults
            to `()`.
        kept: sequence of `KeptVariable`s of the innermost base layer's
            variables. Defaults to `()`.
        **kwargs: base layer arguments; name and dtype default to the base
            layer's.

    Example:
    ```python
    dense = keras.layers.Dense(16)
    dense.build((None, 16))
    adapter = keras_peft.layers.Adapter(bottleneck=4)
    adapter.build((None, 16))
    host = keras_peft.layers.site_host.SiteHost(dense, sequential=[adapter])
    y = host(x)  # adapter(dense(x)); equals dense(x) until it trains
    ```
    """

    replacing = False

    def __new__(cls, base_layer=None, *args, **kwargs):
        # Keras reads a layer's call signature (its tensor arguments, its
        # `training` and `mask`): a host must show its base layer's.
        if cls is SiteHost or "_signature_of" in vars(cls):
            cls = _host_class(type(base_layer))
        return super().__new__(cls, base_layer, *args, **kwargs)

    def __init__(
        self,
        base_layer,
        parallel=(),
        sequential=(),
        records=(),
        kept=(),
        **kwargs,
    ):
        super().__init__(base_layer, **kwargs)
        self.parallel_modules = [module for module, _ in parallel]
        self._parallel_taps = tuple(tap for _, tap in parallel)
        self.sequential_modules = list(sequential)
        self._records = tuple(records)
        owner = innermost(base_layer)
        for module in kept:
            if module.owner is None:
                module.link(owner)
            elif module.owner is not owner:
                raise ValueError(
                    f"The kept variable {module.name!r} belongs to "
                    f"{module.owner.path!r}, not to the layer this host "
                    f"runs, {owner.path!r}."
                )
        self.kept_modules = list(kept)
        parameters = iter(inspect.signature(base_layer.call).parameters)
        self._input_name = next(parameters)
        # Built at once (it has no weights of its own), inside the caller's
        # name scope: that gives it its path.
        self.build()

    def build(self, *args, **kwargs):
        self.built = True

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
        if is_disabled(self):
            return self.base_layer(*args, **kwargs)
        inputs = args[0] if args else kwargs[self._input_name]
        for tap in self._records:
            tap.record(inputs)
        if self.kept_modules:
            outputs = call_with(
                self.kept_modules,
                lambda: self.base_layer(*args, **kwargs),
                self.base_layer,
            )
        else:
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

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "parallel": [
                    {
                        "module": serialize(module),
                        "tap": None if tap is None else tap.site_name,
                    }
                    for module, tap in self.parallel
                ],
                "sequential": [
                    serialize(module) for module in self.sequential_modules
                ],
                "records": [tap.site_name for tap in self._records],
                "kept": [serialize(module) for module in self.kept_modules],
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        config["parallel"] = [
            (
                deserialize(entry["module"]),
                None if entry["tap"] is None else _UnlinkedTap(entry["tap"]),
            )
            for entry in config.get("parallel", ())
        ]
        config["sequential"] = [
            deserialize(module) for module in config.get("sequential", ())
        ]
        config["records"] = [
            _UnlinkedTap(name) for name in config.get("records", ())
        ]
        config["kept"] = [
            deserialize(module) for module in config.get("kept", ())
        ]
        return super().from_config(config)


def innermost(layer):
    """The layer inside any wrappers around `layer`: the base model's."""
    while isinstance(getattr(layer, "wrapped_layer", None), keras.Layer):
        layer = layer.wrapped_layer
    return layer


_HOST_CLASSES = {}


def _host_class(base_class):
    """A `SiteHost` subclass whose `call` has `base_class.call`'s signature."""
    if base_class not in _HOST_CLASSES:

        def call(self, *args, **kwargs):
            return self.host_call(*args, **kwargs)

        call.__signature__ = inspect.signature(base_class.call)
        host_class = type(
            f"SiteHost[{base_class.__name__}]",
            (SiteHost,),
            {"call": call, "_signature_of": base_class},
        )
        # Saved under SiteHost's name, whose `from_config` makes the class
        # for the restored base layer: registering `host_class` gives it the
        # name, registering SiteHost again keeps the name resolving to it.
        register = keras.saving.register_keras_serializable(
            package="keras_peft", name="SiteHost"
        )
        register(host_class)
        register(SiteHost)
        _HOST_CLASSES[base_class] = host_class
    return _HOST_CLASSES[base_class]
