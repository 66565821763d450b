"""Own photos: find the face, crop it the way CelebA's aligned images are framed, paste back.

Detection uses the Haar cascades that ship inside the opencv-python(-headless) 4.x wheel
(`cv2.data.haarcascades`): no model download at run time. The largest frontal face wins; the
eye cascade is then run inside it. When both eyes are found the crop is a similarity
transform (scale, rotation, shift) that puts them where CelebA's aligned faces have theirs;
otherwise the eyes are estimated from the face box (a fixed box expansion, no rotation).

CelebA framing: StarGAN trains on the centre 178 x 178 square of the 178 x 218 aligned images.
The mean eye centres of the aligned release (list_landmarks_align_celeba.txt) are about
(69, 111) and (108, 111); in that square they sit at x = 0.388 and 0.607, y = 0.511 of the side.

    aligner = FaceAligner(128)
    found = aligner.align(rgb)           # None when no face is found
    if found:
        crop, where = found               # (128, 128, 3) uint8 and how it was cut
        photo = paste_back(rgb, translated_crop, where)
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from starcli.errors import StarcliError

__all__ = ["CELEBA_EYES", "celeba_eyes", "Face", "Alignment", "FaceAligner", "alignment_for",
           "paste_back", "cascade_path"]

# (left eye, right eye) as fractions of the crop side; "left" is the image's left.
CELEBA_EYES = ((69 / 178, 91 / 178), (108 / 178, 91 / 178))


def celeba_eyes(fraction: float = 1.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where CelebA's eyes sit in the centred square that is `fraction` of the 178 square
    (prepare's --crop 150 on CelebA files is 150/178): the same face, cut tighter."""
    f = min(1.0, max(1e-3, float(fraction)))
    margin = (1 - f) / 2
    return tuple(((x - margin) / f, (y - margin) / f) for x, y in CELEBA_EYES)  # type: ignore


# Where the eyes sit inside an OpenCV frontal-face box (fractions of its width and height);
# used when the eye cascade does not find both eyes.
_BOX_EYES = ((0.31, 0.40), (0.69, 0.40))
# Detection runs on a copy whose longer side is at most this (speed; faces stay big enough).
_DETECT_MAX_SIDE = 800
# ... and small images are enlarged to at least this (the cascade's windows start at 24 px).
_DETECT_MIN_SIDE = 256
# The intermediate crop (before resizing to the model size) is never larger than this.
_MAX_CROP = 2048
# The largest side OpenCV's warpAffine/remap accept as a source (it asserts < SHRT_MAX).
_CV_MAX_SIDE = 32766


def cascade_path(name: str) -> str:
    return cv2.data.haarcascades + name


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in original pixels
    left_eye: tuple[float, float]  # eye centres in original pixels (image left / right)
    right_eye: tuple[float, float]
    eyes_detected: bool  # False: the eyes were estimated from the box
    faces_found: int  # how many faces the detector saw (the largest is used)

    def to_dict(self) -> dict:
        return {"box": list(self.box), "left_eye": [round(v, 1) for v in self.left_eye],
                "right_eye": [round(v, 1) for v in self.right_eye],
                "eyes_detected": self.eyes_detected, "faces_found": self.faces_found}


@dataclass(frozen=True)
class Alignment:
    """How a crop was cut: `matrix` (2x3) maps original pixel coordinates to coordinates in
    a `crop_side` square; the model-size crop is that square resized to `size`."""

    face: Face
    matrix: np.ndarray
    crop_side: int
    size: int


def alignment_for(face: Face, size: int,
                  eyes: tuple[tuple[float, float], tuple[float, float]] = CELEBA_EYES
                  ) -> Alignment:
    """The similarity transform that puts `face`'s eyes at `eyes` (fractions of the side)."""
    (lx, ly), (rx, ry) = face.left_eye, face.right_eye
    dist = math.hypot(rx - lx, ry - ly)
    if dist < 1e-6:
        raise ValueError("the two eye positions coincide")
    (tlx, tly), (trx, try_) = eyes
    target_frac = math.hypot(trx - tlx, try_ - tly)
    # Crop at roughly the photo's own resolution, so the final resize only shrinks.
    side = int(min(_MAX_CROP, max(size, round(dist / target_frac))))
    scale = target_frac * side / dist
    angle = math.atan2(ry - ly, rx - lx) - math.atan2(try_ - tly, trx - tlx)
    cos, sin = scale * math.cos(-angle), scale * math.sin(-angle)
    # Rotate+scale about the origin, then shift the eye midpoint onto its target.
    mx, my = (lx + rx) / 2, (ly + ry) / 2
    tx, ty = (tlx + trx) / 2 * side, (tly + try_) / 2 * side
    matrix = np.array([[cos, -sin, tx - (cos * mx - sin * my)],
                       [sin, cos, ty - (sin * mx + cos * my)]], dtype=np.float64)
    return Alignment(face=face, matrix=matrix, crop_side=side, size=size)


