"""Name scopes that give a new layer the path of a layer already there."""

import contextlib

import keras


@contextlib.contextmanager
def scope_of(path):
    """Opens the name scope of the layer at `path`'s parent, so a layer built
    inside it gets the path (and variable paths) of a sibling there, whatever
    scope the caller is in."""
    parent, _, _ = path.rpartition("/")
    if parent:
        grandparent, _, last = parent.rpartition("/")
        with keras.name_scope(last, override_parent=grandparent):
            yield
        return
    # A top-level layer's siblings live at the root: set the caller's scopes
    # aside (Keras offers no public way to open the root scope).
    from keras.src.backend.common import global_state

    stack = global_state.get_global_attribute("name_scope_stack")
    global_state.set_global_attribute("name_scope_stack", [])
    try:
        yield
    finally:
        global_state.set_global_attribute("name_scope_stack", stack)
