"""The plumbing every keras-peft wrapper shares."""

import keras


class Wrapper(keras.layers.Layer):
    """A layer that takes a base layer's place in a model and holds it.

    keras-peft wraps layers in two ways. A *replacing* wrapper (`LoRADense`,
    `PrefixAttention`, the prompt wrappers) changes how its base layer
    computes, so a layer carries at most one (`replacing = True`). A
    `SiteHost` only adds delta modules to the output of what it holds, the
    base layer or its replacing wrapper (`replacing = False`). Every wrapper:

    - takes its base layer's name and dtype policy unless given others, so
      that it stands where the base stood;
    - serializes its base layer in `get_config` under the constructor
      argument named by `base_argument`, and restores it in `from_config`;
    - remembers the base's trainable flags when it freezes them
      (`freeze_base()`), and `release()` gives the base back as it found it;
    - records in `applied_config` the config whose `keras_peft.apply` made
      it, so that a later conflict on its layer can name that config.

    Args:
        base_layer: the layer to wrap, or `None` for a subclass that makes
            its own base layer in `__init__`. Defaults to `None`.
        **kwargs: base layer arguments; `name` and `dtype` default to the
            base layer's.

    Example:
    ```python
    class Doubled(keras_peft.layers.Wrapper):
        def call(self, inputs):
            return 2 * self.base_layer(inputs)

    dense = keras.layers.Dense(4)
    doubled = Doubled(dense)  # named "dense", with dense's dtype policy
    y = doubled(np.ones((2, 3)))
    assert doubled.release() is dense
    ```
    """

    # Whether the wrapper changes how its base computes (at most one such
    # wrapper per layer) or only adds to its output.
    replacing = True
    # The constructor argument that takes the base layer.
    base_argument = "base_layer"

    def __init__(self, base_layer=None, **kwargs):
        if base_layer is not None:
            kwargs.setdefault("name", base_layer.name)
            kwargs.setdefault("dtype", base_layer.dtype_policy)
        super().__init__(**kwargs)
        self.base_layer = base_layer
        # Variable ids to bools: a collection holding the variables
        # themselves would be tracked as this layer's own state.
        self._base_trainable = None
        self.applied_config = None

    @property
    def wrapped_layer(self):
        """The layer this wrapper holds."""
        return self.base_layer

    def freeze_base(self):
        """Freezes the base layer's variables, remembering their flags for
        `release()`. Idempotent: only the first call records flags."""
        if self._base_trainable is not None:
            return
        # By variable: the base may hold more variables by the time it is
        # released (another method's layer wrapped inside it).
        self._base_trainable = {
            id(v): v.trainable for v in self.base_layer.weights
        }
        for variable in self.base_layer.weights:
            variable.trainable = False

    def release(self):
        """Gives the base layer back its trainable flags.

        Subclasses first undo whatever else they changed on the base layer,
        then call this.

        Returns:
            The base layer, as it was before this layer wrapped it.
        """
        flags = self._base_trainable or {}
        for variable in self.base_layer.weights:
            if id(variable) in flags:
                variable.trainable = flags[id(variable)]
        return self.base_layer

    def get_config(self):
        config = super().get_config()
        config[self.base_argument] = keras.saving.serialize_keras_object(
            self.base_layer
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config[cls.base_argument] = keras.saving.deserialize_keras_object(
            config[cls.base_argument]
        )
        return cls(**config)