class FaceAligner:
    """Detect-and-crop for one model size. Safe to share between threads (each thread gets
    its own cascade objects, which OpenCV does not promise to be thread-safe)."""

    def __init__(self, size: int, eyes=CELEBA_EYES) -> None:
        self.size = size
        self.eyes = eyes
        self._local = threading.local()
        self._cascades()  # fail early (and in the caller's thread) if the files are missing

    def _cascades(self) -> tuple[cv2.CascadeClassifier, cv2.CascadeClassifier]:
        pair = getattr(self._local, "pair", None)
        if pair is None:
            face = cv2.CascadeClassifier(cascade_path("haarcascade_frontalface_default.xml"))
            eye = cv2.CascadeClassifier(cascade_path("haarcascade_eye.xml"))
            if face.empty() or eye.empty():
                raise StarcliError(f"OpenCV's Haar cascades are missing from "
                                   f"{cv2.data.haarcascades}; reinstall "
                                   "opencv-python-headless 4.x (5.x dropped them).")
            pair = self._local.pair = (face, eye)
        return pair

    def detect(self, rgb: np.ndarray) -> Face | None:
        """The largest frontal face, with eye centres (detected or estimated), or None."""
        face_cc, eye_cc = self._cascades()
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        h, w = grey.shape
        scale = min(1.0, _DETECT_MAX_SIDE / max(h, w))
        scale = max(scale, min(2.0, _DETECT_MIN_SIDE / min(h, w)))
        if scale != 1.0:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                              interpolation=interp)
        min_size = (max(24, min(grey.shape) // 12),) * 2
        faces = face_cc.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                         minSize=min_size)
        if len(faces) == 0:
            # Second chance for dim or low-contrast photos.
            grey = cv2.equalizeHist(grey)
            faces = face_cc.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                             minSize=min_size)
        if len(faces) == 0:
            return None
        x, y, fw, fh = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
        eyes = self._eyes(eye_cc, grey, (x, y, fw, fh))
        detected = eyes is not None
        if eyes is None:
            eyes = tuple((x + fx * fw, y + fy * fh) for fx, fy in _BOX_EYES)
        inv = 1.0 / scale
        box = (round(x * inv), round(y * inv), round(fw * inv), round(fh * inv))
        (lx, ly), (rx, ry) = eyes
        return Face(box=box, left_eye=(float(lx * inv), float(ly * inv)),
                    right_eye=(float(rx * inv), float(ry * inv)),
                    eyes_detected=detected, faces_found=len(faces))

    @staticmethod
    def _eyes(eye_cc, grey: np.ndarray, box: tuple[int, int, int, int]):
        """Two plausible eye centres inside the upper part of the face box, or None."""
        x, y, w, h = box
        roi = grey[y:y + int(h * 0.6), x:x + w]
        if roi.size == 0:
            return None
        found = eye_cc.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3,
                                        minSize=(max(8, w // 10),) * 2,
                                        maxSize=(max(9, w // 2),) * 2)
        centres = [(x + ex + ew / 2, y + ey + eh / 2, ew * eh) for ex, ey, ew, eh in found]
        best, best_area = None, -1.0
        for i, a in enumerate(centres):
            for b in centres[i + 1:]:
                left, right = (a, b) if a[0] < b[0] else (b, a)
                dx, dy = right[0] - left[0], right[1] - left[1]
                dist = math.hypot(dx, dy)
                # Eyes: one each side of the box centre, 25-65% of its width apart, level-ish.
                if not (0.25 * w <= dist <= 0.65 * w and abs(dy) <= 0.3 * dist):
                    continue
                if not (left[0] < x + w / 2 < right[0]):
                    continue
                if left[2] + right[2] > best_area:
                    best, best_area = ((left[0], left[1]), (right[0], right[1])), left[2] + right[2]
        return best

    def align(self, rgb: np.ndarray) -> tuple[np.ndarray, Alignment] | None:
        """(size x size x 3 uint8 crop, how it was cut), or None when no face is found."""
        face = self.detect(rgb)
        if face is None:
            return None
        where = alignment_for(face, self.size, self.eyes)
        return crop(rgb, where), where


def _sampled_region(rgb: np.ndarray, matrix: np.ndarray,
                    side: int) -> tuple[np.ndarray, np.ndarray]:
    """(the part of `rgb` a `side` square cut through `matrix` samples, the matrix from that
    part's pixels to the square). OpenCV's warpAffine refuses a source with a side of
    SHRT_MAX (32767) or more, so a panorama is cut down to the face's region first, and that
    region is shrunk when even it is too big. `matrix` (what paste-back uses) is unchanged."""
    h, w = rgb.shape[:2]
    if max(h, w) <= _CV_MAX_SIDE:
        return rgb, matrix
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], np.float64)
    mapped = corners @ cv2.invertAffineTransform(matrix).T
    # A 2-px margin for the interpolation; clipped to the photo, where BORDER_REPLICATE
    # repeats the same edge pixels the full photo would.
    x0 = min(w - 1, max(0, math.floor(mapped[:, 0].min()) - 2))
    y0 = min(h - 1, max(0, math.floor(mapped[:, 1].min()) - 2))
    x1 = max(x0 + 1, min(w, math.ceil(mapped[:, 0].max()) + 3))
    y1 = max(y0 + 1, min(h, math.ceil(mapped[:, 1].max()) + 3))
    region = rgb[y0:y1, x0:x1]
    m = matrix.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    rh, rw = region.shape[:2]
    if max(rh, rw) <= _CV_MAX_SIDE:
        return region, m
    shrink = _CV_MAX_SIDE / max(rh, rw)
    nw, nh = max(1, int(rw * shrink)), max(1, int(rh * shrink))
    region = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
    # Pixel centres: old u + 0.5 = (new u' + 0.5) * rw / nw, and likewise for v.
    fx, fy = rw / nw, rh / nh
    m[:, 2] += m[:, :2] @ np.array([0.5 * fx - 0.5, 0.5 * fy - 0.5])
    m[:, 0] *= fx
    m[:, 1] *= fy
    return region, m


def crop(rgb: np.ndarray, where: Alignment) -> np.ndarray:
    """Cut the aligned square out of `rgb` and resize it to the model size."""
    side = where.crop_side
    source, matrix = _sampled_region(rgb, where.matrix, side)
    square = cv2.warpAffine(source, matrix, (side, side), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    if side != where.size:
        interp = cv2.INTER_AREA if side > where.size else cv2.INTER_CUBIC
        square = cv2.resize(square, (where.size, where.size), interpolation=interp)
    return square


def _feather_mask(side: int, feather: float) -> np.ndarray:
    """(side, side) float32: 1 in the middle, falling smoothly to 0 at the square's edges."""
    ramp = max(1.0, feather * side)
    d = np.arange(side, dtype=np.float32) + 0.5
    edge = np.minimum(d, side - d) / ramp
    edge = np.clip(edge, 0.0, 1.0)
    edge = edge * edge * (3 - 2 * edge)  # smoothstep: no visible kink where the ramp ends
    return np.minimum(edge[:, None], edge[None, :])


def paste_back(original: np.ndarray, translated: np.ndarray, where: Alignment,
               feather: float = 0.1) -> np.ndarray:
    """Blend a translated crop back into the original photo at its own resolution.

    The crop is enlarged to the aligned square's size, mapped back through the inverse of
    the alignment transform and blended with a mask that fades to nothing over the outer
    `feather` share of the square, so no seam shows. Only the face's region is touched.
    """
    h, w = original.shape[:2]
    side = where.crop_side
    big = translated
    if translated.shape[0] != side:
        big = cv2.resize(translated, (side, side), interpolation=cv2.INTER_CUBIC)
    inverse = cv2.invertAffineTransform(where.matrix)
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], np.float64)
    mapped = corners @ inverse.T
    x0 = max(0, math.floor(mapped[:, 0].min()))
    y0 = max(0, math.floor(mapped[:, 1].min()))
    x1 = min(w, math.ceil(mapped[:, 0].max()))
    y1 = min(h, math.ceil(mapped[:, 1].max()))
    out = original.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    # Destination (ROI) pixel -> crop coordinates: the forward matrix, shifted to the ROI.
    m = where.matrix.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    size = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    face = cv2.warpAffine(big, m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(_feather_mask(side, feather), m, size, flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    roi = out[y0:y1, x0:x1].astype(np.float32)
    mask = mask[:, :, None]
    blended = roi * (1.0 - mask) + face.astype(np.float32) * mask
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
