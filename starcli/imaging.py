"""Reading whatever images people have: robust decoding and a safe folder walk.

`load_image` turns any readable file into an upright 8-bit RGB array (EXIF rotation applied,
CMYK / palette / alpha / greyscale / 16-bit converted) or raises `ImageSkipped` with a short,
human reason ("truncated or corrupt image", "not an image", "empty file", "too large: ...").
`walk_inputs` expands files and folders into candidate images, recursively, in a stable
order, surviving symlink loops and broken links; everything it will not read is reported
with a reason too, so a caller can list every file it skipped.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "ImageSkipped", "InputFile", "Skipped",
           "load_image", "walk_inputs", "centre_square", "printable_path"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif",
                    ".ppm", ".pgm", ".pnm", ".jfif")
# Pillow's own default: about 89 megapixels (a 9459 x 9459 image), 268 MB once decoded to RGB.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# Our explicit limit below replaces Pillow's warning for images between 1x and 2x its limit.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Background that transparent pixels are composited onto (faces cut out on white are common).
_BACKGROUND = (255, 255, 255)


class ImageSkipped(Exception):
    """A file that cannot be used as an image; `reason` is one short line for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class InputFile:
    """An image to read: where it is and where it sits relative to the input it came from."""

    path: Path  # as found (not resolved: keeps the user's names)
    root: Path  # the INPUT argument it came from (the file itself for a file argument)
    relative: Path  # path relative to root (the file name for a file argument)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


def printable_path(path: Path | str) -> str:
    """`path` as text that is valid UTF-8, for manifests and messages.

    Python keeps the bytes of a file name that is not UTF-8 as lone surrogates, which no
    UTF-8 file (and no strict JSON parser) accepts; each such byte is written as \\xNN
    instead (b"caf\\xe9.jpg" -> "caf\\xe9.jpg"), the same everywhere.
    """
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that did not come from a file name's bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels"


def _too_large(pixels: int, max_pixels: int, dims: tuple[int, int] | None = None
               ) -> ImageSkipped:
    size = f"{dims[0]}x{dims[1]} = " if dims else ""
    return ImageSkipped(
        f"too large: {size}{_megapixels(pixels)}, over the "
        f"{_megapixels(max_pixels)} limit that guards against decompression bombs; "
        "downscale it first")


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # full 16-bit range onto 8 bits (Pillow's convert would clip)
        elif mode == "I":
            # 16-bit PNGs open as "I" on some Pillow versions: scale only when values need it.
            if arr.max(initial=0) > 255:
                arr = arr / 257.0
        elif arr.max(initial=0) <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    # L, 1, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), YCbCr, LAB, HSV, ...
    return np.asarray(im.convert("RGB"))


def load_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft: int | None = None) -> np.ndarray:
    """Decode `path` into an upright (H, W, 3) uint8 RGB array.

    `draft` lets JPEG decoding scale down by up to 8x while keeping both sides at least
    `draft` pixels (much faster for big photos when only a small crop is needed).
    Raises `ImageSkipped` with a one-line reason for anything that is not a readable image.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageSkipped(f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageSkipped("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise _too_large(width * height, max_pixels, (width, height))
            if width < 1 or height < 1:
                raise ImageSkipped(f"image has no pixels ({width}x{height})")
            if draft and im.format == "JPEG":
                # Orientation tags refer to the stored image; scaling does not change them.
                im.draft("RGB", (draft, draft))
            im.load()  # decode now: truncated data fails here, not later
            upright = ImageOps.exif_transpose(im)
            return np.ascontiguousarray(_to_rgb(upright))
    except ImageSkipped:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses at 2x its own limit before we see the size: say the same thing.
        size = _header_size(path)
        if size is not None:
            raise _too_large(size[0] * size[1], max_pixels, size) from None
        # Some readers (GIF frames) check while opening: only Pillow's message has the size.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found:
            raise _too_large(int(found.group(1)), max_pixels) from None
        raise ImageSkipped(f"too large ({exc}); downscale it first") from None
    except UnidentifiedImageError:
        raise ImageSkipped("not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "truncated" in text.lower():
            raise ImageSkipped(f"truncated or corrupt image ({text})") from None
        raise ImageSkipped(f"unreadable image ({text})") from None
    except MemoryError:
        raise ImageSkipped("not enough memory to decode it") from None


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the file header, read by Pillow's format plugins directly (they
    do not apply the decompression-bomb check that `Image.open` does)."""
    Image.init()
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                try:
                    if accept and not accept(prefix):
                        continue
                    fp.seek(0)
                    return factory(fp, str(path)).size
                except (SyntaxError, IndexError, TypeError, ValueError, OSError,
                        struct.error, Image.DecompressionBombError):
                    continue
    except OSError:
        return None
    return None


