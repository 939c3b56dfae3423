"""shards: an image folder packed with ``denoisekit data pack``, read back through ranks and
workers, resumed exactly, checked without opening a shard, and every bad-shard path."""

from __future__ import annotations

import io
import json
import logging
import textwrap
from pathlib import Path

import attrs
import pytest
import torch
from PIL import Image

from denoisekit.cli import main
from denoisekit.engine.batches import BatchStream
from denoisekit.engine.build import build_run
from denoisekit.engine.loop import train
from denoisekit.errors import DataError
from denoisekit.host.recipe import load_recipe
from denoisekit.plugins.data import shards as shards_mod
from denoisekit.plugins.data.image_folder import ImageFolderConfig, build_image_folder
from denoisekit.plugins.data.shards import ShardsConfig, build_shards

CPU = torch.device("cpu")
CLASSES = 3


def make_folder(root: Path, n: int) -> Path:
    """``n`` 8×8 grey images in 3 class subfolders; pixel (0, 0) is the image's number mod
    256, pixel (0, 1) its number // 256, the rest a pattern (not flip-symmetric)."""
    folder = root / "images"
    for i in range(n):
        pixels = bytearray((i * 7 + 13 * k) % 256 for k in range(64))
        pixels[0], pixels[1] = i % 256, i // 256
        path = folder / f"c{i % CLASSES}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("L", (8, 8), bytes(pixels)).save(path)
    return folder


def folder_config(**options) -> ImageFolderConfig:
    return ImageFolderConfig(path="images", image_size=8, mode="L", labels="subfolders", **options)


def pack(root: Path, n: int, per_shard: int, *extra: str) -> Path:
    """Pack ``make_folder(root, n)`` with the CLI; the shard folder."""
    make_folder(root, n)
    recipe = root / "folder.toml"
    recipe.write_text(
        '[data]\ntype = "image-folder"\npath = "images"\nimage_size = 8\nmode = "L"\n'
        'labels = "subfolders"\n'
    )
    out = root / "shards"
    assert main(["data", "pack", str(recipe), "--out", str(out),
                 "--per-shard", str(per_shard), *extra]) == 0  # fmt: skip
    return out


def shard_config(**options) -> ShardsConfig:
    base = {"shards": "shards/shardindex.json", "image_size": 8, "mode": "L",
            "num_classes": CLASSES, "hflip": 0.0}  # fmt: skip
    return ShardsConfig(**{**base, **options})


def number(images: torch.Tensor) -> list[int]:
    """The image numbers written into pixels (0, 0) and (0, 1) of a batch."""
    levels = images[:, 0, 0, :2].add(1).mul(127.5).round().long()
    return (levels[:, 0] + 256 * levels[:, 1]).tolist()


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """48 images in shards of 5 (10 shards, the last one of 3)."""
    root = tmp_path_factory.mktemp("packed")
    pack(root, 48, 5)
    return root


def test_registration_and_facts() -> None:
    (spec,) = shards_mod.denoisekit_components()
    assert (spec.kind, spec.name) == ("data", "shards")
    facts = spec.facts(shard_config(mode="RGB", image_size=32, num_classes=None))
    assert facts == {"image_shape": (3, 32, 32), "num_classes": None}


# --------------------------------------------------------------------------- pack and read


def test_pack_writes_shards_and_an_index_of_their_counts(packed: Path) -> None:
    index = json.loads((packed / "shards" / "shardindex.json").read_text())
    assert index["wids_version"] == 1
    assert [s["url"] for s in index["shardlist"]] == [f"train-{k:06d}.tar" for k in range(10)]
    assert [s["nsamples"] for s in index["shardlist"]] == [5] * 9 + [3]
    assert sorted(p.name for p in (packed / "shards").glob("*.tar")) == [
        s["url"] for s in index["shardlist"]
    ]


def test_shards_hold_the_folder_images_and_labels_bit_for_bit(packed: Path) -> None:
    folder = build_image_folder(folder_config(hflip=0.0), root=packed, train=False)
    for config in (shard_config(), shard_config(shards="shards/train-{000000..000009}.tar")):
        shards = build_shards(config, root=packed, train=False)
        assert len(shards) == len(folder) == 48
        for i in range(48):
            (x, y), (a, b) = shards[i], folder[i]
            assert torch.equal(x, a) and y == b
    assert shards.caption(4) == folder.classes[folder[4][1]]  # class name as caption


