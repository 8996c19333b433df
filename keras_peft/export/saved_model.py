"""`export_saved_model`: a TensorFlow SavedModel for serving.

Imports TensorFlow only when called (`endpoints` is the TensorFlow-only
part), so `import keras_peft` stays backend-neutral.
"""

import os

import keras
import keras_hub

from keras_peft.core import atomic_dir
from keras_peft.export import folding


def _is_saved_model(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _may_replace(path):
    if os.path.isdir(path) and (_is_saved_model(path) or not os.listdir(path)):
        return True
    raise ValueError(
        f"Refusing to export to {path!r}: it exists and is not a SavedModel "
        "directory (or an empty one). Choose a new path."
    )


def _check_arguments(model, directory, merge, include_preprocessor):
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export_saved_model needs the TensorFlow backend; the Keras "
            f"backend is {keras.backend.backend()!r}. Save the adapter with "
            "`keras_peft.save_adapter` and export from a TensorFlow process."
        )
    if not isinstance(
        model, (keras_hub.models.Backbone, keras_hub.models.Task)
    ):
        raise TypeError(
            "export_saved_model expects a keras-hub backbone or task (such "
            "as BertTextClassifier, BertMaskedLM, T5Seq2SeqLM), got "
            f"{type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"{type(model).__name__} is not built; call it on a batch first."
        )
    for name, value in (
        ("merge", merge),
        ("include_preprocessor", include_preprocessor),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    _check_directory(directory)
    if include_preprocessor:
        from keras_peft.export import endpoints as endpoints_lib

        endpoints_lib.check_preprocessor(model)


def _check_directory(directory):
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"directory must be a str or path, got {type(directory).__name__}."
        )
    path = os.fspath(directory)
    if not path:
        raise ValueError("directory must be a non-empty path, got ''.")
    if "://" in path:
        raise ValueError(
            f"directory must be a local path, got {path!r}: export locally, "
            "then copy the directory (e.g. `gcloud storage cp -r`)."
        )
    path = os.path.realpath(path)
    parent = os.path.dirname(path)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(
            f"Cannot export to {path!r}: {parent!r} is a file, not a directory."
        )
    if os.path.lexists(path):
        _may_replace(path)


def export_saved_model(
    model, directory, merge=True, include_preprocessor=False
):
    """Writes a TensorFlow SavedModel that serves an applied model.

    The caller's model is left as it was (an unbuilt preprocessor gets
    built, as its first call would). With `merge=True`, LoRA updates
    are folded into the base kernels and reparametrized prefixes replaced by
    the prefixes they compute, in a copy of the model made for the export:
    serving pays nothing for them, and the SavedModel holds no `A`, `B` or
    prefix MLP. Prompts, prefixes, adapters and BitFit biases are exported
    as they are.

    Endpoints (`tf.saved_model.load(directory).serve(...)`, also the
    `serving_default` signature for TF Serving):
    - `serve`: the model's forward pass, `training=False`, on the model's
      inputs (a dict of token ids and masks).
    - `generate` (`Seq2SeqLM` tasks): greedy decoding of a dict of encoder
      tokens and a decoder prompt padded to the length to generate; stops
      at the tokenizer's end token if the model has a preprocessor.
    With `include_preprocessor=True`, the endpoints take raw strings
    instead: `serve(text)` for a text classifier, `serve({"encoder_text",
    "decoder_text"})` and `generate(encoder_text)` (strings out) for a
    seq2seq model. The tokenizer then runs in the SavedModel, using
    TensorFlow Text ops: the serving process needs `import tensorflow_text`.

    Loading needs only TensorFlow: neither keras, keras-hub nor keras-peft.

    A model holding several named adapters exports its active one (with
    `merge=True` folded, the others left out; with `merge=False` all of
    them, the active one acting). A `keras_peft.multi_task` model serves
    all its tasks from one
    SavedModel: `serve` takes the model's inputs plus `"task_ids"` (int32,
    one per example), or with `include_preprocessor=True` (a text
    classifier) a dict `{"text": strings, "task_ids": ints}`. It is
    exported as it is (several adapters share each kernel, so nothing is
    folded); out-of-range task ids are clipped into range, as in any
    compiled function.

    Args:
        model: a keras-hub backbone or task (applied or not), or a
            `keras_peft.MultiTaskModel`.
        directory: str or path. Created, or replaced if it is a SavedModel.
        merge: bool. Fold LoRA and reparametrized prefixes into the export.
            Defaults to `True`.
        include_preprocessor: bool. Serve raw strings through the task's
            preprocessor. Defaults to `False`.

    Example:
    ```python
    keras_peft.export_saved_model(classifier, "serving/sst2/1")
    served = tf.saved_model.load("serving/sst2/1")
    logits = served.serve(
        {"token_ids": ids, "segment_ids": segments, "padding_mask": mask}
    )
    ```
    """
    from keras_peft.core.multi_task import MultiTaskModel
    from keras_peft.export import endpoints as endpoints_lib

    if isinstance(model, MultiTaskModel):
        _check_arguments(
            model.task_model, directory, merge, include_preprocessor
        )
        # Nothing to fold: several adapters share each kernel.
        _write(
            model,
            model.task_model,
            endpoints_lib.multi_task_endpoints(model, include_preprocessor),
            directory,
            include_preprocessor,
        )
        return
    _check_arguments(model, directory, merge, include_preprocessor)
    target = folding.folded_copy(model) if merge else model
    with endpoints_lib.generation_tracing(target):
        _write(
            target,
            target,
            endpoints_lib.endpoints(target, include_preprocessor),
            directory,
            include_preprocessor,
        )


def _write(tracked, task, endpoints, directory, include_preprocessor):
    """Writes the SavedModel of `tracked` serving `endpoints`; `task` is
    the keras-hub model whose preprocessor goes along, if included."""
    if include_preprocessor and not task.preprocessor.built:
        # As its first call would (tracing may leave `built` unset); it
        # makes no weights. (A copy shares the model's preprocessor.)
        task.preprocessor.build(None)
    archive = keras.export.ExportArchive()
    archive.track(tracked)
    for name, fn, signature in endpoints:
        archive.add_endpoint(name, fn, input_signature=signature)
    _track_each_variable_once(archive)
    if include_preprocessor:
        # Its lookup tables, if any, go along.
        archive.track(task.preprocessor)
    with atomic_dir.atomic_directory(
        os.path.realpath(os.fspath(directory)), may_replace=_may_replace
    ) as tmp:
        archive.write_out(tmp, verbose=False)


def _track_each_variable_once(archive):
    """Has `archive` track the TensorFlow variables inside the Keras
    variables it tracks.

    Keras' archive tracks a model's Keras variables, and, when it writes,
    the TensorFlow variables its endpoints read: two objects per variable,
    which the SavedModel stores twice and a server loads twice
    (keras-team/keras#23553). Tracked as the TensorFlow variables
    themselves, each is one object, stored and loaded once.
    """
    import tensorflow as tf

    tracked = getattr(archive, "_tf_trackable", None)
    if tracked is None:
        # A Keras version without it: nothing to correct.
        return
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        variables = getattr(tracked, name, None)
        if variables is None:
            continue
        setattr(tracked, name, [_tf_variable(v, tf) for v in variables])


def _tf_variable(variable, tf):
    value = getattr(variable, "value", None)
    return value if isinstance(value, tf.Variable) else variable
