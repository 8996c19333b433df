"""The flag that makes a keras-peft layer compute only what its base does."""

import contextlib


def is_disabled(layer):
    """Whether `layer` (a wrapper or adapter layer) is disabled: it then
    computes exactly what the layer it wraps computes (or adds nothing).
    Read when the layer is traced; `keras_peft.disabled` sets it."""
    return layer.__dict__.get("_peft_disabled", False)


def set_disabled(layer, disabled):
    """Sets `layer`'s flag. Compiled functions traced before keep what they
    traced; `keras_peft.disabled` drops them."""
    layer.__dict__["_peft_disabled"] = bool(disabled)


@contextlib.contextmanager
def all_disabled(layers):
    """Disables `layers` while open; restores their flags on exit, also
    through an exception. Compiled functions are left alone (see
    `set_disabled`)."""
    before = [is_disabled(layer) for layer in layers]
    for layer in layers:
        set_disabled(layer, True)
    try:
        yield
    finally:
        for layer, flag in zip(layers, before):
            set_disabled(layer, flag)
