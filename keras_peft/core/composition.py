"""Several methods on one layer: one replacing wrapper, any number of deltas.

Methods plan *replacing wrappers* (a `LoRADense` around a `Dense`, a
`PrefixAttention` around an attention layer: at most one per layer) and
*delta modules* at sites (adapters). `compose` turns them into the final
swaps: each layer that gets deltas is wrapped by one `SiteHost` holding the
layer (or its replacing wrapper) and every delta module acting there, those
of earlier `apply` calls included.

A layer that already carries a replacing wrapper takes no second one:
`check_wrappable` rejects it for a later `apply` call, `check_conflicts`
within one.
"""

import contextlib
import contextvars

from keras_peft.core import config as config_lib
from keras_peft.core import layer_tree
from keras_peft.core import method as method_lib
from keras_peft.core import state as state_lib
from keras_peft.core import surgery
from keras_peft.core.scopes import scope_of
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.site_host import SiteHost
from keras_peft.layers.site_host import Tap
from keras_peft.layers.wrapper import Wrapper

_ONE_REPLACING_WRAPPER = (
    "A layer carries at most one replacing wrapper (LoRA, prefix); adapters "
    "may share a layer with anything."
)


def outermost(layer, parents):
    """The layer the model refers to in place of `layer`: `layer` itself or
    the outermost wrapper (or site host) around it."""
    while True:
        parent = parents.get(id(layer))
        if (
            parent is None
            or getattr(parent, "wrapped_layer", None) is not layer
        ):
            return layer
        layer = parent


def check_conflicts(configs, method_plans):
    """Raises a `ValueError` if two configs put a replacing wrapper on one
    layer, naming both configs and the layer."""
    seen = {}
    for config, plan in zip(configs, method_plans):
        for replacement in plan.replacements:
            key = id(replacement.old)
            if key in seen:
                first, second = (
                    config_lib.describe(c) for c in (seen[key], config)
                )
                raise ValueError(
                    f"Two configs replace the same layer "
                    f"{replacement.old.path!r}: {first} and {second}. "
                    + _ONE_REPLACING_WRAPPER
                )
            seen[key] = config


# Set while a named adapter is planned beside others: a layer's replacing
# wrapper may then take the new adapter as another slot.
_SHARING = contextvars.ContextVar("keras_peft_sharing", default=None)


@contextlib.contextmanager
def sharing_layers(name):
    """While planning adapter `name` beside other named adapters (`None`:
    no sharing): a layer already wrapped by a switchable wrapper that holds
    no slot for `name` may be targeted again (the new wrapper, built
    detached, becomes a slot of the existing one)."""
    token = _SHARING.set(name)
    try:
        yield
    finally:
        _SHARING.reset(token)


def shared_name():
    """The adapter being planned beside others (`sharing_layers`), or
    `None`."""
    return _SHARING.get()


def check_wrappable(context, config, layers, graph_of=None):
    """Raises a `ValueError` unless each of `layers` can take a replacing
    wrapper for `config`. Every method checks its targets with it before
    building anything.

    A layer cannot take one when it already carries a replacing wrapper from
    an earlier `apply` (the error names that call's config, `config` and the
    layer's path), when it is part of a keras-peft layer (an adapter's own
    sub-layer), or when the model holds it where keras-peft cannot swap it
    (`surgery.check_replaceable`).

    Args:
        context: the `ModelContext`.
        config: the config that would wrap `layers`, for the message.
        layers: the layers to wrap (base layers, not their wrappers).
        graph_of: optional functional model: only its graph would change.
    """
    parents = layer_tree.parent_map(context.model)
    for layer in layers:
        wrapper = _replacing_wrapper(layer, parents)
        sharing = _SHARING.get()
        if (
            wrapper is not None
            and sharing is not None
            and _switchable(wrapper)
            and sharing not in wrapper.slot_names
        ):
            continue
        if wrapper is not None:
            raise ValueError(
                f"Layer {layer.path!r} is already wrapped by a "
                f"{type(wrapper).__name__} {_origin(context, wrapper)}; "
                f"{config_lib.describe(config)} cannot wrap it again. "
                + _ONE_REPLACING_WRAPPER
            )
        surgery.check_replaceable(context.model, layer, graph_of)


def _switchable(layer):
    return isinstance(layer, AdapterLayer) and layer.switchable


def _replacing_wrapper(layer, parents):
    """The replacing wrapper around `layer` (or `layer` itself, if it is
    one), through any site host; `None` if it has none."""
    current = layer
    while True:
        if isinstance(current, Wrapper) and current.replacing:
            return current
        parent = parents.get(id(current))
        if isinstance(parent, Wrapper) and parent.wrapped_layer is current:
            current = parent
        elif isinstance(parent, (Wrapper, AdapterLayer)):
            raise ValueError(
                f"Layer {layer.path!r} is part of keras-peft's "
                f"{type(parent).__name__} {parent.name!r}; methods wrap the "
                "base model's layers only."
            )
        else:
            return None


def _origin(context, wrapper):
    """Which earlier `apply` made `wrapper`, as text naming its config."""
    if wrapper.applied_config is not None:
        config = config_lib.describe(wrapper.applied_config)
        return f"from an earlier apply of {config}"
    # Not recorded (a wrapper built by hand): the model's applied configs
    # of the wrapper's method are the candidates.
    state = state_lib.get_state(context.backbone)
    applied = state.configs if state else ()
    method = getattr(wrapper, "method", None)
    candidates = [c for c in applied if c.method == method]
    if len(candidates) == 1:
        return f"from an earlier apply of {candidates[0]!r}"
    if candidates:
        listing = ", ".join(repr(c) for c in candidates)
        return f"from an earlier apply of one of {listing}"
    return "not made by `keras_peft.apply`"


