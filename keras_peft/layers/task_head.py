"""A task's dense head, kept once per named adapter."""

import keras
from keras import ops

from keras_peft.layers.adapter_layer import AdapterLayer
from keras_peft.layers.wrapper import Wrapper


@keras.saving.register_keras_serializable(package="keras_peft")
class TaskHead(Wrapper, AdapterLayer):
    """A `keras.layers.Dense` of a task (a classifier's logits layer) with
    one kernel and bias per named adapter.

    Slot 0 is the wrapped layer's own kernel and bias; each further slot
    (`add_slot`) holds another adapter's. The layer computes
    `activation(x @ kernel + bias)` with the active slot's, by the ops
    `Dense` uses, so with one slot it returns what the wrapped layer
    returns, bit for bit. The wrapped layer keeps its trainable flags: a
    head trains as a head, not as a frozen base layer.

    Args:
        base_layer: the `keras.layers.Dense` to hold per adapter.
        **kwargs: base layer arguments; `name` and `dtype` default to the
            base layer's.

    Example:
    ```python
    head = TaskHead(classifier.get_layer("logits"))
    head.set_slot_names(["sst2"])
    head.add_slot("mnli", TaskHead(fresh_dense))  # mnli's own kernel, bias
    ```
    """

    method = "head"
    switchable = True

    def __init__(self, base_layer, **kwargs):
        if not isinstance(base_layer, keras.layers.Dense):
            raise TypeError(
                "TaskHead wraps a keras.layers.Dense. Received: "
                f"{type(base_layer).__name__} "
                f"{getattr(base_layer, 'name', '')!r}"
            )
        super().__init__(base_layer, **kwargs)
        if base_layer.built:
            self.built = True

    def build(self, input_shape):
        if not self.base_layer.built:
            self.base_layer.build(input_shape)

    def _template_variables(self):
        base = self.base_layer
        return [v for v in (base.kernel, base.bias) if v is not None]

    def call(self, inputs):
        base = self.base_layer
        if not self.switched:
            return base(inputs)
        values = self.slot_values(*self._template_variables())
        if base.bias is None:
            values = (values,)
        if self.routed:
            # One kernel and bias per example.
            shape = ops.shape(inputs)
            flat = ops.reshape(inputs, (shape[0], -1, shape[-1]))
            outputs = ops.matmul(flat, values[0])
            if base.bias is not None:
                outputs = ops.add(outputs, values[1][:, None])
            outputs = ops.reshape(outputs, (*shape[:-1], base.units))
        else:
            outputs = ops.matmul(inputs, values[0])
            if base.bias is not None:
                outputs = ops.add(outputs, values[1])
        if base.activation is not None:
            outputs = base.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.base_layer.compute_output_shape(input_shape)
