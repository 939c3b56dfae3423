"""The shard-aware epoch order of ``type = "shards"`` (``order = "shards"``).

Epoch ``e`` (the engine's generator, seeded by ``(seed, e)``), with ``J = spans`` and
``G = worker_spans``:

1. the shards are permuted, and their samples listed shard after shard in that order;
2. the list is cut into ``J`` contiguous spans (a shard at a cut is split between two), and
   each span into ``G`` contiguous sub-spans (sub-span ``g`` holding the span's part of the
   full batches ``b`` with ``b mod G = g``) and a tail (its part of the last, partial batch);
3. within each sub-span (the last one with the tail) the samples are shuffled within windows
   of ``window`` consecutive shards (the sub-span's first ``window`` shards, the next, ...);
4. global batch ``b`` takes ``B / J`` samples (the first ``B mod J`` spans one more) of every
   span, span after span, all from sub-span ``b mod G`` of the span (its next ones in
   order); the partial last batch takes the tails. With ``G = 1`` this is the order of
   denoisekit before ``worker_spans``.

The engine gives rank ``r`` of ``R`` the ``r``-th equal slice of each global batch: when
``R`` divides ``J`` and ``J`` divides ``B`` that is exactly spans ``r J / R`` to
``(r + 1) J / R - 1``. A DataLoader worker ``w`` of ``W`` takes the rank's batches ``b`` with
``b - start ≡ w (mod W)``; when ``W`` divides ``G`` those all have ``b mod G`` in the same
``G / W`` residues, so the worker reads only those ``G / W`` sub-spans of each of its rank's
spans: about ``shards / (R W)`` shards, plus the shards split at sub-span cuts (and the
tails' shards, for the partial batch of ``drop_last = false``). Otherwise the order is just as
correct and resumable, with less locality (a rank's slice straddles spans; a worker reads
more of its rank's sub-spans). The order depends on the seed, the epoch, the shard counts,
``spans``, ``worker_spans``, ``window`` and the global batch size only, not on the number of
ranks or workers: a resumed run on any world size draws the same batches. Every sample is in
the order once (the engine cuts the global batches before slicing them: every rank gets the
same number).
"""

from __future__ import annotations

import torch


def span_lengths(n: int, batch_size: int, spans: int) -> list[int]:
    """The samples of each span: ``batch_size`` split over the spans, times the full batches,
    plus the span's share of the ``n mod batch_size`` left over (the last, partial batch)."""
    full, rest = divmod(n, batch_size)
    return [
        (batch_size // spans + (j < batch_size % spans)) * full + rest // spans + (j < rest % spans)
        for j in range(spans)
    ]


def part_lengths(n: int, batch_size: int, spans: int, worker_spans: int) -> list[int]:
    """The samples of each part, span after span: the span's ``worker_spans`` sub-spans
    (sub-span ``g`` serves the full batches ``b`` with ``b mod worker_spans = g``), then its
    tail (its share of the partial batch)."""
    full, rest = divmod(n, batch_size)
    lengths = []
    for j in range(spans):
        width = batch_size // spans + (j < batch_size % spans)
        for g in range(worker_spans):
            lengths.append(width * (full // worker_spans + (g < full % worker_spans)))
        lengths.append(rest // spans + (j < rest % spans))
    return lengths


def shard_order(
    counts: list[int],
    generator: torch.Generator,
    batch_size: int,
    *,
    spans: int,
    window: int,
    worker_spans: int = 1,
) -> list[int]:
    """One epoch's order of the samples of shards holding ``counts`` samples (sample ``i`` is
    counted through the shards in their listed order); see the module docstring."""
    sizes = torch.tensor(counts, dtype=torch.long)
    n, num_shards = int(sizes.sum()), len(counts)
    spans = max(1, min(spans, batch_size, n))
    groups = max(1, worker_spans)
    firsts = torch.cumsum(sizes, 0) - sizes  # each shard's first sample
    perm = torch.randperm(num_shards, generator=generator)
    permuted = sizes[perm]
    position = torch.repeat_interleave(torch.arange(num_shards), permuted)  # in the permutation
    starts = torch.cumsum(permuted, 0) - permuted
    samples = firsts[perm][position] + torch.arange(n) - starts[position]
    lengths = part_lengths(n, batch_size, spans, groups)
    # Windows are counted from each sub-span's start; a span's tail joins its last sub-span.
    merged = [
        x + lengths[i + 1] if i % (groups + 1) == groups - 1 else x
        for i, x in enumerate(lengths)
        if i % (groups + 1) != groups
    ]
    part = torch.repeat_interleave(torch.arange(len(merged)), torch.tensor(merged))
    part_start = torch.tensor([0, *merged[:-1]]).cumsum(0).clamp(max=n - 1)
    window_key = part * (num_shards + 1) + (position - position[part_start][part]) // window
    noise = torch.randperm(n, generator=generator)
    shuffled = samples[noise[torch.argsort(window_key[noise], stable=True)]]
    full = n // batch_size
    parts = torch.split(shuffled, lengths)
    columns, tail = [], []
    for j in range(spans):
        width = batch_size // spans + (j < batch_size % spans)
        column = torch.empty(full, width, dtype=torch.long)
        for g in range(groups):
            column[g::groups] = parts[j * (groups + 1) + g].view(-1, width)
        columns.append(column)
        tail.append(parts[j * (groups + 1) + groups])
    return torch.cat([torch.cat(columns, 1).flatten(), *tail]).tolist()


def shards_read(order: list[int], ends: list[int]) -> set[int]:
    """The shards (numbers) that the samples of ``order`` lie in; ``ends`` are the shards'
    cumulative sample counts."""
    index = torch.as_tensor(order, dtype=torch.long)
    return set(torch.bucketize(index, torch.tensor(ends), right=True).unique().tolist())
