"""image-folder: discovery, conversion, labels, flips and every error path, on files made here."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from denoisekit.errors import DataError
from denoisekit.plugins.data import image_folder as image_folder_mod
from denoisekit.plugins.data.image_folder import ImageFolderConfig, build_image_folder

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
LEVEL = 1 / 127.5  # one grey level in [-1, 1]


def solid(path: Path, color, size=(12, 12), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def stripes(path: Path, colors, width: int = 10, height: int = 10) -> Path:
    """Vertical stripes of ``width`` pixels each, left to right."""
    img = Image.new("RGB", (width * len(colors), height))
    for i, c in enumerate(colors):
        img.paste(c, (i * width, 0, (i + 1) * width, height))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def to_pm1(color) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32) / 127.5 - 1


def build(root: Path, train: bool = True, **options):
    return build_image_folder(ImageFolderConfig(**options), root=root, train=train)


def test_registration() -> None:
    (spec,) = image_folder_mod.denoisekit_components()
    assert (spec.kind, spec.name) == ("data", "image-folder")


# --------------------------------------------------------------------------- reading


def test_png_rgb_values_and_shape(tmp_path: Path) -> None:
    solid(tmp_path / "imgs" / "a.png", (255, 0, 127))
    ds = build(tmp_path, path="imgs", image_size=8, hflip=0.0)
    assert len(ds) == 1 and ds.image_shape == (3, 8, 8) and ds.num_classes is None
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == -1
    want = to_pm1((255, 0, 127)).view(3, 1, 1).expand(3, 8, 8)
    torch.testing.assert_close(x, want, atol=LEVEL, rtol=0)


def test_grey_mode_and_rgb_to_grey(tmp_path: Path) -> None:
    solid(tmp_path / "g.png", 64, mode="L")
    solid(tmp_path / "w.png", WHITE)
    ds = build(tmp_path, path=".", image_size=6, mode="L")
    assert ds.image_shape == (1, 6, 6)
    grey, white = ds[0][0], ds[1][0]
    assert grey.shape == (1, 6, 6)
    torch.testing.assert_close(grey, torch.full((1, 6, 6), 64 / 127.5 - 1), atol=LEVEL, rtol=0)
    torch.testing.assert_close(white, torch.ones(1, 6, 6), atol=LEVEL, rtol=0)


def test_grey_file_read_as_rgb_repeats_channels(tmp_path: Path) -> None:
    solid(tmp_path / "g.png", 200, mode="L")
    x, _ = build(tmp_path, path=".", image_size=4)[0]
    torch.testing.assert_close(x, torch.full((3, 4, 4), 200 / 127.5 - 1), atol=LEVEL, rtol=0)


def test_jpeg(tmp_path: Path) -> None:
    solid(tmp_path / "a.jpg", (200, 40, 90), size=(32, 32))
    x, _ = build(tmp_path, path=".", image_size=16)[0]
    want = to_pm1((200, 40, 90)).view(3, 1, 1).expand(3, 16, 16)
    torch.testing.assert_close(x, want, atol=8 * LEVEL, rtol=0)  # lossy


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    stripes(tmp_path / "s.png", [RED, GREEN, BLUE], width=20, height=20)  # 60×20
    x, _ = build(tmp_path, path=".", image_size=10, hflip=0.0)[0]
    green = to_pm1(GREEN).view(3, 1, 1)
    # As with resize-then-crop, the filter at the crop's edge sees a little of the neighbours.
    torch.testing.assert_close(x[:, :, 1:-1], green.expand(3, 10, 8), atol=LEVEL, rtol=0)
    torch.testing.assert_close(x, green.expand(3, 10, 10), atol=0.15, rtol=0)


def test_stretch_keeps_everything(tmp_path: Path) -> None:
    stripes(tmp_path / "s.png", [RED, GREEN, BLUE], width=20, height=10)  # 60×10
    x, _ = build(tmp_path, path=".", image_size=9, center_crop=False, hflip=0.0)[0]
    assert x.shape == (3, 9, 9)
    torch.testing.assert_close(x[:, :, 0], to_pm1(RED).view(3, 1).expand(3, 9), atol=0.05, rtol=0)
    torch.testing.assert_close(x[:, :, 4], to_pm1(GREEN).view(3, 1).expand(3, 9), atol=0.05, rtol=0)
    torch.testing.assert_close(x[:, :, 8], to_pm1(BLUE).view(3, 1).expand(3, 9), atol=0.05, rtol=0)


def test_hflip_only_when_training(tmp_path: Path) -> None:
    stripes(tmp_path / "s.png", [RED, BLUE], width=4, height=8)  # 8×8: red left, blue right
    flipped, _ = build(tmp_path, path=".", image_size=8, hflip=1.0)[0]
    kept, _ = build(tmp_path, train=False, path=".", image_size=8, hflip=1.0)[0]
    never, _ = build(tmp_path, path=".", image_size=8, hflip=0.0)[0]
    torch.testing.assert_close(kept[:, :, 0], to_pm1(RED).view(3, 1).expand(3, 8))
    torch.testing.assert_close(flipped[:, :, 0], to_pm1(BLUE).view(3, 1).expand(3, 8))
    torch.testing.assert_close(flipped, kept.flip(-1))
    torch.testing.assert_close(never, kept)


# --------------------------------------------------------------------------- discovery


def test_discovery_order_recursion_extensions_hidden(tmp_path: Path) -> None:
    solid(tmp_path / "b.png", RED)
    solid(tmp_path / "a.PNG", RED)  # extensions match in any case
    solid(tmp_path / "sub" / "c.jpeg", RED)
    solid(tmp_path / ".hidden.png", RED)
    solid(tmp_path / ".cache" / "d.png", RED)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = build(tmp_path, path=".")
    assert [p.relative_to(tmp_path).as_posix() for p in ds.files] == [
        "a.PNG",
        "b.png",
        "sub/c.jpeg",
    ]
    flat = build(tmp_path, path=".", recursive=False)
    assert [p.name for p in flat.files] == ["a.PNG", "b.png"]
    only_jpeg = build(tmp_path, path=".", extensions=(".jpeg",))
    assert [p.name for p in only_jpeg.files] == ["c.jpeg"]


def test_absolute_path_ignores_root(tmp_path: Path) -> None:
    solid(tmp_path / "imgs" / "a.png", RED)
    ds = build(tmp_path / "elsewhere", path=str(tmp_path / "imgs"))
    assert len(ds) == 1


def test_subfolder_labels(tmp_path: Path) -> None:
    solid(tmp_path / "dog" / "1.png", BLUE)
    solid(tmp_path / "cat" / "1.png", RED)
    solid(tmp_path / "cat" / "deep" / "2.png", RED)
    ds = build(tmp_path, path=".", labels="subfolders", image_size=4, hflip=0.0)
    assert ds.classes == ("cat", "dog") and ds.num_classes == 2
    assert [ds[i][1] for i in range(len(ds))] == [0, 0, 1]
    torch.testing.assert_close(ds[2][0][:, 0, 0], to_pm1(BLUE))
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    x, y = next(iter(loader))
    assert x.shape == (3, 3, 4, 4) and y.tolist() == [0, 0, 1]


def test_subfolder_labels_not_recursive(tmp_path: Path) -> None:
    solid(tmp_path / "cat" / "1.png", RED)
    solid(tmp_path / "cat" / "deep" / "2.png", RED)
    ds = build(tmp_path, path=".", labels="subfolders", recursive=False)
    assert len(ds) == 1


def test_loose_images_with_subfolder_labels(tmp_path: Path) -> None:
    solid(tmp_path / "cat" / "1.png", RED)
    solid(tmp_path / "stray.png", RED)
    with pytest.raises(DataError, match=r"stray\.png.*data\.labels"):
        build(tmp_path, path=".", labels="subfolders")


def test_empty_class_folder(tmp_path: Path) -> None:
    solid(tmp_path / "cat" / "1.png", RED)
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match="dog holds no images"):
        build(tmp_path, path=".", labels="subfolders")


# --------------------------------------------------------------------------- errors


def test_missing_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build(tmp_path, path="nowhere")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"image-folder: no images found under {tmp_path / 'nowhere'}")
    assert "does not exist" in msg and "set data.path" in msg


def test_empty_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as info:
        build(tmp_path, path="empty")
    msg = str(info.value)
    assert "\n" not in msg
    assert str(tmp_path / "empty") in msg and ".png, .jpg" in msg and "set data.path" in msg


def test_path_is_a_file(tmp_path: Path) -> None:
    f = solid(tmp_path / "a.png", RED)
    with pytest.raises(DataError, match="not a folder"):
        build(tmp_path, path=str(f))


def _corrupt_set(tmp_path: Path) -> Path:
    solid(tmp_path / "a.png", RED)
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    full = solid(tmp_path / "c.png", BLUE, size=(64, 64))
    data = full.read_bytes()
    (tmp_path / "d.png").write_bytes(data[: len(data) // 2])  # truncated
    solid(tmp_path / "e.png", GREEN)
    return tmp_path


@pytest.mark.parametrize("bad", [1, 3])
def test_corrupt_file_fails_with_its_name(tmp_path: Path, bad: int) -> None:
    ds = build(_corrupt_set(tmp_path), path=".")
    ds[0]
    with pytest.raises(DataError) as info:
        ds[bad]
    msg = str(info.value)
    assert "\n" not in msg
    assert str(ds.files[bad]) in msg and "on_error" in msg


def test_corrupt_file_fails_at_build_when_verified(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"b\.png"):
        build(_corrupt_set(tmp_path), path=".", verify=True)


def test_corrupt_file_skipped_lazily(tmp_path: Path, caplog) -> None:
    ds = build(_corrupt_set(tmp_path), path=".", on_error="skip", image_size=4, hflip=0.0)
    assert len(ds) == 5
    with caplog.at_level(logging.WARNING):
        x, _ = ds[1]  # b.png is unreadable: the next readable image (c.png, blue) comes instead
    torch.testing.assert_close(x[:, 0, 0], to_pm1(BLUE))
    assert ds.skipped == 1 and ds.skipped_paths == [tmp_path / "b.png"]
    assert "b.png" in caplog.text
    x, _ = ds[3]  # d.png truncated -> e.png
    torch.testing.assert_close(x[:, 0, 0], to_pm1(GREEN))
    assert ds.skipped == 2
    ds[1]  # a known-bad file is not counted twice
    assert ds.skipped == 2


def test_corrupt_file_skipped_at_build_when_verified(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        ds = build(_corrupt_set(tmp_path), path=".", on_error="skip", verify=True)
    assert [p.name for p in ds.files] == ["a.png", "c.png", "e.png"]
    assert ds.skipped == 2
    assert "2 unreadable" in caplog.text and "d.png" in caplog.text
    assert all(ds[i][0].shape == (3, 64, 64) for i in range(len(ds)))


def test_all_corrupt_with_skip(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"nope")
    (tmp_path / "b.png").write_bytes(b"nope")
    ds = build(tmp_path, path=".", on_error="skip")
    with pytest.raises(DataError, match="none of the 2 images"):
        ds[0]
    with pytest.raises(DataError, match="none of the 2 images"):
        build(tmp_path, path=".", on_error="skip", verify=True)


def test_index_out_of_range(tmp_path: Path) -> None:
    solid(tmp_path / "a.png", RED)
    ds = build(tmp_path, path=".")
    with pytest.raises(IndexError):
        ds[1]
    assert ds[-1][0].shape == ds[0][0].shape


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mode", "CMYK"),
        ("on_error", "ignore"),
        ("labels", "folders"),
        ("extensions", ("png",)),
        ("extensions", ()),
        ("hflip", 1.5),
        ("image_size", 0),
    ],
)
def test_options_rejected(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"'{field}"):
        ImageFolderConfig(**{field: value})


def test_facts_state_the_image_shape(tmp_path: Path) -> None:
    (spec,) = image_folder_mod.denoisekit_components()
    solid(tmp_path / "img" / "a.png", (1, 2, 3), size=(10, 12))
    for mode, size in (("RGB", 8), ("L", 6)):
        config = ImageFolderConfig(path="img", mode=mode, image_size=size)
        ds = build_image_folder(config, root=tmp_path)
        assert (
            spec.facts(config)
            == {"image_shape": ds.image_shape}
            == {"image_shape": tuple(ds[0][0].shape)}
        )
