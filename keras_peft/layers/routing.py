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

from keras import ops

_LOCAL = threading.local()

# The ranks (batch axis included) of the values whose masks a plan shapes
# in advance: every adapter variable's, per example, has one of these.
_MASK_RANKS = (2, 3, 4, 5)


class SlotPlan:
    """Which slot each example takes, for a layer holding `count` slots
    in its bank (slots `1..count`) besides slot 0, and the masks and bank
    rows that follow from it.

    Layers holding the same adapters in the same order share one plan per
    route: a model of 100 adapters routes each example once, not once per
    layer and variable (every op is a node of the graph a server loads).

    Args:
        index: int32 tensor. The slot of each example (or a scalar):
            `0` slot 0, `1..count` a bank row, `count + 1` none.
        count: int. The slots in the bank.
        table: the slots `index` takes its values from (a route's slot
            table), or `None` for any: where no example can take "none",
            its value is not read.
    """

    def __init__(self, index, count, table=None):
        self.index = index
        self.count = count
        self.takes_none = table is None or any(s > count for s in table)
        flat = ops.reshape(index, (-1,))
        self.flat = flat
        # Row `slot - 1` of the bank, clipped into it for examples of slot
        # 0 or none (their row is taken but not used).
        self.rows = ops.clip(flat - 1, 0, count - 1) if count else None
        self._own = ops.equal(flat, 0)
        self._banked = (
            ops.logical_and(flat >= 1, flat <= count) if count else None
        )
        self._masks = {}

    def masks(self, rank):
        """`(own, banked)`: bool masks of shape `(batch, 1, ...)` (`rank`
        axes), of the examples taking slot 0 and those taking a bank row
        (`banked` is `None` for an empty bank)."""
        masks = self._masks.get(rank)
        return masks if masks is not None else self._shaped(rank)

    def shape_masks(self, ranks):
        """Shapes and keeps the masks of `ranks`, now: in the scope the
        route opens in, so that a layer traced in a nested function
        captures them, never keeps one made where others cannot read it.
        """
        for rank in ranks:
            self._masks[rank] = self._shaped(rank)

    def _shaped(self, rank):
        shape = (-1,) + (1,) * (rank - 1)
        return tuple(
            None if mask is None else ops.reshape(mask, shape)
            for mask in (self._own, self._banked)
        )


class Route:
    """The adapters routed to (`names`), each example's index into them
    (`task_ids`), and the `SlotPlan`s of the slot tables made in advance.
    """

    def __init__(self, names, task_ids):
        self.names = tuple(names)
        self.task_ids = ops.convert_to_tensor(task_ids, "int32")
        self._plans = {}

    def plan(self, table, count):
        """The plan of a layer whose slot for adapter `names[t]` is
        `table[t]`, with `count` slots in its bank: the one made in
        advance, or (for a table not seen when the route opened) a new
        one, not kept."""
        key = (tuple(table), count)
        plan = self._plans.get(key)
        return plan if plan is not None else self._new_plan(*key)

    def prepare(self, tables):
        """Makes the plans of `tables` (`(table, count)` pairs) now."""
        for table, count in tables:
            key = (tuple(table), count)
            if key not in self._plans:
                plan = self._new_plan(*key)
                plan.shape_masks(_MASK_RANKS)
                self._plans[key] = plan

    def _new_plan(self, table, count):
        index = ops.take(ops.convert_to_tensor(table, "int32"), self.task_ids)
        return SlotPlan(index, count, table)


@contextlib.contextmanager
def per_example(names, task_ids, tables=()):
    """Routes example `b` to adapter `names[task_ids[b]]` while open.

    Args:
        names: sequence of adapter names.
        task_ids: int tensor of shape `(batch,)`, each in
            `[0, len(names))`.
        tables: iterable of `(table, count)`: the slot tables of the
            layers to route (`AdapterLayer.slot_table`), whose plans are
            made once, here, and shared by the layers holding the same.
    """
    previous = getattr(_LOCAL, "route", None)
    route = Route(names, task_ids)
    route.prepare(tables)
    _LOCAL.route = route
    try:
        yield
    finally:
        _LOCAL.route = previous


def current():
    """The open `Route` while routing per example, else `None`."""
    return getattr(_LOCAL, "route", None)
