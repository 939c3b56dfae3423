"""Read speed of the ``shards`` data plugin against ``image-folder`` on the same images.

    python benchmarks/bench_shards.py --root /tmp/bench-shards            # one process
    python benchmarks/bench_shards.py --root /tmp/bench-shards --ranks 2  # and 2 ranks (torchrun)
    python benchmarks/bench_shards.py --root /tmp/bench-shards --slow /mnt/slow
    python benchmarks/bench_shards.py --quick                             # a smoke run, ~10 s

It makes ``--images`` PNG images (``--source-size`` pixels, smooth random colours, seeded)
under ``ROOT/images`` once, packs them into ``ROOT/shards`` (``denoisekit data pack``'s
code, 500 per shard), then draws one epoch of batches through the engine's ``BatchStream``
from each reader, for each ``--workers`` count: the time to the first batch (building the
dataset included: listing the folder, reading the shard index or counting the shards) and
images per second after it. With ``--ranks N`` each of N torchrun ranks draws its slice of
every global batch; the figure is all images over the slowest rank's time. ``--slow MOUNT``
also reads ``MOUNT/images`` and ``MOUNT/shards``: a slow view of ROOT, e.g.
``python benchmarks/throttle_fs.py ROOT MOUNT --mbps 40 --latency-ms 4 &``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from denoisekit.engine.batches import BatchStream
from denoisekit.engine.pack import pack_dataset
from denoisekit.plugins.data.image_folder import ImageFolderConfig, build_image_folder
from denoisekit.plugins.data.shards import ShardsConfig, build_shards


def prepare(root: Path, images: int, size: int) -> None:
    """``root/images`` (PNG) and ``root/shards`` (packed from them), made once."""
    from PIL import Image

    folder = root / "images"
    if not folder.is_dir() or len(list(folder.glob("*.png"))) != images:
        folder.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(0)
        for i in range(images):
            small = torch.rand((3, 6, 6), generator=g)
            big = torch.nn.functional.interpolate(small[None], size=(size, size), mode="bicubic")
            pixels = big[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / f"{i:07d}.png")
    if not (root / "shards" / "shardindex.json").exists():
        config = ImageFolderConfig(path=str(folder), image_size=size, hflip=0.0)
        pack_dataset(build_image_folder(config, train=False), root / "shards", per_shard=500)


def warm_up() -> None:
    """Import what the readers import lazily, so the first batch times reading alone."""
    import wids.wids  # noqa: F401
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    pil_to_tensor(Image.new("RGB", (2, 2)))


def readers(base: Path, image_size: int) -> dict[str, object]:
    """The reader configs over ``base`` (ROOT, or its slow mount)."""
    return {
        "image-folder": ImageFolderConfig(path=str(base / "images"), image_size=image_size),
        "shards": ShardsConfig(
            shards=str(base / "shards" / "shardindex.json"), image_size=image_size
        ),
    }


def draw(config: object, *, batch: int, workers: int, rank: int, world: int) -> dict:
    """Build the dataset and draw one epoch; the times."""
    start = time.perf_counter()
    if isinstance(config, ShardsConfig):
        data = build_shards(config, train=True)
    else:
        data = build_image_folder(config, train=True)  # type: ignore[arg-type]
    stream = BatchStream(data, batch_size=batch, seed=0, device=torch.device("cpu"),
                         num_workers=workers, rank=rank, world_size=world)  # fmt: skip
    count = len(data) // batch
    images = next(stream)[0].shape[0]
    first = time.perf_counter()
    for _ in range(count - 1):
        images += next(stream)[0].shape[0]
    end = time.perf_counter()
    return {"first_batch_s": first - start, "rest_s": end - first,
            "images": images, "after_first": images - images // count}  # fmt: skip


def run_all(args: argparse.Namespace, rank: int = 0, world: int = 1) -> list[dict]:
    bases = [("local", args.root)] + ([("slow", args.slow)] if args.slow else [])
    rows = []
    for where, base in bases:
        for name, config in readers(base, args.image_size).items():
            for workers in args.workers:
                times = draw(config, batch=args.batch, workers=workers, rank=rank, world=world)
                rows.append({"reader": name, "where": where, "workers": workers, **times})
    return rows


def summarize(rows: list[dict], world: int) -> list[dict]:
    """Per (reader, where, workers): images/s after the first batch, first-batch time
    (over ranks: all images over the slowest rank)."""
    out: dict[tuple, dict] = {}
    for row in rows:
        key = (row["reader"], row["where"], row["workers"])
        acc = out.setdefault(key, {"images": 0, "rest_s": 0.0, "first_batch_s": 0.0})
        acc["images"] += row["after_first"]
        acc["rest_s"] = max(acc["rest_s"], row["rest_s"])
        acc["first_batch_s"] = max(acc["first_batch_s"], row["first_batch_s"])
    return [
        {
            "reader": r,
            "where": w,
            "workers": k,
            "ranks": world,
            "images_per_s": round(v["images"] / v["rest_s"], 1),
            "first_batch_s": round(v["first_batch_s"], 3),
        }
        for (r, w, k), v in out.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench-shards"))
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--source-size", type=int, default=96)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[0, 2])
    parser.add_argument("--ranks", type=int, default=1)
    parser.add_argument("--slow", type=Path, help="a slow mount of --root (throttle_fs.py)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.source_size, args.image_size, args.batch = 96, 24, 16, 8
        args.workers = [0]
    torch.set_num_threads(1)
    warm_up()
    if args.as_rank:  # one torchrun rank: its rows to ROOT/rank-R.json
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        rows = run_all(args, rank, world)
        (args.root / f"rank-{rank}.json").write_text(json.dumps(rows))
        return 0
    prepare(args.root, args.images, args.source_size)
    results = summarize(run_all(args), 1)
    if args.ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                    f"--nproc_per_node={args.ranks}", "--master_addr=127.0.0.1",
                    "--master_port=29533"]  # fmt: skip
        command = [*launcher, __file__, *(argv or sys.argv[1:]), "--as-rank"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(command, check=True, env=env)
        rows = [r for k in range(args.ranks)
                for r in json.loads((args.root / f"rank-{k}.json").read_text())]  # fmt: skip
        results += summarize(rows, args.ranks)
    for row in results:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
