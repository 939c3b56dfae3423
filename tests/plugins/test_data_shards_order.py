"""shards' ``order = "shards"``: a permutation every epoch, each rank (and worker) reading a
bounded, nearly disjoint share of the shards, the same batch count on every rank, and exact
resume on another world size; ``order = "random"`` stays the engine's order."""

from __future__ import annotations

import pytest
import torch

from denoisekit.engine.batches import BatchStream
from denoisekit.plugins.data._shard_order import (
    part_lengths,
    shard_order,
    shards_read,
    span_lengths,
)
from denoisekit.plugins.data.image_folder import build_image_folder
from denoisekit.plugins.data.shards import build_shards
from tests.plugins.test_data_shards import folder_config, number, pack, shard_config

CPU = torch.device("cpu")
PER_SHARD = 3


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """95 images in 32 shards of 3 (the last of 2)."""
    root = tmp_path_factory.mktemp("many")
    pack(root, 95, PER_SHARD)
    return root


def stream(data, **kw) -> BatchStream:
    return BatchStream(data, batch_size=8, seed=3, device=CPU, **kw)


def epoch(streams: list[BatchStream], batches: int = 95 // 8) -> list[list[list[int]]]:
    """The next ``batches`` batches of each rank (image numbers): one epoch, from its start."""
    return [[number(next(s)[0]) for _ in range(batches)] for s in streams]


def shard_of_image(data) -> dict[int, int]:
    """The shard holding each image number (the shards hold the folder in its sorted order)."""
    return {number(data[i][0][None])[0]: data.locate(i)[0] for i in range(len(data))}


@pytest.mark.parametrize("groups", [1, 3, 4])
@pytest.mark.parametrize(
    ("counts", "batch_size", "spans", "window"),
    [([3] * 31 + [2], 8, 8, 4), ([5, 0, 7, 1, 9], 4, 3, 2), ([10], 6, 8, 1), ([2, 2], 5, 2, 9)],
)
def test_the_order_is_a_seeded_permutation(counts, batch_size, spans, window, groups) -> None:
    n = sum(counts)
    orders = [
        shard_order(
            counts,
            torch.Generator().manual_seed(s),
            batch_size,
            spans=spans,
            window=window,
            worker_spans=groups,
        )
        for s in (0, 0, 1)
    ]
    assert sorted(orders[0]) == list(range(n))
    assert orders[0] == orders[1]
    # (one shard, one full batch over 6 spans in 3+ sub-spans: no two samples share a window)
    assert orders[0] != orders[2] or n < 3 or (counts == [10] and groups > 1)
    spans = min(spans, batch_size, n)
    assert sum(span_lengths(n, batch_size, spans)) == n
    parts = part_lengths(n, batch_size, spans, groups)  # each span: its sub-spans and tail
    assert [sum(parts[j : j + groups + 1]) for j in range(0, len(parts), groups + 1)] == (
        span_lengths(n, batch_size, spans)
    )


def test_consecutive_batches_draw_from_the_sub_spans_in_turn() -> None:
    # 4 spans of 130 samples (13 shards of 10), 4 sub-spans each (33, 33, 32, 32 samples:
    # batches 0-32 by b mod 4), a tail of 2 (the partial batch of 8 samples).
    counts, batch_size = [10] * 52, 16
    ends = torch.tensor(counts).cumsum(0).tolist()
    order = shard_order(counts, torch.Generator().manual_seed(2), 16, spans=4, window=1,
                        worker_spans=4)  # fmt: skip
    full = len(order) // batch_size
    assert full == 32
    for j in range(4):
        span = {i for b in range(full) for i in order[b * 16 + 4 * j : b * 16 + 4 * j + 4]}
        subs = [
            {i for b in range(g, full, 4) for i in order[b * 16 + 4 * j : b * 16 + 4 * j + 4]}
            for g in range(4)
        ]
        assert [len(s) for s in subs] == [32] * 4 and set().union(*subs) == span
        # each sub-span: a contiguous stretch of 32 samples of the permutation, 4 or 5 shards
        assert all(len(shards_read(sorted(s), ends)) <= 5 for s in subs)
        assert len(shards_read(sorted(span), ends)) <= 14


class Numbered(torch.utils.data.Dataset):
    """Sample ``i`` is ``(i, the DataLoader worker reading it)``, in the shard-aware order of
    ``counts`` samples per shard."""

    def __init__(self, counts: list[int], groups: int) -> None:
        self.counts, self.groups = counts, groups

    def __len__(self) -> int:
        return sum(self.counts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        info = torch.utils.data.get_worker_info()
        return torch.tensor([float(i)]), info.id if info else -1

    def epoch_order(self, generator: torch.Generator, batch_size: int) -> list[int]:
        return shard_order(self.counts, generator, batch_size, spans=8, window=2,
                           worker_spans=self.groups)  # fmt: skip


@pytest.mark.parametrize(("groups", "bound"), [(4, 16 + 8), (1, 64)])
def test_each_worker_of_2_ranks_x_2_workers_reads_a_quarter_of_the_shards(groups, bound) -> None:
    # 64 shards of 10 samples, 2 ranks x 2 workers: with worker_spans = 4 each worker reads
    # 2 sub-spans of each of its rank's 4 spans, 1/4 of the samples, 16 shards (plus up to 8
    # split at sub-span cuts); with one sub-span per span (the former order) it reads all of
    # its rank's 32 (plus those split at span cuts).
    counts = [10] * 64
    ends = torch.tensor(counts).cumsum(0).tolist()
    data = Numbered(counts, groups)
    streams = [
        BatchStream(data, batch_size=16, seed=1, device=CPU, rank=r, world_size=2, num_workers=2)
        for r in range(2)
    ]
    touched: dict[tuple[int, int], set[int]] = {}
    seen = []
    for _ in range(40):  # one epoch (640 / 16 batches)
        for r, s in enumerate(streams):
            images, workers = next(s)
            samples = images.flatten().long().tolist()
            seen += samples
            for i, w in zip(samples, workers.tolist(), strict=True):
                touched.setdefault((r, w), set()).update(shards_read([i], ends))
    assert sorted(seen) == list(range(640))
    assert sorted(touched) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    sizes = [len(t) for t in touched.values()]
    if groups > 1:
        assert max(sizes) <= bound
    else:  # the former order: every worker reads (nearly) all of its rank's shards
        assert min(sizes) >= 32


def test_each_span_of_a_batch_reads_within_a_window_of_shards() -> None:
    counts = [4] * 40
    ends = torch.tensor(counts).cumsum(0).tolist()
    order = shard_order(counts, torch.Generator().manual_seed(5), 16, spans=4, window=2)
    for b in range(len(order) // 16):
        for j in range(4):  # 4 samples of each span: at most two windows of 2 shards
            part = order[b * 16 + 4 * j : b * 16 + 4 * j + 4]
            assert len(shards_read(part, ends)) <= 4
    for j in range(4):  # a span: 40 samples, a contiguous stretch of the shard permutation
        span = [order[b * 16 + 4 * j + i] for b in range(10) for i in range(4)]
        assert len(shards_read(span, ends)) == 10


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_worker_reads_a_bounded_share_of_the_shards(many, world: int) -> None:
    workers = 2
    data = build_shards(shard_config(order="shards"), root=many, train=True)
    shards = len(data.counts)
    assert shards == 32
    streams = [stream(data, rank=r, world_size=world, num_workers=workers) for r in range(world)]
    batches = epoch(streams)
    assert sorted(n for rank in batches for b in rank for n in b) == sorted(
        set(n for rank in batches for b in rank for n in b)
    )
    touched = []
    assert all(s.state_dict() == {"epoch": 0, "position": 11} for s in streams)
    shard_of = shard_of_image(data)
    for rank in batches:
        for w in range(workers):  # the DataLoader gives batch i to worker i % workers
            touched.append({shard_of[n] for b in rank[w::workers] for n in b})
    # A rank's spans are one contiguous stretch of 95 / world samples of the permutation.
    bound = -(-95 // world // PER_SHARD) + 2
    assert max(len(t) for t in touched) <= bound
    ranks = [set().union(*touched[r * workers : (r + 1) * workers]) for r in range(world)]
    for r in range(world):  # shared only where a span cut splits a shard
        others = set().union(*(ranks[q] for q in range(world) if q != r))
        assert len(ranks[r] & others) <= 2

    assert max(len(r) for r in ranks) <= bound
    if world > 1:  # the engine's random order: each rank reads from nearly every shard
        random = build_shards(shard_config(), root=many, train=True)
        spread = [stream(random, rank=r, world_size=world) for r in range(world)]
        first = epoch(spread)[0]
        assert len({shard_of[n] for b in first for n in b}) > bound  # the same shards


def test_every_sample_once_and_equal_batches_on_2_ranks_2_workers(many) -> None:
    data = build_shards(shard_config(order="shards", spans=4, window=2), root=many, train=True)
    streams = [stream(data, rank=r, world_size=2, num_workers=2) for r in range(2)]
    seen = []
    for _ in range(2):
        batches = epoch(streams)
        assert all(s.state_dict() == {"epoch": len(seen), "position": 11} for s in streams)
        numbers = [n for rank in batches for b in rank for n in b]
        assert len(numbers) == len(set(numbers)) == 88  # 95 less the 7 of no full batch
        seen.append(numbers)
    assert seen[0] != seen[1]


def test_resume_mid_epoch_on_another_world_size_is_exact(many) -> None:
    data = build_shards(shard_config(order="shards"), root=many, train=True)
    straight = stream(data)
    batches = [next(straight) for _ in range(15)]  # into epoch 1 (11 batches each)
    first = stream(data, num_workers=2)
    for _ in range(5):
        next(first)
    state = first.state_dict()
    for world in (2, 4):
        ranks = [stream(data, rank=r, world_size=world, num_workers=1) for r in range(world)]
        for r in ranks:
            r.load_state_dict(state)
        for images, labels in batches[5:]:
            parts = [next(r) for r in ranks]
            assert torch.equal(torch.cat([p[0] for p in parts]), images)
            assert torch.equal(torch.cat([p[1] for p in parts]), labels)


def test_batches_are_the_same_with_0_or_2_workers(many) -> None:
    data = build_shards(shard_config(order="shards", spans=4, worker_spans=3), root=many)
    plain, workers = stream(data), stream(data, num_workers=2)
    for _ in range(25):  # two epochs and more
        a, b = next(plain), next(workers)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_warns_when_ranks_or_workers_do_not_divide_the_spans(many, monkeypatch, caplog) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    config = shard_config(order="shards", spans=8, worker_spans=4)
    with caplog.at_level("WARNING"):
        build_shards(config, root=many)
    assert ["3 ranks do not divide data.spans = 8" in r.message for r in caplog.records] == [True]
    monkeypatch.setenv("WORLD_SIZE", "4")
    caplog.clear()
    with caplog.at_level("WARNING"):
        build_shards(config, root=many)
    assert not caplog.records
    for workers, warned in ((3, True), (2, False)):
        info = type("Info", (), {"id": 0, "num_workers": workers})
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        data = build_shards(config, root=many)
        data.epoch_order(torch.Generator(), 8)  # the first epoch's order, drawn before workers
        caplog.clear()
        with caplog.at_level("WARNING"):
            data[0]
        assert any("workers do not divide data.worker_spans" in r.message
                   for r in caplog.records) is warned  # fmt: skip


def test_random_order_leaves_the_engine_order_unchanged(many) -> None:
    data = build_shards(shard_config(), root=many, train=True)
    assert data.epoch_order(torch.Generator(), 8) is None
    plain = torch.utils.data.Subset(data, range(len(data)))  # no epoch_order: the engine's
    a, b = stream(data), stream(plain)
    for _ in range(13):
        assert torch.equal(next(a)[0], next(b)[0])


def test_pack_shuffle_writes_a_seeded_permutation(tmp_path) -> None:
    out = pack(tmp_path, 30, 4, "--shuffle", "7")
    data = build_shards(shard_config(shards=str(out / "shardindex.json")), train=False)
    numbers = [number(data[i][0][None])[0] for i in range(30)]
    assert sorted(numbers) == list(range(30)) and numbers != list(range(30))
    assert [data[i][1] for i in range(30)] == [n % 3 for n in numbers]  # labels travel along
    folder = build_image_folder(folder_config(hflip=0.0), root=tmp_path, train=False)
    plain = [number(folder[i][0][None])[0] for i in range(30)]  # the folder's order
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(7)).tolist()
    assert numbers == [plain[p] for p in perm]
