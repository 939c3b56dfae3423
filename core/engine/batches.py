"""The data order: an endless, resumable stream of batches (:class:`BatchStream`).

Epoch ``e`` visits the dataset in a permutation seeded by ``(seed, e)``, or in the order
the dataset's own ``epoch_order(generator, batch_size)`` draws from that seed (e.g. the
shards plugin's shard-aware order); the state is ``(epoch, position)``, so a resumed run
draws exactly the batches an uninterrupted run would have drawn. Under torchrun each rank
takes its slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from denoisekit.engine import distributed
from denoisekit.errors import DataError


class _EpochBatches:
    """Batches of one epoch's permutation, from a given position on (a batch sampler).

    With ``world_size`` ranks each batch is the global one, of which this rank takes the
    ``rank``-th equal slice.
    """

    def __init__(
        self,
        order: list[int],
        batch_size: int,
        drop_last: bool,
        start: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.order, self.batch_size, self.drop_last, self.start = (
            order,
            batch_size,
            drop_last,
            start,
        )
        self.per_rank = batch_size // world_size
        self.offset = rank * self.per_rank

    def _count(self) -> int:
        full, rest = divmod(len(self.order), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return max(0, self._count() - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, self._count()):
            lo = b * self.batch_size + self.offset
            yield self.order[lo : lo + self.per_rank]


class BatchStream:
    """An endless, resumable stream of batches on the device.

    Epoch ``e`` visits the dataset in the order of a permutation seeded by
    ``(seed, e)``; the state is ``(epoch, position)``, so a resumed run continues with
    the very batch an uninterrupted run would have drawn.

    Under torchrun, ``batch_size`` is the global (all ranks) batch and each rank yields
    its ``rank``-th slice of ``batch_size / world_size`` images; ``position`` counts
    global batches, so the state means the same on every rank and any world size.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        drop_last: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory and device.type == "cuda"
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator[Any] | None = None
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"batch_size {batch_size} must split evenly over {world_size} ranks (rank {rank})"
            )
        if world_size > 1 and not drop_last:
            raise ValueError("several ranks need drop_last=True (equal slices)")
        self.rank, self.world_size = rank, world_size
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0 or (drop_last and n < batch_size):
            raise DataError(
                f"the dataset has {n} images, fewer than one batch of {batch_size}; lower "
                "train.batch_size or set train.drop_last = false"
            )

    def _epoch_generator(self, salt: int) -> torch.Generator:
        seed = (self.seed * 1_000_003 + self.epoch) * 2 + salt
        return torch.Generator().manual_seed(seed % 2**64)  # torch's seeds are 64-bit

    def _worker_generator(self) -> torch.Generator:
        if self.world_size == 1:
            return self._epoch_generator(1)
        # Each rank's workers draw their own augmentations (the order stays shared).
        seed = distributed.derived_seed("workers", self.seed, self.epoch, self.rank)
        return torch.Generator().manual_seed(seed)

    def epoch_order(self) -> list[int]:
        """The current epoch's order of the dataset's indices (all ranks' global batches, one
        after the other): the dataset's ``epoch_order`` (given the epoch's generator and the
        global batch size), else (it has none, or it gives None) a random permutation."""
        n = len(self.dataset)  # type: ignore[arg-type]
        generator = self._epoch_generator(0)
        order_of = getattr(self.dataset, "epoch_order", None)
        order = order_of(generator, self.batch_size) if callable(order_of) else None
        if order is None:
            return torch.randperm(n, generator=generator).tolist()
        if len(order) != n:
            raise DataError(
                f"the data's epoch_order gave {len(order)} indices for its {n} samples; "
                f"it must give a permutation of all of them (a bug in the data plugin)"
            )
        return list(order)

    def _start_epoch(self) -> None:
        order = self.epoch_order()
        batches = _EpochBatches(
            order, self.batch_size, self.drop_last, self.position, self.rank, self.world_size
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=self._worker_generator(),  # seeds workers' augmentations
        )
        self._iterator = iter(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._iterator is None:
                self._start_epoch()
            try:
                images, labels = next(self._iterator)  # type: ignore[arg-type]
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.position = 0
                continue
            self.position += 1
            non_blocking = self.pin_memory
            return (
                images.to(self.device, non_blocking=non_blocking),
                torch.as_tensor(labels).to(self.device, non_blocking=non_blocking),
            )

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None