def centre_square(rgb: np.ndarray) -> np.ndarray:
    """The largest centred square of an (H, W, C) image (a view, no copy)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return rgb[top:top + side, left:left + side]


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def walk_inputs(inputs: Iterable[Path]) -> tuple[list[InputFile], list[Skipped]]:
    """Expand files and folders into image candidates and files skipped with a reason.

    Folders are walked recursively in sorted order, following symlinks to folders but never
    entering the same folder twice (symlink loops end there). A file argument is always a
    candidate; inside folders only names with an image extension are. The same file reached
    twice (for example through a link) is read once. Paths that do not exist are reported as
    skipped; callers that want to refuse them should check first.
    """
    found: list[InputFile] = []
    skipped: list[Skipped] = []
    seen_files: set[tuple[int, int]] = set()
    seen_dirs: set[tuple[int, int]] = set()

    def add_file(path: Path, root: Path, relative: Path) -> None:
        try:
            st = path.stat()
        except OSError as exc:
            reason = "broken symbolic link" if path.is_symlink() else (exc.strerror or str(exc))
            skipped.append(Skipped(path, reason))
            return
        if not stat.S_ISREG(st.st_mode):
            # Never opened: reading a named pipe blocks until someone writes to it.
            kind = "a named pipe" if stat.S_ISFIFO(st.st_mode) else \
                "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
            skipped.append(Skipped(path, f"not a regular file ({kind})"))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_files:
            skipped.append(Skipped(path, "same file as an earlier input (read once)"))
            return
        seen_files.add(key)
        found.append(InputFile(path=path, root=root, relative=relative))

    for arg in inputs:
        arg = Path(arg)
        if arg.is_dir():
            for path in _walk_dir(arg, seen_dirs, skipped):
                if path.is_symlink() and not path.exists():
                    skipped.append(Skipped(path, "broken symbolic link (or a link loop)"))
                elif _is_image_name(path.name):
                    add_file(path, arg, path.relative_to(arg))
                else:
                    skipped.append(Skipped(path, f"not an image file name "
                                                 f"({path.suffix or 'no extension'})"))
        elif arg.exists():
            add_file(arg, arg, Path(arg.name))
        elif arg.is_symlink():
            skipped.append(Skipped(arg, "broken symbolic link"))
        else:
            skipped.append(Skipped(arg, "no such file or folder"))
    return found, skipped


def _walk_dir(root: Path, seen_dirs: set[tuple[int, int]],
              skipped: list[Skipped]) -> Iterator[Path]:
    """Files below root (sorted, depth first), each folder entered at most once."""
    try:
        st = root.stat()
    except OSError as exc:
        skipped.append(Skipped(root, exc.strerror or str(exc)))
        return
    key = (st.st_dev, st.st_ino)
    if key in seen_dirs:
        skipped.append(Skipped(root, "folder already visited (symbolic link loop or repeat)"))
        return
    seen_dirs.add(key)
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        skipped.append(Skipped(root, f"cannot list folder: {exc.strerror or exc}"))
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk_dir(path, seen_dirs, skipped)
        else:
            yield path
