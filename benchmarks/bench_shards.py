"""Read speed of the ``shards`` data plugin against ``image-folder`` on the same images.

    python benchmarks/bench_shards.py --root /tmp/bench-shards            # one process
    python benchmarks/bench_shards.py --root /tmp/bench-shards --ranks 2  # and 2 ranks (torchrun)
    python benchmarks/bench_shards.py --root /tmp/bench-shards --slow /mnt/slow
    python benchmarks/bench_shards.py --quick                             # a smoke run, ~10 s
    python benchmarks/bench_shards.py --root /tmp/bench-many --images 4000 --per-shard 20 \
        --orders random,shards --serve --ranks 2      # 200 shards, both orders, over http too

It makes ``--images`` PNG images (``--source-size`` pixels, smooth random colours, seeded)
under ``ROOT/images`` once, packs them into ``ROOT/shards`` (``denoisekit data pack``'s
code, 500 per shard), then draws one epoch of batches through the engine's ``BatchStream``
from each reader, for each ``--workers`` count: the time to the first batch (building the
dataset included: listing the folder, reading the shard index or counting the shards) and
images per second after it. With ``--ranks N`` each of N torchrun ranks draws its slice of
every global batch; the figure is all images over the slowest rank's time. ``--slow MOUNT``
also reads ``MOUNT/images`` and ``MOUNT/shards``: a slow view of ROOT, e.g.
``python benchmarks/throttle_fs.py ROOT MOUNT --mbps 40 --latency-ms 4 &``. ``--serve``
also reads the shards over http from a local ``http.server`` (127.0.0.1), through a fresh
download cache each time (the downloads are in the times).

``--orders`` picks the shards reader's ``order`` (random, shards; ``--spans``, ``--window``);
``--per-shard`` the pack's shard size (ROOT/shards is re-packed when it differs). Every
shards row also gives ``shards_per_worker``: the most shards one DataLoader worker (or the
main process, with 0 workers) of one rank reads in the epoch, counted from the epoch's
order (a count, not a timing), and ``shards`` the total.
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


def prepare(root: Path, images: int, size: int, per_shard: int = 500) -> None:
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
    index = root / "shards" / "shardindex.json"
    if not index.exists() or json.loads(index.read_text())["shardlist"][0]["nsamples"] != min(
        per_shard, images
    ):
        config = ImageFolderConfig(path=str(folder), image_size=size, hflip=0.0)
        pack_dataset(build_image_folder(config, train=False), root / "shards",
                     per_shard=per_shard, overwrite=True, shuffle=0)  # fmt: skip


def warm_up() -> None:
    """Import what the readers import lazily, so the first batch times reading alone."""
    import wids.wids  # noqa: F401
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    pil_to_tensor(Image.new("RGB", (2, 2)))


def readers(base: str, args: argparse.Namespace, cache: Path) -> dict[str, object]:
    """The reader configs over ``base`` (ROOT, its slow mount, or its http URL)."""
    out: dict[str, object] = {}
    if "://" not in base:
        out["image-folder"] = ImageFolderConfig(path=f"{base}/images", image_size=args.image_size)
    for order in args.orders:
        out[f"shards order={order}"] = ShardsConfig(
            shards=f"{base}/shards/shardindex.json", image_size=args.image_size, order=order,
            spans=args.spans, window=args.window, cache_dir=str(cache),
            open_shards=args.open_shards,
        )  # fmt: skip
    return out


def shards_per_worker(stream: BatchStream, data: object, workers: int) -> int:
    """The most shards one worker of this rank reads in the stream's epoch (batch ``i`` of
    the rank goes to worker ``i mod workers``), from the epoch's order."""
    order, batch, world = stream.epoch_order(), stream.batch_size, stream.world_size
    per_rank, count = batch // world, len(order) // batch
    lo = stream.rank * per_rank
    most = 0
    for w in range(max(workers, 1)):
        shards = {
            data.locate(i)[0]  # type: ignore[attr-defined]
            for b in range(w, count, max(workers, 1))
            for i in order[b * batch + lo : b * batch + lo + per_rank]
        }
        most = max(most, len(shards))
    return most


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
    extra = {}
    if isinstance(config, ShardsConfig):
        stream.epoch = 0  # count from the epoch just drawn (the stream is done with it)
        extra = {"shards_per_worker": shards_per_worker(stream, data, workers),
                 "shards": len(data.counts)}  # type: ignore[attr-defined]  # fmt: skip
    return {"first_batch_s": first - start, "rest_s": end - first,
            "images": images, "after_first": images - images // count, **extra}  # fmt: skip


def run_all(args: argparse.Namespace, rank: int = 0, world: int = 1) -> list[dict]:
    import shutil
    import tempfile

    bases = [("local", str(args.root))] + ([("slow", str(args.slow))] if args.slow else [])
    if args.url:
        bases.append(("http", args.url))
    rows = []
    for where, base in bases:
        for workers in args.workers:
            cache = Path(tempfile.mkdtemp(prefix=f"bench-cache-{rank}-"))  # a fresh cache
            for name, config in readers(base, args, cache).items():
                times = draw(config, batch=args.batch, workers=workers, rank=rank, world=world)
                rows.append({"reader": name, "where": where, "workers": workers, **times})
                shutil.rmtree(cache, ignore_errors=True)
    return rows


def serve(root: Path) -> tuple[str, object]:
    """``root`` served over http on 127.0.0.1 (a thread); its URL and the server."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1"
    return f"http://127.0.0.1:{server.server_address[1]}", server


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
        for count in ("shards_per_worker", "shards"):
            if count in row:
                acc[count] = max(acc.get(count, 0), row[count])
    return [
        {
            "reader": r,
            "where": w,
            "workers": k,
            "ranks": world,
            "images_per_s": round(v["images"] / v["rest_s"], 1),
            "first_batch_s": round(v["first_batch_s"], 3),
            **{c: v[c] for c in ("shards_per_worker", "shards") if c in v},
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
    parser.add_argument("--per-shard", type=int, default=500, help="samples per packed shard")
    parser.add_argument("--orders", type=lambda s: s.split(","), default=["random"],
                        help="the shards reader's orders: random, shards, or both")  # fmt: skip
    parser.add_argument("--spans", type=int, default=8)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--open-shards", type=int, default=64)
    parser.add_argument("--serve", action="store_true", help="also read the shards over http")
    parser.add_argument("--url", help=argparse.SUPPRESS)  # the served root, for the ranks
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
    prepare(args.root, args.images, args.source_size, args.per_shard)
    if args.serve:
        args.url, _server = serve(args.root)
    results = summarize(run_all(args), 1)
    if args.ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                    f"--nproc_per_node={args.ranks}", "--master_addr=127.0.0.1",
                    "--master_port=29533"]  # fmt: skip
        command = [*launcher, __file__, *(argv or sys.argv[1:]), "--as-rank"]
        if args.url:
            command += ["--url", args.url]
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
