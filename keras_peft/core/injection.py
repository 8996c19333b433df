"""Planning and installing methods on a model: the shared mechanism.

Every method goes through the same two steps. Planning validates the configs
against the model and builds the new layers detached; nothing the model
refers to changes. Installing swaps the new layers in and freezes the base.
A failure while planning releases what was built, so a bad input never
leaves a model half-modified.
"""

import weakref

from keras import ops

from keras_peft.core import architectures
from keras_peft.core import composition
from keras_peft.core import config as config_lib
from keras_peft.core import freezing
from keras_peft.core import kept_copies
from keras_peft.core import layer_tree
from keras_peft.core import model_saving
from keras_peft.core import precision
from keras_peft.core import recompile
from keras_peft.core import state as state_lib
from keras_peft.core import surgery
from keras_peft.core import switching
from keras_peft.core import task_heads
from keras_peft.core import tf_distribute
from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.wrapper import Wrapper


class Plan:
    """Configs planned on a model, ready to install.

    Args:
        context: the `ModelContext` of the model.
        configs: tuple. The new configs.
        method_plans: tuple of `MethodPlan`, one per new config.
        original_trainable: the backbone's trainable flags before keras-peft
            first touched it.
    """

    def __init__(
        self,
        context,
        configs,
        method_plans,
        original_trainable,
        replacements=(),
        name=state_lib.DEFAULT_NAME,
        absorbed=(),
        kept=None,
        originals=None,
    ):
        self.context = context
        self.configs = configs
        self.method_plans = method_plans
        self.original_trainable = original_trainable
        self.replacements = tuple(replacements)
        self.name = name
        # Layers already in the model that take a planned layer as the slot
        # of adapter `name` (`Replacement(existing, planned)`).
        self.absorbed = tuple(absorbed)
        # Base variables adapters keep their own copies of, beside others.
        self.kept = kept or kept_copies.KeptPlan()
        # The values of the base variables adapter `name` starts to train
        # in place, from before.
        self.originals = dict(originals or {})

    @property
    def _replacement_map(self):
        return {id(r.old): r.new for r in self.replacements}

    def replacement_view(self):
        """`id(layer)` to the layer standing in its place once installed
        (replacements only; see `absorbed`)."""
        return self._replacement_map

    def named_view(self):
        """`id(layer)` to layer: what stands where once installed, as seen
        by adapter `name`: a layer that takes a planned layer as its slot
        shows that planned layer."""
        steps = self._replacement_map
        steps.update({id(r.old): r.new for r in self.absorbed})
        view = {}
        for key, layer in steps.items():
            while id(layer) in steps:
                layer = steps[id(layer)]
            view[key] = layer
        return view

    def _state_after(self):
        previous = state_lib.get_state(self.context.backbone)
        groups = [tuple(p.trainable_base_variables) for p in self.method_plans]
        if previous is None:
            return state_lib.single(
                self.configs,
                groups,
                self.original_trainable,
                self.name,
                self.originals,
            )
        existing = previous.adapters.get(self.name)
        if existing is not None:
            configs = existing.configs + self.configs
            groups = list(existing.trainable_base_variables) + groups
        else:
            configs = self.configs
        if any(n != self.name for n in previous.adapters):
            fields = {"originals": {}}
        elif existing.originals is None:
            fields = {}
        else:
            fields = {"originals": {**self.originals, **existing.originals}}
        state = previous.replaced(self.name, configs, groups, **fields)
        for name in self.kept.converted:
            adapter = state.adapters[name]
            state = state.replaced(
                name,
                adapter.configs,
                adapter.trainable_base_variables,
                originals={},
            )
        return state

    def _trainable_ids_after(self, state):
        adapters = [
            layer
            for layer in layer_tree.layers_in_order(
                self.context.backbone, self.named_view()
            )
            if isinstance(layer, AdapterLayer)
        ]
        return freezing.trainable_ids(
            adapters, state.all_trainable_base_variables
        )

    def trainable_variables_after(self):
        """The model's trainable variables, in `weights` order, once installed.

        Backbone variables train if an adapter owns them or a config keeps
        them; variables outside the backbone (a task head) keep their flag.
        """
        keep = self._trainable_ids_after(self._state_after())
        backbone_ids = {
            id(v)
            for v in layer_tree.weights_in_order(
                self.context.backbone, self.named_view()
            )
        }
        return [
            v
            for v in layer_tree.weights_in_order(
                self.context.model, self.named_view()
            )
            if (id(v) in keep if id(v) in backbone_ids else v.trainable)
        ]

    def variable_addresses_after(self):
        """`layer_tree.variable_addresses` of the model, once installed."""
        return layer_tree.variable_addresses(
            self.context.model, self.named_view()
        )

    def install(self, action="keras_peft.apply", stacklevel=3):
        """Swaps the new layers in and freezes the base. Cannot fail midway:
        everything it relies on was checked while planning.

        Args:
            action: str. The public call installing the plan, named in the
                warning a compiled model gets (`recompile`).
            stacklevel: int. Where the user's call is, counting this method
                as 1 (as `warnings.warn` counts).
        """
        state = self._state_after()
        if self.context.model is not self.context.backbone:
            state.task = weakref.ref(self.context.model)
        for replacement in self.replacements:
            surgery.replace_layer(
                self.context.model,
                replacement.old,
                replacement.new,
                graph_of=replacement.graph_of,
            )
        with tf_distribute.creation_scope(self.context.model):
            for absorbed in self.absorbed:
                absorbed.old.add_slot(self.name, absorbed.new)
            switching.name_slots(self.context.model, state, self.name)
        for variable, value in self.kept.restore:
            variable.assign(value)
        record_state(self.context.backbone, state, self.context.model)
        surgery.forget_compiled_functions(self.context.model)
        recompile.require_recompile(
            self.context.model, action, stacklevel=stacklevel
        )

    def abandon(self):
        """Releases the detached layers, undoing what building them did.

        In reverse order: two planned layers may wrap the same base layer,
        and the first one built saw the base's original state.
        """
        built = [r.new for p in self.method_plans for r in p.replacements]
        built += [d.module for p in self.method_plans for d in p.deltas]
        built += [module for _, module in self.kept.modules]
        for layer in reversed(built):
            release = getattr(layer, "release", None)
            if release is not None:
                release()


