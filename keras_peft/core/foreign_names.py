"""Stand-ins for HF PEFT's top-level names that say what to use here."""


class _ForeignName:
    """Raises a `TypeError` naming keras-peft's equivalent when called or
    when any attribute (such as `from_pretrained`) is read."""

    def __init__(self, name, ours):
        self._message = (
            f"{name} is HF PEFT's (PyTorch) name; keras-peft does not have "
            f"it. Use {ours}."
        )

    def __call__(self, *args, **kwargs):
        raise TypeError(self._message)

    def __getattr__(self, attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise TypeError(self._message)

    def __repr__(self):
        return f"<{self._message}>"


def foreign_name(name, ours):
    """A stand-in for HF PEFT's `name` that points to `ours` when used.

    Args:
        name: str. The HF PEFT name.
        ours: str. What to use in keras-peft instead.

    Example:
    ```python
    LoraConfig = foreign_name("LoraConfig", "keras_peft.LoRAConfig")
    LoraConfig(r=8)  # TypeError: ... Use keras_peft.LoRAConfig.
    ```
    """
    return _ForeignName(name, ours)
