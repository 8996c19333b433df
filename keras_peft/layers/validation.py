"""Argument checks shared by the keras-peft layers."""


def check_int(name, value, minimum=1, owner=""):
    """Raises a `ValueError` unless `value` is an int (not a bool) >= minimum.

    Args:
        name: str. The argument's name, for the message.
        value: the value to check.
        minimum: int. The smallest allowed value. Defaults to `1`.
        owner: str. Prefix naming what the argument belongs to, e.g. "LoRA ".
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{owner}`{name}` must be {kind}. Got {value!r}.")