def plan(model, configs, initialize=True, name=None):
    """Validates `configs` against `model` and builds their layers detached.

    Args:
        model: a supported backbone or task.
        configs: a config or a list of configs.
        initialize: bool. `False` lets methods skip initializing new weights
            from data (a tokenizer, the model's activations): their values
            are about to be loaded.
        name: str or `None`. The adapter the configs join or make; defaults
            to `"default"`.

    Returns:
        A `Plan`; call `install()` to apply it or `abandon()` to drop it.
    """
    name = switching.check_name(name)
    context = architectures.resolve_model(model)
    configs = config_lib.normalize_configs(configs)
    precision.check_compute_dtype(context)
    previous = state_lib.get_state(context.backbone)
    original = (
        previous.original_trainable
        if previous
        else freezing.snapshot_trainable(context.backbone)
    )
    others = [n for n in (previous.adapters if previous else ()) if n != name]
    if others:
        switching.check_joinable(context, name, others)
    method_plans = []
    kept = kept_copies.KeptPlan()
    originals = {}
    try:
        with tf_distribute.creation_scope(context.model):
            with composition.sharing_layers(name if others else None):
                for config in configs:
                    method = config_lib.method_of(config)
                    method_plan = method.plan(
                        context, config, initialize=initialize
                    )
                    for replacement in method_plan.replacements:
                        if isinstance(replacement.new, Wrapper):
                            # So that a later conflict on the layer names it.
                            replacement.new.applied_config = config
                    method_plans.append(method_plan)
            composition.check_conflicts(configs, method_plans)
            new_kept = [
                variable
                for method_plan in method_plans
                for variable in method_plan.trainable_base_variables
            ]
            if others:
                switching.check_plans_joinable(
                    context, name, others, configs, method_plans
                )
                kept = kept_copies.plan(context, previous, name, new_kept)
            else:
                originals = {
                    id(variable): ops.convert_to_numpy(variable)
                    for variable in new_kept
                }
            replacements, absorbed = composition.compose(
                context,
                method_plans,
                shared_name=name if others else None,
                kept=kept.modules,
            )
            absorbed += tuple(kept.absorbed)
            if others and name not in previous.adapters:
                heads, head_slots = task_heads.plan(context, name, others)
                replacements += heads
                absorbed += head_slots
    except BaseException:
        Plan(context, (), tuple(method_plans), original, kept=kept).abandon()
        raise
    return Plan(
        context,
        configs,
        tuple(method_plans),
        original,
        replacements,
        name=name,
        absorbed=absorbed,
        kept=kept,
        originals=originals,
    )


