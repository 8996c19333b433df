"""Per-example routing: which adapter acts on each example of a batch.

Inside `per_example(names, task_ids)`, every switchable adapter layer
computes example `b` with the weights of adapter `names[task_ids[b]]` (or
adds nothing, where it holds none for that adapter) instead of the active
adapter's. `keras_peft.multi_task` opens it around its model's call; it is
read when layers are traced, and is thread-local, so that replicas traced
in threads (`tf.distribute`) keep their own.
"""

import contextlib
import threading

_LOCAL = threading.local()


@contextlib.contextmanager
def per_example(names, task_ids):
    """Routes example `b` to adapter `names[task_ids[b]]` while open.

    Args:
        names: sequence of adapter names.
        task_ids: int tensor of shape `(batch,)`, each in
            `[0, len(names))`.
    """
    previous = getattr(_LOCAL, "route", None)
    _LOCAL.route = (tuple(names), task_ids)
    try:
        yield
    finally:
        _LOCAL.route = previous


def current():
    """`(names, task_ids)` while routing per example, else `None`."""
    return getattr(_LOCAL, "route", None)
