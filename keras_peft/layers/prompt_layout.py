"""Where each example's prompt sits when adapters with prompts of several
lengths (or none) share a model.

The prompt layers hold one length per adapter (slot). The sequence grows
by the longest, `total`, whichever adapter acts, so that switching or
routing per example never changes a shape. An example whose adapter has a
prompt of length `l < total` keeps its tokens where a model holding only
that prompt has them: the layout `[head, prompt, tail]` becomes
`[head, prompt[:l], tail, unused]`, the `total - l` unused positions
moved to the end and masked out. BERT's position embeddings and T5's
relative positions then see each example's tokens where its own model
does; masked positions take no share of the attention.
"""

from keras import ops

from keras_peft.layers import routing


def slot_lengths(layer):
    """The prompt length of each of `layer`'s slots (slot 0 first)."""
    count = max(len(layer.slot_names), 1)
    return [layer.slot_setting(slot, "length") for slot in range(count)]


def total_length(layer):
    """The positions the prompt adds to the sequence: the longest slot's."""
    return max(slot_lengths(layer))


def example_lengths(layer):
    """Each example's prompt length, or `None` where every example's
    prompt fills all `total_length(layer)` positions (the plain layout).

    Returns an int32 tensor: a scalar (the active adapter's, `0` where it
    has no prompt) or, while routing per example, one per example.
    """
    if not layer.switched:
        return None
    lengths = slot_lengths(layer)
    route = routing.current()
    held = layer.slot_names
    if (
        route is not None
        and len(set(lengths)) == 1
        and (not held or all(name in held for name in route.names))
    ):
        return None
    table = ops.convert_to_tensor(lengths + [0], "int32")
    return ops.take(table, layer._slot_index())


def insert(sequence, block, at, lengths, axis=1):
    """`block` (`total` positions) inserted into `sequence` at `at` along
    `axis`, each example's unused block positions moved to the end."""
    outputs = ops.concatenate(
        [_slice(sequence, axis, 0, at), block, _slice(sequence, axis, at)],
        axis=axis,
    )
    if lengths is None:
        return outputs
    total = _size(block, axis)
    count = _size(outputs, axis)
    positions = ops.arange(count, dtype="int32")[None, :]
    used = ops.reshape(lengths, (-1, 1))
    offset = positions - at
    tail = count - total - at
    indices = ops.where(
        offset < used,
        positions,
        ops.where(
            offset < used + tail, positions + total - used, positions - tail
        ),
    )
    indices = ops.where(positions < at, positions, indices)
    return _gather(outputs, indices, axis)


def grow_mask(mask, total, at, lengths, axis=-1):
    """`mask` grown along `axis` by the `total` prompt positions `insert`
    puts in: ones for each example's prompt, zeros for its unused
    positions, laid out as `insert` lays out the sequence."""
    rank = len(mask.shape)
    axis = axis % rank
    shape = [1] * rank
    shape[axis] = total
    if lengths is None:
        block = ops.ones(shape, mask.dtype)
    else:
        used = ops.reshape(lengths, [-1] + [1] * (rank - 1))
        block = ops.cast(
            ops.reshape(ops.arange(total, dtype="int32"), shape) < used,
            mask.dtype,
        )
    target = list(ops.shape(mask))
    target[axis] = total
    block = ops.broadcast_to(block, target)
    return insert(mask, block, at, lengths, axis)


def strip(sequence, total, at, lengths, axis=1):
    """`sequence` without the `total` prompt positions `insert` put in."""
    if lengths is None:
        return ops.concatenate(
            [
                _slice(sequence, axis, 0, at),
                _slice(sequence, axis, at + total),
            ],
            axis=axis,
        )
    count = _size(sequence, axis) - total
    positions = ops.arange(count, dtype="int32")[None, :]
    used = ops.reshape(lengths, (-1, 1))
    indices = ops.where(positions < at, positions, positions + used)
    return _gather(sequence, indices, axis)


def _slice(x, axis, start, stop=None):
    index = [slice(None)] * len(x.shape)
    index[axis % len(x.shape)] = slice(start, stop)
    return x[tuple(index)]


def _size(x, axis):
    size = x.shape[axis]
    return ops.shape(x)[axis] if size is None else size


def _gather(x, indices, axis):
    """`x` gathered along `axis` by `indices` `(1 or batch, n)`: positions
    `indices[b]` of example `b`."""
    rank = len(x.shape)
    axis = axis % rank
    if indices.shape[0] == 1:
        # One arrangement for every example (the active adapter's).
        return ops.take(x, indices[0], axis=axis)
    if axis == 1:
        # Whole rows of a flattened batch: one gather, where
        # `take_along_axis` would index (and transpose) every element.
        batch, count = ops.shape(x)[0], ops.shape(x)[1]
        rows = ops.reshape(x, (-1, *x.shape[2:]))
        offsets = ops.arange(batch, dtype="int32")[:, None] * count
        return ops.take(rows, indices + offsets, axis=0)
    rows, count = ops.shape(indices)
    shape = [rows] + [1] * (rank - 1)
    shape[axis] = count
    target = list(ops.shape(x))
    target[axis] = count
    indices = ops.broadcast_to(ops.reshape(indices, shape), target)
    return ops.take_along_axis(x, indices, axis)