def apply(model, configs, name=state_lib.DEFAULT_NAME):
    """Applies one or more methods to a keras-hub model, in place.

    Wraps the targeted layers, freezes everything of the backbone except the
    new weights (and what a config keeps trainable, such as LoRA biases), and
    leaves layers of a task outside its backbone (the classification head)
    trainable. The model computes exactly what it computed before until it
    trains. Compile (or re-compile) the model after applying.

    The configs form (or join) the adapter called `name`. A model can hold
    several named adapters; exactly one acts (the first one added, until
    `keras_peft.set_active` picks another), and switching between them
    needs no new variables and no retracing. Adding an adapter does not
    make it the active one.

    Args:
        model: a `keras_hub.models.BertBackbone` or `T5Backbone`, or a task
            holding one as `backbone` (`BertTextClassifier`, `BertMaskedLM`,
            `T5Seq2SeqLM`), with or without a preprocessor.
        configs: a method config such as `keras_peft.LoRAConfig()`, or a list
            of configs.
        name: str. The adapter's name: letters, digits, `_` and `-`.
            Defaults to `"default"`.

    Returns:
        The same `model`.

    Example:
    ```python
    classifier = keras_hub.models.BertTextClassifier(backbone, num_classes=2)
    keras_peft.apply(classifier, keras_peft.LoRAConfig(rank=8, alpha=16))
    print(keras_peft.trainable_summary(classifier))
    keras_peft.apply(classifier, keras_peft.LoRAConfig(rank=8, alpha=16),
                     name="mnli")
    keras_peft.set_active(classifier, "mnli")
    ```
    """
    plan(model, configs, name=name).install()
    return model


def remove_method(model, method_name, layer_fn):
    """Takes every adapter layer of one method back out of a model.

    Args:
        model: a model the method was applied to.
        method_name: str. The method whose configs are dropped.
        layer_fn: callable. Called with each adapter layer of the method;
            returns the layer to put back in its place.
    """
    context = architectures.resolve_model(model)
    state = state_lib.get_state(context.backbone)
    layers = [
        layer
        for layer, _ in layer_tree.iter_layers(context.model)
        if isinstance(layer, AdapterLayer) and layer.method == method_name
    ]
    for layer in layers:
        surgery.replace_layer(context.model, layer, layer_fn(layer))
    if state is None:
        return
    kept = [
        (config, group)
        for config, group in zip(state.configs, state.trainable_base_variables)
        if config.method != method_name
    ]
    state = state.replaced(
        state.active, [c for c, _ in kept], [g for _, g in kept]
    )
    if not state.adapters:
        freezing.restore_trainable(state.original_trainable)
        state_lib.set_state(context.backbone, None)
        model_saving.track(context.backbone, context.model)
        return
    record_state(context.backbone, state)


def record_state(backbone, state, model=None):
    """Records `state` and freezes the backbone to match it: adapter
    variables of the layers it holds now (every named adapter's) and the
    base variables the configs keep train; everything else is frozen."""
    adapters = [
        layer
        for layer, _ in layer_tree.iter_layers(backbone)
        if isinstance(layer, AdapterLayer)
    ]
    freezing.set_backbone_trainable(
        backbone,
        freezing.trainable_ids(adapters, state.all_trainable_base_variables),
    )
    state_lib.set_state(backbone, state)
    model_saving.track(backbone, model)


def applied_configs(model):
    """The configs applied to `model` (a backbone or task), in order."""
    context = architectures.resolve_model(model)
    state = state_lib.get_state(context.backbone)
    return state.configs if state else ()
