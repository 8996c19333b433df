"""An optimizer that trains groups of variables at their own learning
rates."""

import copy
import json
import math
import numbers
import warnings

import keras
from keras import ops

from keras_peft.core import summary

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def _check_inner(optimizer):
    wrappers = [keras.optimizers.LossScaleOptimizer, GroupedOptimizer]
    if hasattr(keras.optimizers, "MultiOptimizer"):  # not in every Keras 3
        wrappers.append(keras.optimizers.MultiOptimizer)
    if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
        optimizer, tuple(wrappers)
    ):
        raise ValueError(
            "`optimizer` must be a plain Keras optimizer such as "
            "`keras.optimizers.Adam(3e-4)`, not a wrapper of others. "
            f"Received: {optimizer!r}"
        )
    if optimizer.built:
        # Each group trains with a new copy made from the config: the state
        # of a built optimizer would silently be left behind.
        raise ValueError(
            f"`optimizer` ({optimizer.name}) is already built; pass a new, "
            "unused one."
        )
    if optimizer.global_clipnorm and optimizer.gradient_accumulation_steps:
        # Keras clips the accumulated mean once per optimizer step; the
        # global norm over every group is taken here, before dispatching
        # to the groups' accumulators.
        raise ValueError(
            "`global_clipnorm` together with `gradient_accumulation_steps` "
            "is not supported by GroupedOptimizer; use `clipnorm` or "
            "`clipvalue`, or no accumulation."
        )


def _check_rate(group, rate):
    if isinstance(rate, _Schedule):
        return rate
    if (
        isinstance(rate, numbers.Real)
        and not isinstance(rate, bool)
        and math.isfinite(rate)
        and rate >= 0
    ):
        return float(rate)
    raise ValueError(
        f"The learning rate of group {group!r} must be a finite float >= 0 "
        f"or a `keras.optimizers.schedules.LearningRateSchedule`. Received: "
        f"{rate!r}"
    )


def _paths_by_group(model):
    groups = {}
    owner = {}
    seen = {}  # id of a variable to its first group
    for group, variables in summary.variable_groups(model).items():
        for variable in variables:
            if seen.setdefault(id(variable), group) != group:
                raise ValueError(
                    f"The variable {variable.path!r} of {model.name} holds "
                    "the copies that several named adapters keep of one "
                    "base variable, in groups "
                    f"{seen[id(variable)]!r} and {group!r} (BitFit's "
                    "biases and LoRA's `bias`): one variable trains at one "
                    "rate. Pass `groups=` with it in one group, or train "
                    "those adapters in models of their own."
                )
            if owner.setdefault(variable.path, group) != group:
                # Grouping is kept by path (it must survive `get_config`);
                # one path in two groups could not be told apart.
                raise ValueError(
                    f"Two trainable variables of {model.name} share the "
                    f"path {variable.path!r} but are in different groups "
                    f"({owner[variable.path]!r} and {group!r}); give their "
                    "layers distinct names."
                )
            groups.setdefault(group, []).append(variable.path)
    return groups


def _clip_by_global_norm(grads, clip_norm):
    # Keras' own formula (`base_optimizer.clip_by_global_norm`, private),
    # so that the groups are clipped as the inner optimizer would clip all
    # the variables together.
    squared = ops.stack([ops.sum(ops.square(g)) for g in grads])
    norm = ops.sqrt(ops.sum(squared))
    scale = clip_norm * ops.minimum(1.0 / norm, 1.0 / clip_norm)
    # A finite norm adds 0; an infinite or NaN one makes every step NaN,
    # as in Keras, rather than silently skipping the clip.
    scale = scale + (norm - norm)
    return [g * scale for g in grads]


def _count_step(optimizer):
    # The one reach into Keras' private state: every copy must count every
    # step (Adam's bias correction and the schedules read the count), and
    # Keras has no public way to count a step without taking one.
    optimizer._iterations.assign_add(1)


