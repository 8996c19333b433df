"""Several methods on one layer: one replacing wrapper, any number of deltas.

Methods plan *replacing wrappers* (a `LoRADense` around a `Dense`, a
`PrefixAttention` around an attention layer: at most one per layer) and
*delta modules* at sites (adapters). `compose` turns them into the final
swaps: each layer that gets deltas is wrapped by one `SiteHost` holding the
layer (or its replacing wrapper) and every delta module acting there, those
of earlier `apply` calls included.
"""

from keras_peft.core import layer_tree
from keras_peft.core import method as method_lib
from keras_peft.core import surgery
from keras_peft.core.scopes import scope_of
from keras_peft.layers.site_host import SiteHost
from keras_peft.layers.site_host import Tap


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
                raise ValueError(
                    f"Two configs replace the same layer "
                    f"{replacement.old.path!r}: {seen[key]!r} and {config!r}. "
                    "A layer carries at most one replacing wrapper (LoRA, "
                    "prefix); adapters may share a layer with anything."
                )
            seen[key] = config


class _Position:
    """What one layer of the model gets: new deltas and taps."""

    def __init__(self, layer):
        self.layer = layer
        self.parallel = []
        self.sequential = []
        self.records = []


def compose(context, method_plans):
    """The final `Replacement`s for `method_plans` on `context`'s model.

    Args:
        context: the `ModelContext`.
        method_plans: the `MethodPlan`s of one `apply`, conflicts checked.

    Returns:
        A tuple of `Replacement`: the replacing wrappers of layers without
        deltas as planned, and one new `SiteHost` for each layer with deltas
        (taking the place of the layer, its wrapper or its previous host).
    """
    parents = layer_tree.parent_map(context.model)
    replacing = {
        id(r.old): r for plan in method_plans for r in plan.replacements
    }
    positions = {}

    def position(layer):
        if id(layer) not in positions:
            positions[id(layer)] = _Position(layer)
        return positions[id(layer)]

    taps = {}
    for plan in method_plans:
        for delta in plan.deltas:
            site = delta.site
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
                name=current.name,
            )
        final.append(method_lib.Replacement(current, host))
    return tuple(replacing.values()) + tuple(final)


def _existing_tap(site, parents):
    """The tap an earlier `apply` made for `site`'s input, if any."""
    host = outermost(site.output_layer, parents)
    if not isinstance(host, SiteHost):
        return None
    for _, tap in host.parallel:
        if tap is not None and tap.site_name == site.name:
            return tap
    return None
