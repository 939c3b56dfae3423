"""Writing a recipe's data as tar shards in the WebDataset layout (``denoisekit data pack``).

Sample ``i`` of the data (of a seeded permutation of it, with ``shuffle``) becomes
``KEY.png`` (8-bit PNG of the image as the data plugin gives it: resized, channels
converted, no random flip), ``KEY.cls`` (its label, when it has one) and ``KEY.txt`` (the
class name, when the data names its classes), with ``KEY`` = ``i`` in 8 digits. The shards
``PREFIX-000000.tar``, ... are written by webdataset's ``ShardWriter``, ``per_shard``
samples each, then ``shardindex.json`` (the wids index: each shard's path and sample
count), which ``type = "shards"`` reads without opening a shard.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit.engine.replace import FolderWriter
from denoisekit.errors import DataError, DenoisekitError, RecipeError
from denoisekit.files import write_bytes

__all__ = ["INDEX_NAME", "PackResult", "check_output", "data_recipe", "pack_dataset"]

#: The index file written next to the shards.
INDEX_NAME = "shardindex.json"


@attrs.frozen
class PackResult:
    """What :func:`pack_dataset` wrote: the index, the shards and their sample counts."""

    index: Path
    shards: tuple[Path, ...]
    counts: tuple[int, ...]
    image_shape: tuple[int, int, int]
    num_classes: int | None

    @property
    def samples(self) -> int:
        """The samples written, all shards together."""
        return sum(self.counts)


def data_recipe(spec: str | Path, overrides: Sequence[str] = ()) -> tuple[Any, Any]:
    """``(recipe, registry)`` for the data of a recipe file (other tables may be left out)
    or of a data type name (``digits``); ``overrides`` apply as ``--set``."""
    from denoisekit.host.recipe import Origins, apply_overrides, recipe_from_data
    from denoisekit.host.recipe_files import read_recipe_data
    from denoisekit.host.registry import load_registry

    path = Path(spec)
    origins = Origins()
    if path.is_file():
        data, origins = read_recipe_data(path)
        source: Path | None = path
        search = [path.parent.resolve()]
    elif "/" in str(spec) or str(spec).endswith(".toml") or path.exists():
        raise DenoisekitError(f"{spec}: no such recipe file (or give a data type name: digits)")
    else:
        data, source, search = {"name": "data", "data": {"type": str(spec)}}, None, []
    data = apply_overrides(data, overrides, origins)
    registry = load_registry(plugins=data.get("plugins", []), search_paths=search)
    try:
        # Only the data table is used: no cross-table checks (it may stand alone).
        recipe = recipe_from_data(data, registry, source=source, origins=origins, check=False)
    except RecipeError as exc:
        raise RecipeError(f"{spec}: {exc}") from exc
    return recipe, registry


def build_unaugmented(recipe: Any, registry: Any, *, train: bool) -> Any:
    """The recipe's data built with random flips off (an ``hflip`` option set to 0)."""
    choice = recipe.data
    config = choice.config
    if attrs.has(type(config)) and "hflip" in attrs.fields_dict(type(config)):
        config = attrs.evolve(config, hflip=0.0)
    return registry.build("data", choice.type, config, root=recipe.root, train=train)


def existing_shards(out: Path, prefix: str) -> list[Path]:
    """The shards and index of an earlier pack in ``out``."""
    if not out.is_dir():
        return []
    found = sorted(out.glob(f"{prefix}-*.tar"))
    index = out / INDEX_NAME
    return [*found, index] if index.exists() else found


def check_output(out: Path, prefix: str, *, per_shard: int, overwrite: bool) -> list[Path]:
    """The files of an earlier pack that ``overwrite`` allows to replace.

    Raises:
        DenoisekitError: ``per_shard`` is not positive, or ``out`` holds an earlier pack
            and ``overwrite`` is false.
    """
    if per_shard < 1:
        raise DenoisekitError(f"--per-shard {per_shard}: give a positive number of samples")
    old = existing_shards(out, prefix)
    if old and not overwrite:
        raise DataError(
            f"{out} already holds {len(old)} shard files of an earlier pack (e.g. {old[0].name}); "
            f"pass --overwrite to replace them, or choose another --out"
        )
    return old


def to_png(image: torch.Tensor) -> bytes:
    """A C×H×W image in [-1, 1] (C = 1 or 3) as 8-bit PNG bytes."""
    from PIL import Image

    pixels = image.detach().cpu().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    array = pixels.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def pack_dataset(
    dataset: Any,
    out: Path,
    *,
    per_shard: int,
    prefix: str = "train",
    overwrite: bool = False,
    num_workers: int = 0,
    shuffle: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Write ``dataset``'s samples as shards of ``per_shard`` samples and an index in ``out``:
    in the dataset's order, or with ``shuffle`` a seed, in a permutation seeded by it (so that
    each shard holds a mix of the data, as a shard-aware order reading few shards at a time
    needs when the data is sorted, e.g. an image folder by class).

    Raises:
        DataError: ``out`` already holds shards or an index of this ``prefix`` (and not
            ``overwrite``), a bad count, or an image that is not 1 or 3 channels.
    """
    import webdataset

    old = check_output(out, prefix, per_shard=per_shard, overwrite=overwrite)
    shape = tuple(dataset.image_shape)
    if shape[0] not in (1, 3):
        raise DataError(f"the data gives {shape[0]}-channel images; shards hold 1 or 3 (PNG)")
    classes = tuple(getattr(dataset, "classes", ()) or ())
    n = len(dataset)
    order = None
    if shuffle is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle)).tolist()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=order, num_workers=num_workers
    )
    # Replace last (engine/replace.py): the new shards and index are written beside ``out``
    # and swapped in once complete; an earlier pack stays whole until then.
    names = [path.name for path in old]
    with FolderWriter(out, names, overwrite=True, what="shards", check=False) as writer:
        staging = writer.staged()
        pattern = f"{prefix}-%06d.tar"
        with webdataset.ShardWriter(str(staging / pattern), maxcount=per_shard, verbose=0) as tar:
            for i, (image, label) in enumerate(loader):
                sample: dict[str, Any] = {"__key__": f"{i:08d}", "png": to_png(image)}
                label = int(label)
                if label >= 0:
                    sample["cls"] = label
                    if label < len(classes):
                        sample["txt"] = str(classes[label])
                tar.write(sample)
                if progress is not None:
                    progress(i + 1, n)
        counts = [min(per_shard, n - start) for start in range(0, n, per_shard)]
        names = [pattern % k for k in range(len(counts))]
        spec = {
            "__kind__": "wids-shard-index-v1",
            "wids_version": 1,
            "name": prefix,
            "shardlist": [
                {"url": name, "nsamples": c, "filesize": (staging / name).stat().st_size}
                for name, c in zip(names, counts, strict=True)
            ],
        }
        write_bytes(staging / INDEX_NAME, (json.dumps(spec, indent=1) + "\n").encode("utf-8"))
        writer.commit()
    shards = tuple(out / name for name in names)
    index = out / INDEX_NAME
    return PackResult(
        index=index,
        shards=shards,
        counts=tuple(counts),
        image_shape=shape,  # type: ignore[arg-type]
        num_classes=getattr(dataset, "num_classes", None),
    )
