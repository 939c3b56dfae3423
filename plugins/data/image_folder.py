"""A folder of image files (``type = "image-folder"``).

Finds the image files under ``path`` (relative to the recipe's folder unless absolute) at
build time, by extension, in sorted order; hidden files and folders (names starting with
``.``) are ignored. Each item is read with Pillow when it is fetched, converted to ``mode``,
resized to ``image_size`` × ``image_size`` (antialiased bicubic; center crop or stretch),
flipped left-right with probability ``hflip`` when training, and mapped to [-1, 1].

Labels: ``labels = "none"`` (every label is -1) or ``"subfolders"``: one class per
immediate subfolder of ``path``, in sorted order (as torchvision's ``ImageFolder``).

Unreadable files: found when they are fetched, or all at build time with ``verify = true``
(decodes every file once: thorough, but slow on big folders). ``on_error = "fail"`` raises a
:class:`~denoisekit.errors.DataError` naming the file; ``"skip"`` logs a warning, counts it
(``dataset.skipped``) and returns the next readable image instead. With DataLoader worker
processes each worker keeps its own count; ``verify = true`` gives the full count up front.

Recipe example::

    [data]
    type = "image-folder"
    path = "data/faces"
    image_size = 64
    labels = "subfolders"
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import attrs
import torch

from denoisekit import NULL_CLASS, ComponentSpec, hookimpl
from denoisekit.config import int_at_least, option, unit_interval
from denoisekit.errors import DataError
from denoisekit.plugins.data._transforms import fit_square, pil_to_tensor, random_hflip

logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _check_extensions(inst: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError(f"'{attribute.name}' must list at least one extension, like \".png\"")
    for i, ext in enumerate(value):
        if not (isinstance(ext, str) and ext.startswith(".") and len(ext) > 1):
            raise ValueError(
                f"'{attribute.name}[{i}]' must start with a dot, like \".png\": {ext!r}"
            )


@attrs.frozen(kw_only=True)
class ImageFolderConfig:
    """Options of ``type = "image-folder"``."""

    path: str = option(
        "images", "folder of images, relative to the recipe's folder unless absolute"
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
    recursive: bool = option(True, "also look in subfolders")
    extensions: tuple[str, ...] = option(
        DEFAULT_EXTENSIONS,
        "file extensions to read (any case)",
        validator=_check_extensions,
        converter=tuple,
    )
    labels: str = option(
        "none",
        "none (label -1) or subfolders (one class per subfolder)",
        validator=attrs.validators.in_(("none", "subfolders")),
    )
    on_error: str = option(
        "fail",
        "unreadable file: fail (stop) or skip (warn, count, go on)",
        validator=attrs.validators.in_(("fail", "skip")),
    )
    verify: bool = option(False, "decode every file at start to find unreadable ones early")


# --------------------------------------------------------------------------- file discovery


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _find_images(folder: Path, extensions: frozenset[str], recursive: bool) -> list[Path]:
    """Image files under ``folder`` in sorted order (hidden names skipped)."""
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            base = Path(dirpath)
            found.extend(
                base / f
                for f in sorted(filenames)
                if _visible(f) and os.path.splitext(f)[1].lower() in extensions
            )
    else:
        found = [
            p
            for p in sorted(folder.iterdir())
            if _visible(p.name) and p.suffix.lower() in extensions and p.is_file()
        ]
    return found


def _no_images(folder: Path, config: ImageFolderConfig, why: str = "") -> DataError:
    exts = ", ".join(config.extensions)
    detail = f"{why}; " if why else ""
    return DataError(
        f"image-folder: no images found under {folder} ({detail}extensions {exts}); "
        f"set data.path to a folder of images"
    )


def discover(
    folder: Path, config: ImageFolderConfig
) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The files, their labels (-1 without labels) and the class names of ``folder``.

    Raises:
        DataError: the folder is missing, holds no images, or (with subfolder labels) holds
            images outside class subfolders or an empty class subfolder.
    """
    if not folder.exists():
        raise _no_images(folder, config, "the folder does not exist")
    if not folder.is_dir():
        raise _no_images(folder, config, "it is a file, not a folder")
    extensions = frozenset(e.lower() for e in config.extensions)

    if config.labels == "none":
        files = _find_images(folder, extensions, config.recursive)
        if not files:
            raise _no_images(folder, config)
        return files, [NULL_CLASS] * len(files), ()

    # labels = "subfolders": class i is the i-th immediate subfolder in sorted order.
    loose = _find_images(folder, extensions, recursive=False)
    if loose:
        raise DataError(
            f"image-folder: {len(loose)} images lie directly in {folder} (e.g. {loose[0].name}), "
            f'outside any class subfolder; move them into subfolders or set data.labels = "none"'
        )
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and _visible(p.name)))
    if not classes:
        raise _no_images(folder, config, "no class subfolders")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _find_images(folder / name, extensions, config.recursive)
        if not found:
            exts = ", ".join(config.extensions)
            raise DataError(
                f"image-folder: class folder {folder / name} holds no images (extensions {exts}); "
                f"add images or remove the folder"
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return files, labels, classes


# --------------------------------------------------------------------------- dataset


def image_shape(config: ImageFolderConfig) -> tuple[int, int, int]:
    """``(C, S, S)``: 3 channels for RGB, 1 for L."""
    return (3 if config.mode == "RGB" else 1, config.image_size, config.image_size)


def image_folder_facts(config: ImageFolderConfig) -> dict[str, Any]:
    """The image shape (the file count and classes are known only once the folder is read)."""
    return {"image_shape": image_shape(config)}


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images read from files, as ``(image C×S×S in [-1, 1], label)``.

    Attributes:
        files: the image paths (unreadable ones removed when verified at build).
        num_classes: the number of class subfolders, or ``None`` without labels.
        image_shape: ``(C, S, S)``, ``C`` = 3 for RGB, 1 for L.
        classes: the class names (subfolder names), ``()`` without labels.
        skipped: how many unreadable files this process has skipped.
        skipped_paths: those files.
    """

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        classes: tuple[str, ...],
        *,
        config: ImageFolderConfig,
        train: bool,
    ) -> None:
        self.files = files
        self.labels = labels
        self.classes = classes
        self.num_classes: int | None = len(classes) if classes else None
        self.image_shape: tuple[int, int, int] = image_shape(config)
        self.config = config
        self.hflip = config.hflip if train else 0.0
        self.skipped_paths: list[Path] = []
        self._bad: set[int] = set()

    @property
    def skipped(self) -> int:
        """How many unreadable files this process has skipped."""
        return len(self.skipped_paths)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """Read, convert and resize file ``index`` (no flip); raises PIL's errors as they come."""
        from PIL import Image

        with Image.open(self.files[index]) as img:
            img = img.convert(self.config.mode)  # decodes the whole file
        img = fit_square(img, self.config.image_size, center_crop=self.config.center_crop)
        return pil_to_tensor(img)

    def _skip(self, index: int, exc: Exception) -> None:
        self._bad.add(index)
        self.skipped_paths.append(self.files[index])
        logger.warning(
            "image-folder: skipped unreadable image %s (%s); %d skipped so far",
            self.files[index],
            _one_line(exc),
            self.skipped,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"image-folder: index {index} out of range for {n} images")
        i = index % n
        for _ in range(n):
            if i not in self._bad:
                try:
                    x = self.load(i)
                except Exception as exc:  # PIL raises many types on corrupt data
                    if self.config.on_error == "fail":
                        raise _unreadable(self.files[i], exc) from exc
                    self._skip(i, exc)
                else:
                    return random_hflip(x, self.hflip), self.labels[i]
            i = (i + 1) % n
        raise DataError(
            f"image-folder: none of the {n} images could be read (e.g. {self.files[index]}); "
            f"check the files in data.path"
        )

    def verify_all(self) -> None:
        """Decode every file once; drop unreadable ones (on_error = skip) or raise (fail)."""
        keep_files, keep_labels, bad = [], [], []
        for i, path in enumerate(self.files):
            try:
                self._decode(path)
            except Exception as exc:  # PIL raises many types on corrupt data
                if self.config.on_error == "fail":
                    raise _unreadable(path, exc) from exc
                bad.append((path, exc))
            else:
                keep_files.append(path)
                keep_labels.append(self.labels[i])
        if bad:
            logger.warning(
                "image-folder: skipped %d unreadable image(s): %s",
                len(bad),
                "; ".join(f"{p} ({_one_line(e)})" for p, e in bad[:10])
                + ("; ..." if len(bad) > 10 else ""),
            )
        if not keep_files:
            raise DataError(
                f"image-folder: none of the {len(self.files)} images could be read "
                f"(e.g. {bad[0][0]}); check the files in data.path"
            )
        self.files, self.labels = keep_files, keep_labels
        self.skipped_paths.extend(p for p, _ in bad)

    @staticmethod
    def _decode(path: Path) -> None:
        from PIL import Image

        with Image.open(path) as img:
            img.load()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unreadable(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"image-folder: cannot read {path} ({_one_line(exc)}); fix or remove the file, "
        f'or set data.on_error = "skip"'
    )


def build_image_folder(
    config: ImageFolderConfig, *, root: Path | None = None, train: bool = True
) -> ImageFolderDataset:
    """Build the dataset of the images under ``config.path``.

    Args:
        config: the options.
        root: the recipe's folder, against which a relative ``path`` is resolved
            (the working directory when ``None``).
        train: training (random flips on) or evaluation (off).

    Raises:
        DataError: no images, a bad folder layout, or (``verify = true``, ``on_error =
            "fail"``) an unreadable file.
    """
    folder = Path(config.path).expanduser()
    if not folder.is_absolute():
        folder = (Path(root) if root is not None else Path.cwd()) / folder
    files, labels, classes = discover(folder, config)
    dataset = ImageFolderDataset(files, labels, classes, config=config, train=train)
    if config.verify:
        dataset.verify_all()
    return dataset


@hookimpl
def denoisekit_components() -> list[ComponentSpec]:
    """Register ``image-folder``."""
    return [
        ComponentSpec(
            kind="data",
            name="image-folder",
            config=ImageFolderConfig,
            build=build_image_folder,
            facts=image_folder_facts,
            summary="Image files in a folder (Pillow), optional class-per-subfolder labels.",
        )
    ]
