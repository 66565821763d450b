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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "ImageSkipped", "InputFile", "Skipped",
           "load_image", "walk_inputs", "centre_square", "printable_path", "Framing",
           "Framings", "crop_box", "jpeg_reduction", "cut_square"]

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
               draft: int | None = None,
               reduce: Callable[[int, int], int] | None = None) -> np.ndarray:
    """Decode `path` into an upright (H, W, 3) uint8 RGB array.

    `draft` lets JPEG decoding scale down by up to 8x while keeping both sides at least
    `draft` pixels (much faster for big photos when only a small crop is needed).
    `reduce(width, height)` instead picks the JPEG scale (1, 2, 4 or 8) from the stored size:
    the decoded image is then ceil(width / r) x ceil(height / r), as libjpeg scales.
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
            elif reduce is not None:
                r = reduce(width, height)
                if r > 1 and im.format == "JPEG":
                    im.draft("RGB", (-(-width // r), -(-height // r)))
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


@dataclass(frozen=True)
class Framing:
    """How a prepared dataset framed its images: the centre square `crop` pixels wide of a
    `source` (width, height) file (None: the largest square), area-resized to `size`.

    Stored in each prepared manifest (``"framing"``) and in every checkpoint's
    ``meta["datasets"]``, so translate frames a raw file the way training saw it. The crop
    is a fraction of the short side, so the same recipe holds for the file at any scale.
    """

    dataset: str
    format: str  # celeba | rafd | folder | ... (the registry's on-disk format)
    source: tuple[int, int] | None  # (width, height) of the dataset's files; None: varied
    crop: int | None  # centre square side in source pixels; None: the short side
    size: int  # the model input side
    resize: str = "area"

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "format": self.format,
                "source": list(self.source) if self.source else None, "crop": self.crop,
                "size": self.size, "resize": self.resize}

    @classmethod
    def from_dict(cls, d: dict) -> Framing:
        source = d.get("source")
        return cls(dataset=str(d.get("dataset", "")), format=str(d.get("format", "")),
                   source=(int(source[0]), int(source[1])) if source else None,
                   crop=int(d["crop"]) if d.get("crop") else None, size=int(d["size"]),
                   resize=str(d.get("resize", "area")))

    @property
    def fraction(self) -> float | None:
        """The crop as a share of the short side (1.0: the largest square); None when the
        crop is in pixels of files of unknown size."""
        if self.crop is None:
            return 1.0
        if self.source is None:
            return None
        return min(1.0, self.crop / min(self.source))

    def fits(self, width: int, height: int) -> bool:
        """True for a file of the dataset's shape (its size, or that size scaled)."""
        if self.source is None:
            return False
        sw, sh = self.source
        return abs(width * sh - height * sw) <= 0.005 * sw * height

    def describe(self) -> str:
        square = f"centre {self.crop}px square" if self.crop else "largest centre square"
        of = f" of {self.source[0]}x{self.source[1]}" if self.source else ""
        return f"{self.dataset}: {square}{of}, {self.resize} resize to {self.size}px"


def crop_box(w: int, h: int, crop: int | None) -> tuple[int, int, int]:
    """(left, top, side) of the centred square: `crop` wide, or the largest that fits."""
    side = min(w, h) if crop is None else min(crop, w, h)
    return (w - side) // 2, (h - side) // 2, side


def jpeg_reduction(w: int, h: int, crop: int | None, size: int) -> int:
    """JPEG DCT scaling (1/2, 1/4, 1/8) for small outputs. The crop must keep at least twice
    `size` pixels at that scale: closer to `size`, scaled decoding drifts visibly from a
    full-size area resize (measured: mean abs error 2.5/255 at 64 px from 178 with r=2)."""
    side = crop_box(w, h, crop)[2]
    for r in (8, 4, 2):
        if side // r >= 2 * size:
            return r
    return 1


def cut_square(arr: np.ndarray, r: int, w: int, h: int, crop: int | None,
               size: int) -> np.ndarray:
    """The centred `crop` square of a (w, h) image decoded at 1/r scale (`arr`), resized
    to size x size with area averaging: prepare's framing, which translate repeats on raw
    files. Channel order is kept (works on RGB and BGR alike)."""
    import cv2

    left, top, side = crop_box(w, h, crop)
    if r == 1:
        arr = arr[top:top + side, left:left + side]
        if side != size:
            arr = cv2.resize(np.ascontiguousarray(arr), (size, size),
                             interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(arr)
    # Decoded at 1/r: the full-size crop box in reduced pixels is fractional; PIL's box
    # filter (area averaging, like INTER_AREA) takes it exactly.
    box = (left / r, top / r, (left + side) / r, (top + side) / r)
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize(
        (size, size), Image.BOX, box=box))


class Framings:
    """Which recipe a raw input gets, from the framings a model was trained with.

    A file of a training dataset's shape (e.g. a 178x218 CelebA-format JPEG, or the same at
    twice the size) gets that dataset's recipe; any other file the largest centre square.
    `crop` (translate's `--crop N`) overrides both with a centre square N pixels wide."""

    def __init__(self, framings: list[Framing], size: int, crop: int | None = None) -> None:
        self.framings = framings
        self.size = size
        self.crop = crop

    @classmethod
    def from_meta(cls, datasets: list[dict] | None, size: int, crop: int | None = None
                  ) -> Framings:
        found = []
        for d in datasets or []:
            if isinstance(d, dict) and isinstance(d.get("framing"), dict):
                try:
                    found.append(Framing.from_dict(d["framing"]))
                except (KeyError, TypeError, ValueError):
                    continue
        return cls(found, size, crop)

    def choose(self, width: int, height: int) -> Framing | None:
        if self.crop is not None:
            return None
        return next((f for f in self.framings if f.fits(width, height)), None)

    def celeba(self) -> Framing | None:
        """The recipe of the model's CelebA-format dataset (what `--align` frames to)."""
        return next((f for f in self.framings if f.format == "celeba"), None)

    def crop_for(self, width: int, height: int) -> tuple[int | None, str]:
        """(centre-square side in this file's pixels (None: the largest), how it frames it:
        the line translate's manifest records)."""
        if self.crop is not None:
            return self.crop, f"--crop {min(self.crop, width, height)}px centre square"
        chosen = self.choose(width, height)
        if chosen is None:
            return None, "largest centre square"
        return round((chosen.fraction or 1.0) * min(width, height)), chosen.describe()

    def load(self, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
             loader: Callable[..., np.ndarray] | None = None) -> tuple[np.ndarray, str]:
        """(size x size x 3 model input, how it was framed) for one raw file: decoded and cut
        exactly as prepare cuts a file of that recipe (same JPEG scaling and resize), so a
        raw CelebA-format file gives the model the pixels it was trained on."""
        header: dict[str, tuple[int, int, int | None]] = {}

        def reduce(w: int, h: int) -> int:
            crop, _ = self.crop_for(w, h)
            header["wh"] = (w, h, crop)
            return jpeg_reduction(w, h, crop, self.size)

        rgb = (loader or load_image)(path, max_pixels=max_pixels, reduce=reduce)
        h, w = rgb.shape[:2]
        w0, h0, _ = header.get("wh", (w, h, None))
        if (w0 >= h0) != (w >= h) and w0 != h0:  # EXIF rotated by 90 degrees
            w0, h0 = h0, w0
        crop, how = self.crop_for(w0, h0)
        r = next((k for k in (8, 4, 2) if w < w0 and -(-w0 // k) == w), 1)
        return cut_square(rgb, r, w0, h0, crop, self.size), how


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
