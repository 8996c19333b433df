"""The base class that marks a layer as holding keras-peft weights."""

import keras


class AdapterLayer(keras.layers.Layer):
    """A layer that owns new, trainable adapter weights.

    keras-peft finds adapter weights by structure: every variable of an
    `AdapterLayer` that does not belong to its wrapped `base_layer` is an
    adapter variable. Subclasses set the class attribute `method` to the
    name of the method they implement.
    """

    method = ""

    @property
    def wrapped_layer(self):
        """The frozen layer this adapter wraps, or `None`."""
        return getattr(self, "base_layer", None)

    @property
    def adapter_variables(self):
        """The variables this layer adds, excluding its base layer's."""
        base = self.wrapped_layer
        base_ids = {id(v) for v in base.weights} if base is not None else set()
        return [v for v in self.weights if id(v) not in base_ids]
