"""What every method provides to the shared injection mechanism."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Replacement:
    """Swap `old` for the built, not yet installed layer `new`.

    With `graph_of` (a functional model), only that model's graph of
    operations swaps: other references keep using `old`.
    """

    old: object
    new: object
    graph_of: object = None


@dataclasses.dataclass(frozen=True)
class Delta:
    """Add the built, not yet installed `module` at a site.

    Args:
        site: the `architectures.Site`.
        module: a layer. Parallel: `(x, h) -> h'` from the site's input `x`
            (e.g. `ParallelAdapter`); sequential: `h -> h'` (e.g. `Adapter`).
        parallel: bool. Which of the two the module is.
    """

    site: object
    module: object
    parallel: bool


@dataclasses.dataclass(frozen=True)
class MethodPlan:
    """What one config asks of a model.

    Args:
        replacements: tuple of `Replacement`. Replacing wrappers to swap in
            (at most one per layer: `LoRADense`, `PrefixAttention`, ...).
        trainable_base_variables: tuple of variables of the base model that
            the config keeps trainable (for example LoRA's `bias="all"`).
        deltas: tuple of `Delta`. Modules that add to a site's output; any
            number may act at one site, beside a replacing wrapper.
    """

    replacements: tuple = ()
    trainable_base_variables: tuple = ()
    deltas: tuple = ()


class Method:
    """A fine-tuning method: a config class and how to plan it on a model.

    Subclasses set `name` and `config_class` and implement `plan`, which must
    validate everything and create its new layers detached (built, with
    their variables, but not yet referenced by the model): the shared
    mechanism installs them only once every config has planned cleanly.
    """

    name = ""
    config_class = None
    # Whether `trainable_summary` counts the base variables the method keeps
    # trainable as the method's own (BitFit's biases) or as "base".
    owns_kept_variables = False

    def plan(self, context, config, initialize=True):
        """Returns a `MethodPlan` for `config` on `context` (a ModelContext).

        With `initialize=False` new weights may skip the config's
        initialization (their values are about to be loaded).
        """
        raise NotImplementedError