class _Position:
    """What one layer of the model gets: new deltas and taps."""

    def __init__(self, layer):
        self.layer = layer
        self.parallel = []
        self.sequential = []
        self.records = []
        self.kept = []


def compose(context, method_plans, shared_name=None, kept=()):
    """The final `Replacement`s for `method_plans` on `context`'s model.

    Args:
        context: the `ModelContext`.
        method_plans: the `MethodPlan`s of one `apply`, conflicts checked.
        shared_name: str or `None`. The adapter's name when it joins other
            named adapters: a planned layer that matches a layer already
            there (a replacing wrapper of the same layer, or a delta module
            of the same kind at the same site, not yet holding this name)
            becomes a slot of that layer instead of a layer of its own.
        kept: sequence of `(layer, KeptVariable)`: modules for the site
            host of `layer` (a base layer), keeping one of its variables.

    Returns:
        `(replacements, absorbed)`. `replacements`: a tuple of
        `Replacement`: the replacing wrappers of layers without deltas as
        planned, and one new `SiteHost` for each layer with deltas (taking
        the place of the layer, its wrapper or its previous host).
        `absorbed`: a tuple of `Replacement` whose `old` is a layer already
        in the model that takes the planned layer `new` as a slot.
    """
    parents = layer_tree.parent_map(context.model)
    replacing = {
        id(r.old): r for plan in method_plans for r in plan.replacements
    }
    absorbed = []
    if shared_name is not None:
        for key, replacement in list(replacing.items()):
            existing = _replacing_wrapper(replacement.old, parents)
            if existing is not None:
                existing.check_slot_source(replacement.new)
                absorbed.append(
                    method_lib.Replacement(existing, replacement.new)
                )
                del replacing[key]
    positions = {}

    def position(layer):
        if id(layer) not in positions:
            positions[id(layer)] = _Position(layer)
        return positions[id(layer)]

    taps = {}
    taken = set()
    for plan in method_plans:
        for delta in plan.deltas:
            site = delta.site
            if shared_name is not None:
                existing = _module_to_share(
                    site, delta, parents, shared_name, taken
                )
                if existing is not None:
                    absorbed.append(
                        method_lib.Replacement(existing, delta.module)
                    )
                    continue
            output = position(site.output_layer)
            if not delta.parallel:
                output.sequential.append(delta.module)
            elif site.input_layer is site.output_layer:
                output.parallel.append((delta.module, None))
            else:
                tap = taps.get(site.name) or _existing_tap(site, parents)
                if tap is None:
                    tap = Tap(site.name)
                    position(site.input_layer).records.append(tap)
                taps[site.name] = tap
                output.parallel.append((delta.module, tap))
    for layer, module in kept:
        position(layer).kept.append(module)

    final = []
    for key, place in positions.items():
        current = outermost(place.layer, parents)
        surgery.check_replaceable(context.model, current)
        previous = current if isinstance(current, SiteHost) else None
        inner = previous.base_layer if previous else current
        if key in replacing:
            inner = replacing.pop(key).new
        with scope_of(current.path):
            host = SiteHost(
                inner,
                parallel=(previous.parallel if previous else ())
                + tuple(place.parallel),
                sequential=(previous.sequential_modules if previous else [])
                + place.sequential,
                records=(previous.records if previous else ())
                + tuple(place.records),
                kept=_in_owner_order(
                    (previous.kept_modules if previous else []) + place.kept
                ),
                name=current.name,
            )
        final.append(method_lib.Replacement(current, host))
    return tuple(replacing.values()) + tuple(final), tuple(absorbed)


def _in_owner_order(modules):
    """`modules` (`KeptVariable`s of one layer) in the order of the
    variables they keep in that layer: an adapter's copies then save in the
    order its own model saves the variables."""
    if not modules:
        return modules
    order = {id(v): i for i, v in enumerate(modules[0].owner.weights)}
    return sorted(modules, key=lambda m: order[id(m.base_variable)])


def _module_to_share(site, delta, parents, name, taken):
    """A delta module already at `site` that can take `delta.module` as a
    slot: same class and settings, same kind (parallel or sequential) and
    input, and no slot for `name` yet. `None` if there is none."""
    host = outermost(site.output_layer, parents)
    if not isinstance(host, SiteHost):
        return None
    if delta.parallel:
        reads_own_input = site.input_layer is site.output_layer
        candidates = [
            module
            for module, tap in host.parallel
            if (tap is None) == reads_own_input
            and (tap is None or tap.site_name == site.name)
        ]
    else:
        candidates = list(host.sequential_modules)
    for module in candidates:
        if (
            id(module) not in taken
            and type(module) is type(delta.module)
            and name not in module.slot_names
            and module.slot_signature() == delta.module.slot_signature()
        ):
            taken.add(id(module))
            return module
    return None


def _existing_tap(site, parents):
    """The tap an earlier `apply` made for `site`'s input, if any."""
    host = outermost(site.output_layer, parents)
    if not isinstance(host, SiteHost):
        return None
    for _, tap in host.parallel:
        if tap is not None and tap.site_name == site.name:
            return tap
    return None
