"""Mixed-task batches: each example computed with its own adapter."""

import keras
import numpy as np
from keras import ops

from keras_peft.core import architectures
from keras_peft.core import state as state_lib
from keras_peft.core import surgery
from keras_peft.core import switching
from keras_peft.core.named_adapters import adapter_names
from keras_peft.layers import routing

TASK_IDS = "task_ids"


def slot_tables(model, names):
    """The distinct `AdapterLayer.slot_table`s of `model`'s switchable
    adapter layers for adapters `names`: the plans a route for them makes
    once (`routing.per_example`)."""
    return {
        layer.slot_table(names)
        for layer in switching.adapter_layers(model)
        if layer.switchable
    }


@keras.saving.register_keras_serializable(package="keras_peft")
class MultiTaskModel(keras.Model):
    """A model whose examples each run with the adapter their task id picks.

    Takes the inputs of the model it holds plus `"task_ids"`, an int tensor
    of shape `(batch,)`: example `b` is computed as the model computes it
    with adapter `task_names[task_ids[b]]` active (and that adapter's
    head), whatever `keras_peft.set_active` says. It shares every variable
    with the model it holds; `fit` trains each adapter (and head) from its
    own examples only.

    A task id outside `[0, len(task_names))` raises a `ValueError` where
    its value is known: a direct call in eager mode, and the NumPy inputs
    of `predict`, `evaluate` and `fit`. Inside a compiled function (a
    `tf.data` pipeline, XLA) ids are clipped into that range: an id below
    0 acts as task 0, one above as the last task.

    Build it with `keras_peft.multi_task(model, names)`.

    Args:
        model: a model holding the adapters.
        task_names: sequence of adapter names; task id `i` is
            `task_names[i]`.
        **kwargs: `keras.Model` arguments such as `name`.
    """

    def __init__(self, model, task_names, **kwargs):
        super().__init__(**kwargs)
        self.task_model = model
        self.task_names = tuple(task_names)
        # No weights of its own: built once the model it holds is.
        self.built = model.built
        # Changes to the held model (switching off, deleting an adapter)
        # drop this model's compiled functions too.
        context = architectures.resolve_model(model)
        surgery.register_dependent(context.model, self)
        surgery.register_dependent(context.backbone, self)

    def call(self, inputs, training=None):
        self._check_tasks_held()
        inputs, task_ids = _split_task_ids(inputs, "A multi-task model")
        values = _concrete(task_ids)
        if values is not None:
            self.check_task_ids(values)
        task_ids = ops.cast(task_ids, "int32")
        if len(task_ids.shape) == 2 and task_ids.shape[1] == 1:
            task_ids = ops.squeeze(task_ids, axis=1)
        if len(task_ids.shape) != 1:
            raise ValueError(
                f"{TASK_IDS!r} must have shape (batch,); got shape "
                f"{tuple(task_ids.shape)}."
            )
        self._check_batch(inputs, task_ids)
        task_ids = ops.clip(task_ids, 0, len(self.task_names) - 1)
        names = self.task_names
        tables = slot_tables(self.task_model, names)
        with routing.per_example(names, task_ids, tables):
            return self.task_model(inputs, training=training)

    def _check_tasks_held(self):
        held = adapter_names(self.task_model)
        gone = [name for name in self.task_names if name not in held]
        if gone:
            raise ValueError(
                f"This multi-task model serves {list(self.task_names)}, but "
                f"the adapters {gone} are no longer in the model it holds "
                f"(which has {list(held)}). Build a new one with "
                "`keras_peft.multi_task`."
            )

    @staticmethod
    def _check_batch(inputs, task_ids):
        """Raises a `ValueError` when the ids are not one per example."""
        ids = task_ids.shape[0]
        for value in keras.tree.flatten(inputs):
            batch = getattr(value, "shape", (None,))[0]
            if ids is not None and batch is not None and ids != batch:
                raise ValueError(
                    f"{TASK_IDS!r} holds {ids} ids for a batch of {batch} "
                    "examples: give one task id per example."
                )

    def check_task_ids(self, task_ids):
        """Raises a `ValueError` unless every id picks one of the tasks."""
        task_ids = np.asarray(task_ids)
        if not np.issubdtype(task_ids.dtype, np.integer):
            raise ValueError(
                f"{TASK_IDS!r} must be integers; got dtype {task_ids.dtype}."
            )
        bad = task_ids[(task_ids < 0) | (task_ids >= len(self.task_names))]
        if bad.size:
            raise ValueError(
                f"Task ids {sorted(set(bad.tolist()))[:5]} are out of range: "
                f"this model serves {len(self.task_names)} tasks "
                f"{list(self.task_names)}, ids 0 to "
                f"{len(self.task_names) - 1}."
            )

    def _check_inputs(self, x):
        if isinstance(x, dict) and TASK_IDS in x:
            values = _concrete(x[TASK_IDS])
            if values is not None:
                self.check_task_ids(values)

    def predict(self, x, *args, **kwargs):
        self._check_inputs(x)
        return super().predict(x, *args, **kwargs)

    def evaluate(self, x=None, *args, **kwargs):
        self._check_inputs(x)
        return super().evaluate(x, *args, **kwargs)

    def fit(self, x=None, *args, **kwargs):
        self._check_inputs(x)
        return super().fit(x, *args, **kwargs)

    def generate(self, inputs, max_length=None, stop_token_ids="auto"):
        """`generate` of the `Seq2SeqLM` this model holds, each example
        decoded (keras-hub's cached decoder) with its own adapter.

        Args:
            inputs: what the held model's `generate` takes for one batch
                (raw strings with a preprocessor, else token ids), as a
                dict, plus `"task_ids"`: one int per example. Not a
                `tf.data.Dataset`.
            max_length: as for the held model's `generate`.
            stop_token_ids: as for the held model's `generate`.

        Returns:
            What the held model's `generate` returns.
        """
        import keras_hub

        model = self.task_model
        if not isinstance(model, keras_hub.models.Seq2SeqLM):
            raise ValueError(
                "`generate` needs a multi-task model holding a keras-hub "
                f"Seq2SeqLM, not a {type(model).__name__}."
            )
        self._check_tasks_held()
        inputs, task_ids = _split_task_ids(inputs, "`generate`")
        task_ids = np.asarray(task_ids)
        if task_ids.ndim != 1:
            raise ValueError(
                f"{TASK_IDS!r} must have shape (batch,); got shape "
                f"{task_ids.shape}."
            )
        self.check_task_ids(task_ids)
        task_ids = ops.convert_to_tensor(task_ids.astype("int32"))
        # While it runs, the held model's `generate_step` routes: a
        # compiled function may trace it again (JAX does, for new shapes).
        saved = {
            name: vars(model)[name]
            for name in ("generate_step", "generate_function")
            if name in vars(model)
        }
        model.generate_step = self._routed_step()
        try:
            routed = self._routed_generate_function()

            def generate_function(x, stop_token_ids=None):
                return routed({**x, TASK_IDS: task_ids}, stop_token_ids)

            model.generate_function = generate_function
            return model.generate(
                inputs, max_length=max_length, stop_token_ids=stop_token_ids
            )
        finally:
            for name in ("generate_step", "generate_function"):
                if name in saved:
                    setattr(model, name, saved[name])
                elif name in vars(model):
                    delattr(model, name)

    def _routed_step(self):
        """The held model's `generate_step`, routing each example to its
        adapter by the inputs' `"task_ids"`."""
        model = self.task_model
        step = type(model).generate_step.__get__(model)
        names = self.task_names
        decoder = type(model).call_decoder_with_cache.__get__(model)

        def routed_step(inputs, stop_token_ids=None):
            inputs = dict(inputs)
            tables = slot_tables(model, names)
            task_ids = ops.clip(
                ops.cast(inputs.pop(TASK_IDS), "int32"), 0, len(names) - 1
            )

            def routed_decoder(**kwargs):
                # A beam search decodes `num_beams` rows per example, the
                # beams of example `b` next to each other (rows
                # `b * num_beams + j`).
                rows = ops.shape(kwargs["decoder_token_ids"])[0]
                beams = rows // ops.shape(task_ids)[0]
                ids = ops.repeat(task_ids, beams, axis=0)
                with routing.per_example(names, ids, tables):
                    return decoder(**kwargs)

            model.call_decoder_with_cache = routed_decoder
            try:
                with routing.per_example(names, task_ids, tables):
                    return step(inputs, stop_token_ids)
            finally:
                del model.call_decoder_with_cache

        return routed_step

    def _routed_generate_function(self):
        """keras-hub's compiled generation function around the routed
        step (the held model's `generate_step` is the routed one while
        this runs), built once per sampler and compile settings."""
        model = self.task_model
        key = (id(model.sampler), model.run_eagerly, model.jit_compile)
        cached = getattr(self, "_generate_function", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        model.generate_function = None
        function = model.make_generate_function()
        self._generate_function = (key, function)
        return function

    def get_config(self):
        return {
            "name": self.name,
            "model": keras.saving.serialize_keras_object(self.task_model),
            "task_names": list(self.task_names),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)


def _concrete(x):
    """`x` as a NumPy array when its values are known here, else `None`."""
    if isinstance(x, (np.ndarray, list, tuple, int, np.integer)):
        return np.asarray(x)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly() or not isinstance(x, tf.Tensor):
            return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # A symbolic or traced tensor: no values here.
        return None


def _split_task_ids(inputs, taker):
    """`(inputs without the task ids, task ids)`, or a `ValueError` naming
    `taker` when `inputs` is not a dict holding them."""
    if not isinstance(inputs, dict) or TASK_IDS not in inputs:
        received = (
            f"a dict with keys {sorted(inputs)}"
            if isinstance(inputs, dict)
            else type(inputs).__name__
        )
        raise ValueError(
            f"{taker} takes a dict of inputs with a {TASK_IDS!r} entry (one "
            f"task id per example). Received: {received}"
        )
    inputs = dict(inputs)
    return inputs, inputs.pop(TASK_IDS)


def multi_task(model, names):
    """A model that runs each example with the adapter its task id picks.

    One frozen backbone serves several tasks in one batch: the returned
    model takes the inputs of `model` plus `"task_ids"` (an int per
    example) and computes example `b` as `model` computes it with adapter
    `names[task_ids[b]]` active, head included (each adapter's head, when
    the task keeps one per adapter). Its variables are `model`'s: `fit` on
    mixed-task batches trains each adapter from its own examples only.

    It routes every method: LoRA (with its `bias` too), the bottleneck
    adapters (sequential, parallel, scaled, multi-head, Houlsby's with its
    layer norms), prompt tuning, prefix tuning (with or without its MLP),
    MAM and BitFit (each task's own copies of the base variables it
    trains). `generate` (a
    `T5Seq2SeqLM`) decodes with the held model's sampler, beam search
    included.

    Args:
        model: a supported keras-hub backbone or task holding the adapters.
        names: sequence of adapter names (`keras_peft.adapter_names`); task
            id `i` picks `names[i]`.

    Returns:
        A `MultiTaskModel`.

    Example:
    ```python
    server = keras_peft.multi_task(classifier, ["sst2", "mnli"])
    logits = server.predict({**inputs, "task_ids": np.array([0, 1, 1, 0])})
    ```
    """
    context = architectures.resolve_model(model)
    state = state_lib.get_state(context.backbone)
    held = tuple(state.adapters) if state else ()
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(
            f"`names` must be a list of adapter names. Received: {names!r}"
        )
    if not names:
        raise ValueError("`names` must name at least one adapter.")
    unknown = [n for n in names if n not in held]
    if unknown:
        raise ValueError(
            f"{type(context.model).__name__} has no adapters named "
            f"{unknown}; its adapters are {list(held)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"`names` repeats an adapter: {list(names)}.")
    kinds = switching.unswitchable_kinds([context.model])
    if kinds:
        raise ValueError(
            f"`multi_task` routes layers that can switch between adapters "
            f"(every keras-peft method's); {type(context.model).__name__} "
            f"holds {kinds} layers, which cannot."
        )
    return MultiTaskModel(context.model, names)