@keras.saving.register_keras_serializable(package="keras_peft")
class GroupedOptimizer(keras.optimizers.Optimizer):
    """Trains each group of a model's variables at its own learning rate.

    Groups are those of `keras_peft.variable_groups(model)` (and
    `keras_peft.trainable_summary`): one per method (`"lora"`,
    `"prompt_tuning"`, `"prefix_tuning"`, `"adapter"`, `"bitfit"`), plus
    `"head"` (a task's layers outside its backbone) and `"base"` (backbone
    weights that still train). Prompt and prefix tuning with a new
    classification head need the head at a far larger rate than the
    prompt or prefix.

    Each group with a rate in `learning_rates` is trained by its own copy of
    `optimizer` (same class and config, the group's rate); the other groups
    share one more copy at `optimizer`'s own rate. A variable so gets
    exactly the update rule of `optimizer` at its group's rate, as with
    parameter groups in PyTorch: Adam's moments and bias correction per
    variable, decoupled weight decay (`AdamW`) scaled by the group's rate,
    `clipnorm` and `clipvalue` per variable. Two settings act across all
    groups at once, as in a single optimizer: `global_clipnorm` is the norm
    of every group's gradients together, and `loss_scale_factor` unscales
    every gradient.

    The grouping is computed once, when the optimizer is made, and kept as
    variable paths: paths survive `get_config` (a model reference would
    make the optimizer save and restore the model with itself), and
    computing them up front reports a misspelled group at once. So make the
    optimizer after `keras_peft.apply` and after setting which layers
    train; a variable it does not know is a `ValueError` when training
    starts.

    `learning_rate` reads the default rate. It cannot be set (callbacks
    such as `ReduceLROnPlateau` would change only some groups); give
    `LearningRateSchedule`s instead.

    Args:
        optimizer: a new, unbuilt `keras.optimizers.Optimizer`: the update
            rule, its settings and the default learning rate. It is used as
            a template and is not itself trained.
        learning_rates: dict. Group name to its learning rate: a float >= 0
            or a `keras.optimizers.schedules.LearningRateSchedule`. Groups
            not named train at `optimizer`'s rate.
        model: the Keras model whose trainable variables are grouped.
            Defaults to `None`; give either `model` or `groups`.
        groups: dict. Group name to the `path`s of its variables, as
            `get_config` stores it. Defaults to `None`.
        name: str. The optimizer's name. Defaults to `None`.

    Example:
    ```python
    keras_peft.apply(classifier, keras_peft.PromptTuningConfig(length=20))
    classifier.compile(
        optimizer=keras_peft.GroupedOptimizer(
            keras.optimizers.Adam(3e-4),
            learning_rates={"head": 1e-2},
            model=classifier,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    classifier.fit(data, epochs=3)
    ```
    """

    def __init__(
        self, optimizer, learning_rates, model=None, groups=None, name=None
    ):
        _check_inner(optimizer)
        if (model is None) == (groups is None):
            raise ValueError("Give exactly one of `model` and `groups`.")
        if model is not None:
            groups = _paths_by_group(model)
        groups = {
            str(g): [str(p) for p in paths] for g, paths in groups.items()
        }
        if not isinstance(learning_rates, dict):
            raise ValueError(
                "`learning_rates` must be a dict from group name to rate. "
                f"Received: {learning_rates!r}"
            )
        unknown = sorted(set(learning_rates) - set(groups))
        if unknown:
            raise ValueError(
                f"Unknown group(s) {unknown} in `learning_rates`. The "
                f"trainable variables are in groups {list(groups)}."
            )
        rates = {g: _check_rate(g, r) for g, r in learning_rates.items()}

        super().__init__(
            learning_rate=0.0,
            loss_scale_factor=optimizer.loss_scale_factor,
            global_clipnorm=optimizer.global_clipnorm,
            name=name,
        )
        # A string, not a dict: Keras would track a dict attribute, and
        # copies of it would drag the optimizer's variables along.
        self._inner_config = json.dumps(keras.optimizers.serialize(optimizer))
        self._accumulation_steps = optimizer.gradient_accumulation_steps
        self._rates = rates
        self._groups = groups
        self._group_names = sorted(rates)
        # One copy for the groups at the default rate, then one per group
        # with its own rate; a fixed order, so that checkpoints line up.
        self._optimizers = [
            self._copy_inner("default", None),
            *(self._copy_inner(g, rates[g]) for g in self._group_names),
        ]
        self._index = {
            path: self._optimizer_index(group)
            for group, paths in groups.items()
            for path in paths
        }

    def _copy_inner(self, group, learning_rate):
        config = json.loads(self._inner_config)
        config["config"]["name"] = f"{self.name}_{group}"
        # Applied once, across all groups, by this optimizer.
        config["config"]["global_clipnorm"] = None
        config["config"]["loss_scale_factor"] = None
        if learning_rate is not None:
            config["config"]["learning_rate"] = (
                keras.optimizers.schedules.serialize(learning_rate)
                if isinstance(learning_rate, _Schedule)
                else learning_rate
            )
        return keras.optimizers.deserialize(config)

    def _optimizer_index(self, group):
        if group in self._rates:
            return 1 + self._group_names.index(group)
        return 0

    def _split(self, variables, values=None):
        """`(optimizer, variables, values)` for each optimizer that has
        some of `variables`."""
        parts = [([], []) for _ in self._optimizers]
        for i, variable in enumerate(variables):
            path = getattr(variable, "path", None)
            if path not in self._index:
                raise ValueError(
                    f"GroupedOptimizer {self.name} does not know the variable "
                    f"{path or variable!r}: it was made for "
                    f"{len(self._index)} variables in groups "
                    f"{list(self._groups)}. Make the optimizer after "
                    "`keras_peft.apply` and after setting which layers "
                    "train."
                )
            part = parts[self._index[path]]
            part[0].append(variable)
            part[1].append(None if values is None else values[i])
        return [
            (optimizer, part_variables, part_values)
            for optimizer, (part_variables, part_values) in zip(
                self._optimizers, parts
            )
            if part_variables
        ]

    def build(self, variables):
        if self.built:
            return
        variables = list(variables)
        for optimizer, part, _ in self._split(variables):
            optimizer.build(part)
        super().build(variables)

    @property
    def variables(self):
        variables = self._variables[:]
        for optimizer in self._optimizers:
            variables.extend(optimizer.variables)
        return variables

    @property
    def optimizers(self):
        """Dict of group name to the optimizer that trains that group."""
        return {
            group: self._optimizers[self._optimizer_index(group)]
            for group in self._groups
        }

    @property
    def iterations(self):
        if self._accumulation_steps:
            return ops.floor_divide(self._iterations, self._accumulation_steps)
        return self._iterations

    @property
    def learning_rate(self):
        """The default learning rate: that of groups without their own."""
        return self._optimizers[0].learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        raise AttributeError(
            "GroupedOptimizer has one learning rate per group, so "
            "`learning_rate` cannot be set; give the groups "
            "`LearningRateSchedule`s instead."
        )

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if not grads:
            return
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer "
                    "must already be built on a list of variables. Call "
                    "`optimizer.build(trainable_variables)` first."
                )
            trainable_variables = self._trainable_variables
        else:
            trainable_variables = list(trainable_variables)
            self.build(trainable_variables)
        if all(g is None for g in grads):
            raise ValueError("No gradients provided for any variable.")
        grads = self._unscale_and_clip(grads, trainable_variables)
        for optimizer, variables, part in self._split(
            trainable_variables, grads
        ):
            if any(g is not None for g in part):
                optimizer.apply(part, variables)
                continue
            # Keras refuses a step without any gradient; one optimizer over
            # all variables would only skip these, and count the step.
            warnings.warn(
                "Gradients do not exist for variables "
                f"{[v.path for v in variables]} when minimizing the loss.",
                stacklevel=2,
            )
            _count_step(optimizer)
        self._iterations.assign_add(1)

    def _unscale_and_clip(self, grads, variables):
        # As `BaseOptimizer.apply`: variables overwritten with their
        # "gradient" (float8 scales) are neither unscaled nor clipped.
        plain = [
            i
            for i, (g, v) in enumerate(zip(grads, variables))
            if g is not None
            and not getattr(v, "overwrite_with_gradient", False)
        ]
        if not plain:
            return grads
        values = [grads[i] for i in plain]
        if self.loss_scale_factor is not None:
            values = [g / self.loss_scale_factor for g in values]
        if self.global_clipnorm and self.global_clipnorm > 0:
            values = _clip_by_global_norm(values, self.global_clipnorm)
        grads = list(grads)
        for i, value in zip(plain, values):
            grads[i] = value
        return grads

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """As `keras.optimizers.Optimizer.exclude_from_weight_decay`, for
        every group. Call it here: exclusions set on the `optimizer` given
        are not part of its config, so its copies do not have them."""
        for optimizer in self._optimizers:
            optimizer.exclude_from_weight_decay(var_list, var_names)

    def finalize_variable_values(self, var_list):
        for optimizer, variables, _ in self._split(var_list):
            optimizer.finalize_variable_values(variables)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": json.loads(self._inner_config),
            "learning_rates": {
                group: (
                    keras.optimizers.schedules.serialize(rate)
                    if isinstance(rate, _Schedule)
                    else rate
                )
                for group, rate in self._rates.items()
            },
            "groups": {g: list(paths) for g, paths in self._groups.items()},
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras' deserializers rewrite the dicts they are given.
        config = copy.deepcopy(config)
        config["optimizer"] = keras.optimizers.deserialize(
            config["optimizer"], custom_objects=custom_objects
        )
        config["learning_rates"] = {
            group: (
                keras.optimizers.schedules.deserialize(
                    rate, custom_objects=custom_objects
                )
                if isinstance(rate, dict)
                else rate
            )
            for group, rate in config["learning_rates"].items()
        }
        return cls(**config)
