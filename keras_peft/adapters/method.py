"""How adapters plan themselves on a model."""

from keras_peft.adapters.config import AdapterConfig
from keras_peft.core import architectures
from keras_peft.core import config as config_lib
from keras_peft.core import layer_tree
from keras_peft.core import method as method_lib
from keras_peft.core import scopes
from keras_peft.core import targets as targets_lib
from keras_peft.core.composition import outermost
from keras_peft.layers.adapter import Adapter
from keras_peft.layers.multi_head_parallel_adapter import (
    MultiHeadParallelAdapter,
)
from keras_peft.layers.parallel_adapter import ParallelAdapter
from keras_peft.layers.prefix_attention import attention_dims
from keras_peft.layers.site_host import SiteHost
from keras_peft.layers.site_host import innermost

_KINDS = {
    "ffn": (architectures.FFN,),
    "attn": (architectures.SELF_ATTENTION, architectures.CROSS_ATTENTION),
    "both": (
        architectures.SELF_ATTENTION,
        architectures.CROSS_ATTENTION,
        architectures.FFN,
    ),
}


class AdapterMethod(method_lib.Method):
    name = "adapter"
    config_class = AdapterConfig

    def plan(self, context, config, initialize=True):
        sites = selected_sites(context, config)
        width = context.backbone.hidden_dim
        parents = layer_tree.parent_map(context.model)
        deltas = []
        for site in sites:
            name = _module_name(
                site, _module_kind(config), parents, context.planned_names
            )
            context.planned_names.add(f"{site.block_path}/{name}")
            # Built inside the block's scope: ".../ffn_adapter/down_kernel".
            with scopes.scope_of(f"{site.block_path}/{name}"):
                module = _build_module(config, site, name, width)
            deltas.append(method_lib.Delta(site, module, config.parallel))
        kept = []
        if config.style == "houlsby":
            # The norms' own variables, not those of a site host around one.
            kept = [
                variable
                for site in sites
                for norm in site.layer_norms
                for variable in innermost(norm).weights
            ]
        return method_lib.MethodPlan(
            deltas=tuple(deltas), trainable_base_variables=tuple(kept)
        )


def _build_module(config, site, name, width):
    kwargs = dict(
        activation=config.activation,
        scale=config.scale,
        name=name,
        dtype=site.output_layer.dtype_policy,
    )
    if config.multi_head:
        heads, key_dim, value_dim = attention_dims(site.output_layer)
        if key_dim != value_dim:
            raise ValueError(
                "AdapterConfig multi_head=True maps each head's query to an "
                "update of its output, which needs equal query and value "
                f"widths; attention {site.output_layer.path!r} has "
                f"{key_dim} and {value_dim}."
            )
        module = MultiHeadParallelAdapter(
            config.bottleneck, heads, key_dim, **kwargs
        )
        module.attach(*architectures.attention_projections(site.output_layer))
    else:
        layer_class = ParallelAdapter if config.parallel else Adapter
        module = layer_class(config.bottleneck, **kwargs)
    # Parallel: reads the site's input; both are of the model width.
    module.build(*[(None, None, width)] * (2 if config.parallel else 1))
    return module


def selected_sites(context, config):
    """The sites `config` puts adapters at, in the architecture's order."""
    kinds = _KINDS[config.location]
    sites = [
        site
        for site in context.architecture.sites(context.backbone)
        if site.kind in kinds
    ]
    if config.targets is None:
        return sites

    def matches(pattern, site):
        return targets_lib.pattern_matches(pattern, site.name)

    unmatched = [
        pattern
        for pattern in config.targets
        if not any(matches(pattern, site) for site in sites)
    ]
    if unmatched:
        listing = ", ".join(site.name for site in sites)
        raise ValueError(
            f"AdapterConfig targets {unmatched} match no {config.location!r} "
            f"site of {type(context.backbone).__name__}. Sites: {listing}."
        )
    return [
        site
        for site in sites
        if any(
            targets_lib.pattern_matches(p, site.name) for p in config.targets
        )
    ]


def _module_kind(config):
    if config.multi_head:
        return "multi_head_parallel_adapter"
    return "parallel_adapter" if config.parallel else "adapter"


def _module_name(site, kind, parents, planned):
    """`"<site kind>_<kind>"` (e.g. `"ffn_parallel_adapter"`), numbered after
    the modules at the site: from an earlier `apply`, or planned by an
    earlier config of this one."""
    name = f"{site.kind}_{kind}"
    taken = {
        path.rpartition("/")[2]
        for path in planned
        if path.rpartition("/")[0] == site.block_path
    }
    host = outermost(site.output_layer, parents)
    if isinstance(host, SiteHost):
        taken.update(
            module.name
            for module in host.parallel_modules + host.sequential_modules
        )
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    return candidate


METHOD = config_lib.register_method(AdapterMethod())
