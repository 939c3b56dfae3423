"""The shard-aware epoch order of ``type = "shards"`` (``order = "shards"``).

Epoch ``e`` (the engine's generator, seeded by ``(seed, e)``):

1. the shards are permuted, and their samples listed shard after shard in that order;
2. the list is cut into ``spans`` contiguous spans (a shard at a cut is split between two);
3. within each span the samples are shuffled within windows of ``window`` consecutive
   shards (the span's first ``window`` shards, the next ``window``, ...);
4. global batch ``b`` is the ``b``-th part of every span, span after span: with
   ``batch_size = B`` and ``J`` spans, ``B / J`` samples of each (the first ``B mod J`` spans
   one more).

The engine gives rank ``r`` of ``W`` the ``r``-th equal slice of each global batch: when
``W`` divides ``J`` and ``J`` divides ``B`` that is exactly spans ``r J / W`` to
``(r + 1) J / W - 1``, so each shard is read by one rank (two where a span cut splits it). The
order depends on the seed, the epoch, the shard counts, ``spans``, ``window`` and the global
batch size only, not on the number of ranks or workers: a resumed run on any world size
draws the same batches. Every sample is in the order once (the engine cuts the global
batches before slicing them: every rank gets the same number).
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


def shard_order(
    counts: list[int], generator: torch.Generator, batch_size: int, *, spans: int, window: int
) -> list[int]:
    """One epoch's order of the samples of shards holding ``counts`` samples (sample ``i`` is
    counted through the shards in their listed order); see the module docstring."""
    sizes = torch.tensor(counts, dtype=torch.long)
    n, num_shards = int(sizes.sum()), len(counts)
    spans = max(1, min(spans, batch_size, n))
    firsts = torch.cumsum(sizes, 0) - sizes  # each shard's first sample
    perm = torch.randperm(num_shards, generator=generator)
    permuted = sizes[perm]
    position = torch.repeat_interleave(torch.arange(num_shards), permuted)  # in the permutation
    starts = torch.cumsum(permuted, 0) - permuted
    samples = firsts[perm][position] + torch.arange(n) - starts[position]
    lengths = span_lengths(n, batch_size, spans)
    span = torch.repeat_interleave(torch.arange(spans), torch.tensor(lengths))
    span_start = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    window_key = span * (num_shards + 1) + (position - position[span_start][span]) // window
    noise = torch.randperm(n, generator=generator)
    shuffled = samples[noise[torch.argsort(window_key[noise], stable=True)]]
    full = n // batch_size
    parts = torch.split(shuffled, lengths)
    widths = [batch_size // spans + (j < batch_size % spans) for j in range(spans)]
    body = torch.cat([p[: w * full].view(full, w) for p, w in zip(parts, widths, strict=True)], 1)
    tail = torch.cat([p[w * full :] for p, w in zip(parts, widths, strict=True)])
    return torch.cat([body.flatten(), tail]).tolist()


def shards_read(order: list[int], ends: list[int]) -> set[int]:
    """The shards (numbers) that the samples of ``order`` lie in; ``ends`` are the shards'
    cumulative sample counts."""
    index = torch.as_tensor(order, dtype=torch.long)
    return set(torch.bucketize(index, torch.tensor(ends), right=True).unique().tolist())