def test_two_ranks_two_workers_read_every_sample_once_per_epoch(packed: Path) -> None:
    data = build_shards(shard_config(), root=packed, train=True)
    streams = [BatchStream(data, batch_size=8, seed=4, device=CPU, num_workers=2,
                           rank=r, world_size=2) for r in range(2)]  # fmt: skip
    epochs = []
    for _ in range(2):
        seen = [n for _ in range(6) for s in streams for n in number(next(s)[0])]
        assert sorted(seen) == list(range(48))  # every sample once, 6 batches of 8
        assert streams[0].state_dict() == streams[1].state_dict()
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # another seeded order next epoch


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_gets_the_same_number_of_batches(packed: Path, world: int) -> None:
    data = build_shards(shard_config(), root=packed, train=True)
    assert len(data) == 48
    uneven = torch.utils.data.Subset(data, range(45))  # 45 = 5 batches of 8, 5 left over
    for rank in range(world):
        stream = BatchStream(uneven, batch_size=8, seed=1, device=CPU, rank=rank,
                             world_size=world)  # fmt: skip
        count = 0
        while True:
            images, _ = next(stream)
            assert images.shape[0] == 8 // world
            if stream.state_dict()["epoch"] == 1:
                break
            count += 1
        assert count == 5, rank


def test_resume_mid_epoch_on_the_same_and_another_world_size(packed: Path) -> None:
    data = build_shards(shard_config(), root=packed, train=True)

    def stream(**kw) -> BatchStream:
        return BatchStream(data, batch_size=8, seed=9, device=CPU, **kw)

    single = stream()
    straight = [next(single) for _ in range(10)]  # crosses into epoch 1 (6 batches each)
    first = stream(num_workers=2)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    assert state == {"epoch": 0, "position": 4}
    again = stream(num_workers=2)
    again.load_state_dict(state)
    ranks = [stream(rank=r, world_size=2, num_workers=2) for r in range(2)]
    for r in ranks:
        r.load_state_dict(state)
    for images, labels in straight[4:]:
        x, y = next(again)
        assert torch.equal(x, images) and torch.equal(y, labels)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), images)
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)


# --------------------------------------------------------------------------- training

RECIPE = """
seed = 2
[data]
{data}
[backbone]
type = "unet"
in_channels = 1
image_size = 8
channels = 8
channel_mults = [1]
num_res_blocks = 1
attention_resolutions = []
groups = 4
num_classes = 3
dropout = 0.0
[schedule]
type = "cosine"
num_timesteps = 20
[sampler]
type = "ddim"
steps = 4
[optimizer]
type = "adamw"
lr = 1e-3
[train]
steps = 4
batch_size = 8
log_every = 2
"""

FOLDER_TABLE = (
    'type = "image-folder"\npath = "images"\nimage_size = 8\nmode = "L"\nlabels = "subfolders"'
)
SHARDS_TABLE = (
    'type = "shards"\nshards = "shards/shardindex.json"\nimage_size = 8\nmode = "L"\n'
    "num_classes = 3"
)


