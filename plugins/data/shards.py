"""Tar shards in the WebDataset layout (``type = "shards"``).

Each sample is the group of tar members sharing a key: ``KEY.png`` (or ``.jpg``, ``.jpeg``,
``.webp``, ``.bmp``, ``.tif``, ``.tiff``), an optional label ``KEY.cls`` (a decimal class
number) and an optional caption ``KEY.txt``, as img2dataset and ``denoisekit data pack``
write them. ``shards`` names a shard index (a ``.json`` file in the wids format, written by
``denoisekit data pack``: the shards and their sample counts), or the tar files themselves,
one path or a brace pattern such as ``data/train-{000000..000127}.tar``; relative paths are
read from the recipe's folder. Without an index every shard is opened once at build time to
count its samples.

Shards may be URLs (``https://``, ``s3://``, ``gs://``, or ``pipe:`` commands run as
written; brace patterns and an index at a URL too): each is downloaded on first use into a
local cache (``cache_dir``, optionally bounded by ``cache_gb``; see ``_shard_cache``), once
per machine, then read like a local shard. A failed download is a bad shard (``on_error``).

The shards are read by random access through wids (``wids.wids.IndexedTarSamples``: an
index of the tar's members, then reads by offset from a memory map), so the dataset is an
ordinary indexed one: sample ``i`` is the ``i``-th sample of the shards in the order listed.
The engine's data order then applies: a seeded order per epoch, each rank taking its slice
of every global batch and each DataLoader worker whole batches, the position ``(epoch,
batch)`` in every checkpoint (exact resume, on any number of ranks). ``order = "random"``
is the engine's permutation of all samples; ``order = "shards"`` (:meth:`epoch_order`) a
permutation of the shards cut into ``spans`` (ranks take whole spans), each span into
``worker_spans`` sub-spans (consecutive batches draw from different ones, so a rank's workers
take different sub-spans), shuffled within windows of ``window`` shards: each rank and each
worker reads its own share of the shards (see ``_shard_order``). Each worker keeps up to
``open_shards`` shards open (least recently used closed first).

Images go through Pillow: converted to ``mode``, resized to ``image_size`` (antialiased
bicubic; center crop or stretch), flipped left-right with probability ``hflip`` when
training, mapped to [-1, 1]. ``num_classes`` states the labels' classes: set, every sample
needs a ``.cls`` label in ``0 .. num_classes - 1``; unset, labels are -1. Captions are read
by :meth:`ShardDataset.caption` (batches hold images and labels).

Bad data (a truncated or unreadable shard, an undecodable image, a missing or bad label):
``on_error = "fail"`` raises a :class:`~denoisekit.errors.DataError` naming the shard and
the member; ``"skip"`` logs a warning, counts it (``dataset.skipped``, per process) and
returns the next readable sample instead (a bad shard is skipped whole).

Recipe example::

    [data]
    type = "shards"
    shards = "data/shards/shardindex.json"   # or "data/train-{000000..000127}.tar"
    image_size = 64
    num_classes = 10
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit import NULL_CLASS, ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option, positive_finite, unit_interval
from denoisekit.errors import DataError
from denoisekit.plugins.data._shard_cache import ShardCache, cache_for
from denoisekit.plugins.data._shard_files import (
    SampleError,
    count_samples,
    data_error,
    expand,
    one_line,
    open_location,
    read_index,
)
from denoisekit.plugins.data._shard_order import shard_order
from denoisekit.plugins.data._transforms import fit_square, pil_to_tensor, random_hflip

logger = logging.getLogger(__name__)

#: Member extensions read as the image, the first one present in a sample.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@attrs.frozen(kw_only=True)
class ShardsConfig:
    """Options of ``type = "shards"``."""

    shards: str = option(
        "shards/shardindex.json",
        "a shard index (.json) or tar shards (path or brace pattern), relative to the "
        "recipe's folder unless absolute; or URLs (https://, s3://, gs://, pipe:)",
    )
    image_size: int = option(64, "side of the square images, in pixels", validator=int_at_least(1))
    center_crop: bool = option(True, "crop the centered square (else stretch to the square)")
    hflip: float = option(
        0.5, "probability of a left-right flip (training only)", validator=unit_interval
    )
    mode: str = option(
        "RGB",
        "RGB (3 channels) or L (grey, 1 channel)",
        validator=attrs.validators.in_(("RGB", "L")),
    )
    num_classes: int | None = option(
        None,
        "classes of the .cls labels (each sample needs one); unset: no labels (-1)",
        validator=int_at_least(1, optional=True),
    )
    on_error: str = option(
        "fail",
        "bad shard or sample: fail (stop) or skip (warn, count, go on)",
        validator=attrs.validators.in_(("fail", "skip")),
    )
    open_shards: int = option(
        64, "shards each DataLoader worker keeps open", validator=int_at_least(1)
    )
    cache_dir: str = option(
        "",
        "where shards at URLs are downloaded on first use (relative: to the recipe's folder); "
        "empty: the denoisekit cache's shards folder (~/.cache/denoisekit/shards)",
    )
    cache_gb: float | None = option(
        None,
        "keep at most this many GB of downloaded shards (least recently used removed first); "
        "unset: keep them all",
        validator=attrs.validators.optional(positive_finite),
    )
    order: str = option(
        "random",
        "random (any sample after any, the engine's order) or shards (each rank reads its "
        "spans of a seeded shard permutation, shuffled within windows; docs/scaling.md)",
        validator=attrs.validators.in_(("random", "shards")),
    )
    spans: int = option(
        8,
        'order = "shards": spans each global batch draws from; ranks take whole spans when '
        "their number divides it",
        validator=int_at_least(1),
    )
    window: int = option(
        4,
        'order = "shards": samples are shuffled within windows of this many shards',
        validator=int_at_least(1),
    )
    worker_spans: int = option(
        4,
        'order = "shards": sub-spans of each span, batch b drawing from sub-span b mod '
        "worker_spans; a rank's DataLoader workers read disjoint ones when their number "
        "divides it",
        validator=int_at_least(1),
    )


def image_shape(config: ShardsConfig) -> tuple[int, int, int]:
    """``(C, S, S)``: 3 channels for RGB, 1 for L."""
    return (3 if config.mode == "RGB" else 1, config.image_size, config.image_size)


class ShardDataset(torch.utils.data.Dataset):
    """The samples of tar shards, as ``(image C×S×S in [-1, 1], label)``.

    Attributes:
        paths: the shards (paths or URLs), in order; sample ``i`` is counted through them.
        cache: where remote shards are downloaded.
        counts: the samples of each shard.
        num_classes: ``config.num_classes`` (None: unlabelled, label ``NULL_CLASS``).
        image_shape: ``(C, S, S)``.
        skipped: how many bad samples this process has skipped.
        skipped_members: where they were (shard and member, or the shard).
    """

    def __init__(
        self,
        paths: list[str],
        counts: list[int],
        *,
        config: ShardsConfig,
        train: bool,
        indexed: bool,
        cache: ShardCache,
    ) -> None:
        self.paths, self.counts, self.config, self.cache = paths, counts, config, cache
        self.indexed = indexed  # counts come from an index: check each shard against it
        self.ends = list(itertools.accumulate(counts))
        self.num_classes: int | None = config.num_classes
        self.image_shape: tuple[int, int, int] = image_shape(config)
        self.hflip = config.hflip if train else 0.0
        self.skipped_members: list[str] = []
        self._bad_shards, self._bad = set[int](), set[int]()
        self._open: Any = None  # this process's LRU of open shards, made on first use
        self._orders = 0  # epoch orders drawn in this process (or its parent, in a worker)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = None  # open shards stay in their process
        return state

    @property
    def skipped(self) -> int:
        """How many bad samples this process has skipped."""
        return len(self.skipped_members)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def epoch_order(self, generator: torch.Generator, batch_size: int) -> list[int] | None:
        """``order = "shards"``: the epoch's shard-aware order (see ``_shard_order``);
        ``"random"``: None (the engine's random permutation)."""
        if self.config.order == "random":
            return None
        self._orders += 1
        return shard_order(
            self.counts,
            generator,
            batch_size,
            spans=self.config.spans,
            window=self.config.window,
            worker_spans=self.config.worker_spans,
        )

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard number, sample within the shard)`` of sample ``index``."""
        k = bisect.bisect_right(self.ends, index)
        return k, index - (self.ends[k - 1] if k else 0)

    def _shard(self, k: int) -> Any:
        if self._open is None:
            from wids.wids_lru import LRUCache

            self._open = LRUCache(self.config.open_shards, release_handler=_close)
            self._check_workers()
        shard = self._open[k]
        if shard is None:
            shard = open_location(
                self.paths[k], self.cache, self.counts[k] if self.indexed else None
            )
            self._open[k] = shard
        return shard

    def _check_workers(self) -> None:
        """Warn (worker 0 of rank 0, first epoch) when the workers do not divide worker_spans."""
        info = torch.utils.data.get_worker_info()
        if self.config.order != "shards" or info is None or self._orders != 1 or info.id:
            return
        if os.environ.get("RANK", "0") == "0" and self.config.worker_spans % info.num_workers:
            logger.warning(
                "shards: %d DataLoader workers do not divide data.worker_spans = %d: each "
                "worker reads more than its share of its rank's shards (still every sample "
                "once); set data.worker_spans to a multiple of the workers",
                *(info.num_workers, self.config.worker_spans),
            )

    def members(self, index: int) -> dict[str, Any]:
        """The raw members of sample ``index`` (``{".png": BytesIO, ..., "__key__": key}``)."""
        k, j = self.locate(index)
        shard = self._shard(k)
        try:
            return shard[j]
        except Exception as exc:  # a member's header or data beyond the mapped file
            raise SampleError(f"{self.paths[k]} sample {j}", one_line(exc)) from exc

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """Decode sample ``index`` (no flip). Raises :class:`SampleError` when it is bad."""
        from PIL import Image

        sample = self.members(index)
        k, _ = self.locate(index)
        key = f"{self.paths[k]} member {sample['__key__']}"
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            raise SampleError(key, f"no image member ({', '.join(IMAGE_EXTENSIONS)})")
        try:
            with Image.open(sample[ext]) as img:
                img = img.convert(self.config.mode)  # decodes the whole image
        except Exception as exc:  # PIL raises many types on corrupt data
            raise SampleError(key + ext, f"undecodable image: {one_line(exc)}") from exc
        label = self._label(sample, key)
        img = fit_square(img, self.config.image_size, center_crop=self.config.center_crop)
        return pil_to_tensor(img), label

    def _label(self, sample: dict[str, Any], key: str) -> int:
        if self.num_classes is None:
            return NULL_CLASS
        if ".cls" not in sample:
            raise SampleError(key, "no .cls label; data.num_classes is set")
        text = sample[".cls"].read().decode("utf-8", "replace").strip()
        if not text.isdigit() or int(text) >= self.num_classes:
            raise SampleError(
                key + ".cls", f"label {text!r} is not a class 0..{self.num_classes - 1}"
            )
        return int(text)

    def caption(self, index: int) -> str | None:
        """The ``.txt`` caption of sample ``index``, or None when it has none."""
        member = self.members(index).get(".txt")
        return None if member is None else member.read().decode("utf-8")

    def _skip(self, index: int, exc: SampleError) -> None:
        k, _ = self.locate(index)
        if exc.whole_shard:
            self._bad_shards.add(k)
        else:
            self._bad.add(index)
        self.skipped_members.append(exc.where)
        logger.warning("shards: skipped %s; %d skipped so far", exc, self.skipped)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"shards: index {index} out of range for {n} samples")
        i = index % n
        for _ in range(n):
            if i not in self._bad and self.locate(i)[0] not in self._bad_shards:
                try:
                    x, label = self.load(i)
                except SampleError as exc:
                    if self.config.on_error == "fail":
                        raise data_error(exc) from exc
                    self._skip(i, exc)
                else:
                    return random_hflip(x, self.hflip), label
            i = (i + 1) % n
        raise DataError(
            f"shards: none of the {n} samples could be read (e.g. in {self.paths[0]}); "
            f"check the shards of data.shards"
        )


def _close(key: Any, shard: Any) -> None:
    shard.close()


def build_shards(
    config: ShardsConfig, *, root: Path | None = None, train: bool = True
) -> ShardDataset:
    """Build the dataset of the shards ``config.shards`` names (the index is read, or, without
    one, every shard is opened to count its samples).

    Raises:
        DataError: a missing index or shard, or (``on_error = "fail"``) a shard that cannot
            be counted.
    """
    base = Path(root) if root is not None else Path.cwd()
    cache = cache_for(config.cache_dir, config.cache_gb, base)
    if config.shards.endswith(".json"):
        paths, counts = read_index(config.shards, base)
        indexed = True
    else:
        paths = expand(config.shards, base)
        counts = count_samples(paths, config.on_error, cache)
        indexed = False
    if sum(counts) == 0:
        raise DataError(f"shards: the shards of data.shards = {config.shards!r} hold no samples")
    # A worker reads from every shard (random order), or in turn from up to two windows of
    # each of its sub-spans (with one worker, all sub-spans of its rank's spans).
    ranks = int(os.environ.get("WORLD_SIZE", "1") or 1)
    spans = -(-config.spans // ranks) * config.worker_spans
    needed = len(paths) if config.order == "random" else 2 * config.window * spans
    if config.order == "shards" and config.spans % ranks and os.environ.get("RANK", "0") == "0":
        logger.warning(
            "shards: %d ranks do not divide data.spans = %d: ranks share spans and read more "
            "than their share of the shards (still every sample once); set data.spans to a "
            "multiple of the ranks",
            *(ranks, config.spans),
        )
    if min(needed, len(paths)) > config.open_shards:
        logger.warning(
            "shards: %d shards, but each DataLoader worker keeps data.open_shards = %d open: "
            "samples drawn in %s order will often reopen (re-index) a shard; raise "
            "data.open_shards towards %d if the open-file limit allows (ulimit -n)%s",
            len(paths),
            config.open_shards,
            config.order,
            min(needed, len(paths)),
            ', or set data.order = "shards"' if config.order == "random" else "",
        )
    return ShardDataset(paths, counts, config=config, train=train, indexed=indexed, cache=cache)


def shards_facts(config: ShardsConfig) -> dict[str, Any]:
    """The image shape and classes, from the options (no shard is opened)."""
    return {"image_shape": image_shape(config), "num_classes": config.num_classes}


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``shards``."""
    return [
        ComponentSpec(
            kind="data",
            name="shards",
            config=ShardsConfig,
            build=build_shards,
            facts=shards_facts,
            summary="Tar shards in the WebDataset layout (wids random access), resumable.",
        )
    ]
