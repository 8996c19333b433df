"""The flag that makes a keras-peft layer compute only what its base does."""


def is_disabled(layer):
    """Whether `layer` (a wrapper or adapter layer) is disabled: it then
    computes exactly what the layer it wraps computes (or adds nothing).
    Read when the layer is traced; `keras_peft.disabled` sets it."""
    return layer.__dict__.get("_peft_disabled", False)


def set_disabled(layer, disabled):
    """Sets `layer`'s flag. Compiled functions traced before keep what they
    traced; `keras_peft.disabled` drops them."""
    layer.__dict__["_peft_disabled"] = bool(disabled)