def write_recipe(root: Path, table: str, name: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(textwrap.dedent(RECIPE).replace("{data}", table))
    return path


def weights(run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def test_folder_and_its_shards_train_alike_and_resume_exactly(packed: Path, tmp_path) -> None:
    from_folder = build_run(load_recipe(write_recipe(packed, FOLDER_TABLE, "folder-run")),
                            out_dir=tmp_path / "folder")  # fmt: skip
    train(from_folder)
    recipe = load_recipe(write_recipe(packed, SHARDS_TABLE, "shards-run"))
    from_shards = build_run(recipe, out_dir=tmp_path / "shards")
    train(from_shards)
    a, b = weights(from_folder), weights(from_shards)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same images, flips and order

    half = build_run(recipe, out_dir=tmp_path / "half")
    half = attrs.evolve(
        half, recipe=attrs.evolve(recipe, train=attrs.evolve(recipe.train, steps=2))
    )
    train(half)
    state = half.state_dict()  # as a checkpoint holds it: the global RNG (flips) now
    torch.manual_seed(777)  # disturb the global RNG: resume must restore it
    resumed = build_run(recipe, out_dir=tmp_path / "resumed")
    resumed.load_state_dict(state)
    train(resumed)
    c = weights(resumed)
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_recipe_check_does_not_open_the_shards(tmp_path, capsys) -> None:
    recipe = write_recipe(tmp_path, SHARDS_TABLE.replace("shards/", "nowhere/"), "check")
    assert not (tmp_path / "nowhere").exists()
    assert main(["recipe", "check", str(recipe)]) == 0
    rgb = write_recipe(tmp_path, SHARDS_TABLE.replace('"L"', '"RGB"'), "rgb")
    assert main(["recipe", "check", str(rgb)]) == 2
    assert "backbone.in_channels = 3" in capsys.readouterr().err


# --------------------------------------------------------------------------- pack's safety


def test_pack_refuses_to_overwrite_without_the_flag(tmp_path, capsys) -> None:
    out = pack(tmp_path, 12, 5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    recipe = str(tmp_path / "folder.toml")
    assert main(["data", "pack", recipe, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["data", "pack", recipe, "--out", str(out), "--per-shard", "12",
                 "--overwrite"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["shardindex.json", "train-000000.tar"]
    assert main(["data", "pack", recipe, "--out", str(tmp_path / "new"), "--per-shard", "0"]) == 2
    assert "--per-shard 0: give a positive number" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


class FailingData(torch.utils.data.Dataset):
    """Grey 8×8 images that fail at sample ``fail`` (a data plugin raising mid-pack)."""

    image_shape = (1, 8, 8)

    def __init__(self, n: int, fail: int) -> None:
        self.n, self.fail = n, fail

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if i == self.fail:
            raise DataError(f"sample {i}: unreadable")
        return torch.zeros(1, 8, 8), 0


def test_a_failed_pack_with_overwrite_keeps_the_earlier_pack(tmp_path) -> None:
    from denoisekit.engine.pack import pack_dataset

    out = pack(tmp_path, 12, 5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match="sample 7"):
        pack_dataset(FailingData(12, fail=7), out, per_shard=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old pack whole
    assert [p.name for p in tmp_path.iterdir() if "denoisekit" in p.name] == []  # no staging
    result = pack_dataset(FailingData(3, fail=-1), out, per_shard=2, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "shardindex.json", "train-000000.tar", "train-000001.tar"]  # fmt: skip
    assert result.counts == (2, 1) and all(p.is_file() for p in result.shards)


# --------------------------------------------------------------------------- bad shards


def write_shard(path: Path, samples: list[dict]) -> None:
    import webdataset

    with webdataset.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), value).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def bad(tmp_path) -> Path:
    """good.tar (4 samples), a sample without an image, one not decodable, one without a label,
    and a truncated copy of good.tar."""
    good = [{"__key__": f"g{i}", "png": png(10 * i), "cls": 1} for i in range(4)]
    write_shard(tmp_path / "a-good.tar", good)
    write_shard(tmp_path / "b-members.tar", [
        {"__key__": "ok", "png": png(200), "cls": 2},
        {"__key__": "broken", "png": b"not a png at all", "cls": 0},
        {"__key__": "unlabelled", "png": png(100)},
        {"__key__": "imageless", "cls": 0, "txt": "caption only"},
    ])  # fmt: skip
    data = (tmp_path / "a-good.tar").read_bytes()
    (tmp_path / "c-truncated.tar").write_bytes(data[: len(data) // 2 + 100])
    return tmp_path


def test_fail_names_the_shard_and_the_member(bad: Path) -> None:
    data = build_shards(shard_config(shards="b-members.tar"), root=bad, train=False)
    assert data[0][1] == 2
    for index, member, why in [(1, "broken.png", "undecodable image"),
                               (2, "unlabelled", "no .cls label"),
                               (3, "imageless", "no image member")]:  # fmt: skip
        with pytest.raises(DataError, match=rf"b-members\.tar member {member} \({why}") as info:
            data[index]
        assert "\n" not in str(info.value) and 'on_error = "skip"' in str(info.value)


@pytest.mark.parametrize("cut", [None, 1536, 2048, 3 * 512 + 100])
def test_fail_names_a_truncated_shard(bad: Path, cut: int | None) -> None:
    if cut is not None:  # on a block boundary mid-member or between members; mid-block
        data = (bad / "a-good.tar").read_bytes()
        (bad / "c-truncated.tar").write_bytes(data[:cut])
    with pytest.raises(DataError, match=r"c-truncated\.tar \(truncated tar"):
        build_shards(shard_config(shards="{a-good,c-truncated}.tar"), root=bad)


def test_an_index_disagreeing_with_a_shard_is_a_bad_shard(bad: Path) -> None:
    index = {"wids_version": 1, "shardlist": [{"url": "a-good.tar", "nsamples": 5}]}
    (bad / "index.json").write_text(json.dumps(index))
    data = build_shards(shard_config(shards="index.json"), root=bad)
    with pytest.raises(DataError, match=r"a-good\.tar \(holds 4 samples, the index says 5"):
        data[0]


def test_skip_counts_and_returns_the_next_readable_sample(bad: Path, caplog) -> None:
    config = shard_config(shards="{a-good,b-members,c-truncated}.tar", on_error="skip")
    with caplog.at_level(logging.WARNING):
        data = build_shards(config, root=bad, train=False)
    assert len(data) == 8  # the truncated shard counts no samples
    assert "c-truncated.tar (truncated tar" in caplog.text
    values = [float(data[i][0][0, 0, 0]) for i in range(8)]
    grey = [round((v + 1) * 127.5) for v in values]
    # 0-3 good, 4 ok, 5-7 bad: the next readable sample (wrapping around to the start)
    assert grey == [0, 10, 20, 30, 200, 0, 0, 0]
    assert data.skipped == 3
    assert [m.rsplit("member ", 1)[1] for m in data.skipped_members] == [
        "broken.png",
        "unlabelled",
        "imageless",
    ]


def test_missing_shards_and_index_are_one_line(tmp_path) -> None:
    with pytest.raises(DataError, match=r"2 of the 3 shards .* do not exist .*x-000001\.tar"):
        (tmp_path / "x-000000.tar").write_bytes(b"")
        build_shards(shard_config(shards="x-{000000..000002}.tar"), root=tmp_path)
    with pytest.raises(DataError, match=r"shardindex\.json does not exist; write it with"):
        build_shards(shard_config(), root=tmp_path)


# --------------------------------------------------------------------------- under torchrun


@pytest.mark.slow
def test_two_ranks_with_workers_resume_a_one_process_run_on_shards(packed: Path, tmp_path):
    from tests.test_distributed import _assert_close, _state, torchrun

    table = SHARDS_TABLE + "\nhflip = 0.0"  # flips are drawn per rank: off, to compare
    recipe = write_recipe(packed, table, "dist-shards")
    extra = ["--set", "train.num_workers=2", "--set", "hooks.checkpoint.every=2"]
    single = tmp_path / "single"
    assert main(["train", str(recipe), "--out", str(single), *extra]) == 0
    two = tmp_path / "two"
    result = torchrun("train", str(recipe), "--out", str(two), *extra, "--resume",
                      str(single / "checkpoints" / "step-00000002.pt"), cwd=packed)  # fmt: skip
    assert result.returncode == 0, result.stderr
    one, resumed = (
        _state(single / "checkpoints" / "last.pt"),
        _state(two / "checkpoints" / "last.pt"),
    )
    assert one["step"] == resumed["step"] == 4 and one["data"] == resumed["data"]
    _assert_close(one["model"], resumed["model"])


def test_pack_a_data_type_by_name(tmp_path, capsys) -> None:
    from denoisekit.plugins.data.digits import DigitsConfig, build_digits

    out = tmp_path / "digits"
    assert main(["data", "pack", "digits", "--out", str(out), "--per-shard", "1000"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 1437 samples in 2 shards" in printed and "num_classes = 10" in printed
    data = build_shards(
        shard_config(shards=str(out / "shardindex.json"), num_classes=10), train=False
    )
    digits = build_digits(DigitsConfig())
    assert len(data) == 1437
    for i in (0, 999, 1000, 1436):  # both shards; PNG holds 8-bit grey levels
        (x, y), (a, b) = data[i], digits[i]
        assert y == b and data.caption(i) == str(b)
        torch.testing.assert_close(x, a, atol=0.5 / 127.5 + 1e-6, rtol=0)


def test_more_shards_than_open_shards_is_a_warning(packed: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        data = build_shards(shard_config(open_shards=3), root=packed)
    assert "10 shards, but each DataLoader worker keeps data.open_shards = 3" in caplog.text
    ref = build_shards(shard_config(), root=packed)
    for i in (0, 20, 40, 1, 21):  # shards 0, 4, 8, 0 (reopened), 4
        assert torch.equal(data[i][0], ref[i][0])
