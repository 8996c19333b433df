"""TensorFlow-only: the functions a SavedModel of a keras-hub model serves."""

import contextlib
import inspect

import keras
import keras_hub
import tensorflow as tf
from keras import ops


def _tensor_spec(tensor):
    return tf.TensorSpec(tensor.shape, tensor.dtype, name=tensor.name)


def model_input_signature(model):
    """The model's inputs as `tf.TensorSpec`s (a dict for keras-hub models)."""
    return keras.tree.map_structure(_tensor_spec, model.input)


def strings_spec(name):
    """A batch of strings: `tf.string`, shape `[batch]`."""
    return tf.TensorSpec([None], tf.string, name=name)


def _static_decoder_step(model):
    """`model.call_decoder_with_cache`, with its outputs' static shapes.

    With a batch of unknown size, keras-hub's T5 decoder returns logits and
    hidden states whose length is unknown too, even for a one-token step,
    and the sampler's `squeeze(axis=1)` refuses to trace. The length is the
    decoder tokens' length: reshaping to it restores the static shape and
    changes no value.
    """
    method = type(model).call_decoder_with_cache
    parameters = inspect.signature(method)

    def call_decoder_with_cache(*args, **kwargs):
        tokens = parameters.bind(model, *args, **kwargs).arguments[
            "decoder_token_ids"
        ]
        logits, hidden_states, *caches = method(model, *args, **kwargs)
        length = tokens.shape[1]
        if length is not None:
            logits = ops.reshape(logits, (-1, length, logits.shape[-1]))
            hidden_states = ops.reshape(
                hidden_states, (-1, length, hidden_states.shape[-1])
            )
        return (logits, hidden_states, *caches)

    return call_decoder_with_cache


@contextlib.contextmanager
def generation_tracing(model):
    """Lets `model.generate_step` trace for any batch size, decoding greedily.

    The sampler is an attribute of the model (set by `compile`) and the
    decoder step is patched on the instance (see `_static_decoder_step`);
    the export must not change the caller's model, so both are put back
    afterwards. Other models than seq2seq LMs are left alone.
    """
    if not isinstance(model, keras_hub.models.Seq2SeqLM):
        yield
        return
    patches = {
        "sampler": keras_hub.samplers.GreedySampler(),
        "call_decoder_with_cache": _static_decoder_step(model),
    }
    missing = object()
    saved = {name: vars(model).get(name, missing) for name in patches}
    try:
        for name, value in patches.items():
            setattr(model, name, value)
        yield
    finally:
        for name, value in saved.items():
            if value is not missing:
                setattr(model, name, value)
            elif name in vars(model):
                delattr(model, name)


def stop_token_ids(model):
    """The end token of the model's tokenizer, or None without one."""
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        return None
    return (preprocessor.tokenizer.end_token_id,)


def _first(outputs):
    # keras-hub preprocessors return `(x, y, sample_weight)` when they make
    # labels (a seq2seq preprocessor always does) and `x` alone otherwise.
    return outputs[0] if isinstance(outputs, tuple) else outputs


def endpoints(model, include_preprocessor):
    """The endpoints to export, as `(name, fn, input_signature)`.

    Args:
        model: the keras-hub backbone or task to serve.
        include_preprocessor: bool. Whether the endpoints take raw strings.

    Returns:
        A list of `(name, fn, input_signature)`; the first is `"serve"`.
    """
    seq2seq = isinstance(model, keras_hub.models.Seq2SeqLM)
    stops = stop_token_ids(model)
    if not include_preprocessor:
        signature = [model_input_signature(model)]
        result = [
            ("serve", lambda x: model(x, training=False), signature),
        ]
        if seq2seq:
            result.append(
                (
                    "generate",
                    lambda x: model.generate_step(x, stop_token_ids=stops),
                    signature,
                )
            )
        return result

    preprocessor = model.preprocessor

    def serve(x):
        return model(_first(preprocessor(x)), training=False)

    if seq2seq:
        text = {
            "encoder_text": strings_spec("encoder_text"),
            "decoder_text": strings_spec("decoder_text"),
        }

        def generate(x):
            tokens = preprocessor.generate_preprocess(x)
            outputs = model.generate_step(tokens, stop_token_ids=stops)
            return preprocessor.generate_postprocess(outputs)

        return [
            ("serve", serve, [text]),
            ("generate", generate, [strings_spec("encoder_text")]),
        ]

    return [("serve", serve, [strings_spec("text")])]


def multi_task_endpoints(server, include_preprocessor):
    """The endpoints of a `keras_peft.MultiTaskModel`: `serve` only, taking
    the inputs of the model it holds (or raw text) plus `"task_ids"`."""
    model = server.task_model
    task_ids = tf.TensorSpec([None], tf.int32, name="task_ids")
    if include_preprocessor:
        if not isinstance(model, keras_hub.models.TextClassifier):
            raise ValueError(
                "A multi-task model serves raw strings for text classifiers "
                f"only, not for {type(model).__name__}. Export with "
                "include_preprocessor=False (it then takes token ids)."
            )
        preprocessor = model.preprocessor

        def serve(x):
            tokens = _first(preprocessor(x["text"]))
            return server({**tokens, "task_ids": x["task_ids"]}, training=False)

        signature = {"text": strings_spec("text"), "task_ids": task_ids}
        return [("serve", serve, [signature])]
    signature = {**model_input_signature(model), "task_ids": task_ids}
    return [("serve", lambda x: server(x, training=False), [signature])]


def check_preprocessor(model):
    """Raises a `ValueError` unless `model` can serve raw strings.

    Args:
        model: the model to export with its preprocessor.
    """
    preprocessor = getattr(model, "preprocessor", None)
    if not isinstance(model, keras_hub.models.Task) or preprocessor is None:
        raise ValueError(
            "include_preprocessor=True needs a keras-hub task with a "
            f"preprocessor; this {type(model).__name__} has none. Export "
            "with include_preprocessor=False (the SavedModel then takes "
            "token ids)."
        )
    if not isinstance(
        model, (keras_hub.models.TextClassifier, keras_hub.models.Seq2SeqLM)
    ):
        raise ValueError(
            "include_preprocessor=True is supported for text classifiers "
            "and seq2seq language models, not for "
            f"{type(model).__name__}: its preprocessor makes training "
            "examples (a masked LM's masks at random), not serving inputs. "
            "Export with include_preprocessor=False."
        )
