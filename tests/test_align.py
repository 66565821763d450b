"""Face detection with OpenCV's bundled cascades, CelebA-style cropping and paste-back."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from starcli.align import CELEBA_EYES, Face, FaceAligner, alignment_for, crop, paste_back
from starcli.errors import StarcliError


def drawn_face(size: int = 400, angle: float = 0.0) -> tuple[np.ndarray, tuple, tuple]:
    """A cartoon face the frontal-face cascade detects, on a grey canvas; returns the RGB
    image and the true (left, right) eye centres."""
    s = size / 400
    img = np.full((size, size, 3), 90, np.uint8)
    cx, cy = size // 2, size // 2
    cv2.ellipse(img, (cx, cy), (int(110 * s), int(145 * s)), 0, 0, 360, (200, 170, 150), -1)
    cv2.ellipse(img, (cx, cy - int(95 * s)), (int(115 * s), int(60 * s)), 0, 180, 360,
                (40, 30, 20), -1)
    eyes = []
    for dx in (-45, 45):
        ex, ey = cx + int(dx * s), cy - int(25 * s)
        eyes.append((ex, ey))
        cv2.ellipse(img, (ex, ey - int(22 * s)), (int(28 * s), int(7 * s)), 0, 180, 360,
                    (50, 40, 30), -1)
        cv2.ellipse(img, (ex, ey), (int(22 * s), int(11 * s)), 0, 0, 360, (245, 245, 245), -1)
        cv2.circle(img, (ex, ey), int(9 * s), (40, 30, 20), -1)
    nose = np.array([[cx, cy - int(10 * s)], [cx - int(15 * s), cy + int(35 * s)],
                     [cx + int(15 * s), cy + int(35 * s)]])
    cv2.fillPoly(img, [nose], (170, 140, 120))
    cv2.ellipse(img, (cx, cy + int(70 * s)), (int(40 * s), int(12 * s)), 0, 0, 360,
                (120, 50, 50), -1)
    img = cv2.GaussianBlur(img, (0, 0), 2 * s)
    if angle:
        m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
        img = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REPLICATE)
        eyes = [tuple(m @ np.array([x, y, 1.0])) for x, y in eyes]
    return img, eyes[0], eyes[1]


def on_canvas(face: np.ndarray, top: int = 100, left: int = 200) -> np.ndarray:
    h, w = face.shape[:2]
    canvas = np.full((h + 2 * top, w + 2 * left, 3), 60, np.uint8)
    canvas[top:top + h, left:left + w] = face
    return canvas


def _eye_targets(size: int) -> np.ndarray:
    return np.array(CELEBA_EYES) * size


def test_detects_face_and_eyes_and_frames_them_like_celeba():
    img, left, right = drawn_face(400)
    photo = on_canvas(img)
    aligner = FaceAligner(128)
    found = aligner.align(photo)
    assert found is not None
    square, where = found
    assert square.shape == (128, 128, 3) and square.dtype == np.uint8
    face = where.face
    assert face.eyes_detected and face.faces_found == 1
    true = np.array([[left[0] + 200, left[1] + 100], [right[0] + 200, right[1] + 100]])
    assert np.abs(np.array([face.left_eye, face.right_eye]) - true).max() < 10
    # The detected eyes land exactly on CelebA's mean eye positions in the crop.
    mapped = np.c_[true, np.ones(2)] @ where.matrix.T / where.crop_side * 128
    assert np.abs(mapped - _eye_targets(128)).max() < 128 * 0.04


def test_tilted_face_is_levelled():
    img, left, right = drawn_face(400, angle=12)
    found = FaceAligner(128).align(on_canvas(img))
    assert found is not None
    where = found[1]
    if where.face.eyes_detected:
        true = np.array([[left[0] + 200, left[1] + 100], [right[0] + 200, right[1] + 100]])
        mapped = np.c_[true, np.ones(2)] @ where.matrix.T
        assert abs(mapped[0, 1] - mapped[1, 1]) < where.crop_side * 0.03  # eyes level
    else:  # box fallback: at least no rotation is invented
        assert abs(where.matrix[0, 1]) < 1e-9


def test_small_face_falls_back_to_the_box_estimate():
    img, _, _ = drawn_face(128)
    found = FaceAligner(64).align(on_canvas(img, 40, 60))
    assert found is not None
    assert found[0].shape == (64, 64, 3)


def test_no_face_returns_none():
    flat = np.full((200, 300, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    aligner = FaceAligner(128)
    assert aligner.align(flat) is None
    assert aligner.align(noise) is None


def test_alignment_maps_eyes_exactly_with_rotation():
    face = Face(box=(0, 0, 100, 100), left_eye=(100.0, 200.0), right_eye=(160.0, 240.0),
                eyes_detected=True, faces_found=1)
    where = alignment_for(face, 64)
    pts = np.array([[100, 200, 1], [160, 240, 1]], np.float64) @ where.matrix.T
    assert np.allclose(pts / where.crop_side, np.array(CELEBA_EYES), atol=1e-9)
    # crop side follows the photo's resolution: eye distance / CelebA's eye-distance share
    dist = math.hypot(60, 40)
    assert where.crop_side == round(dist / (CELEBA_EYES[1][0] - CELEBA_EYES[0][0]))


def test_paste_back_round_trip_changes_only_the_face_region():
    img, _, _ = drawn_face(400)
    photo = on_canvas(img)
    square, where = FaceAligner(128).align(photo)
    # Untouched crop pasted back: the photo comes back nearly unchanged.
    same = paste_back(photo, square, where)
    assert same.shape == photo.shape
    assert np.abs(same.astype(int) - photo).mean() < 2.0
    # An inverted crop: the face changes, the far corners are byte-identical.
    changed = paste_back(photo, 255 - square, where)
    x, y, w, h = where.face.box
    cx, cy = x + w // 2, y + h // 2
    assert np.abs(changed[cy, cx].astype(int) - photo[cy, cx]).max() > 100
    assert (changed[:20, :20] == photo[:20, :20]).all()
    assert (changed[-20:, -20:] == photo[-20:, -20:]).all()


def test_feathered_edge_has_no_hard_seam():
    photo = np.zeros((300, 300, 3), np.uint8)
    face = Face(box=(100, 100, 100, 100), left_eye=(120.0, 150.0), right_eye=(180.0, 150.0),
                eyes_detected=True, faces_found=1)
    where = alignment_for(face, 64)
    out = paste_back(photo, np.full((64, 64, 3), 255, np.uint8), where, feather=0.2)
    row = out[150, :, 0].astype(int)
    assert row.max() == 255
    assert np.abs(np.diff(row)).max() < 40  # a ramp, not a step from 0 to 255


def test_crop_helper_matches_alignment_size():
    photo = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    face = Face(box=(100, 60, 120, 120), left_eye=(140.0, 110.0), right_eye=(180.0, 110.0),
                eyes_detected=False, faces_found=1)
    assert crop(photo, alignment_for(face, 32)).shape == (32, 32, 3)


def test_aligner_is_safe_to_share_between_threads():
    img, _, _ = drawn_face(400)
    photo = on_canvas(img)
    aligner = FaceAligner(64)
    expected = aligner.align(photo)[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: aligner.align(photo)[0], range(8)))
    assert all((r == expected).all() for r in results)


def test_missing_cascades_are_reported(monkeypatch):
    import starcli.align as align

    monkeypatch.setattr(align, "cascade_path", lambda name: "/nonexistent/" + name)
    with pytest.raises(StarcliError, match="opencv-python-headless 4"):
        FaceAligner(64)


# OpenCV's warpAffine refuses a source with a side of 32767 px (SHRT_MAX) or more; panoramas
# are wider than that. A 40000 x 64 strip keeps the test small (7.7 MB).
WIDE = 40_000


def _wide_strip(face_size: int = 64, at: int = 35_000) -> np.ndarray:
    strip = np.full((64, WIDE, 3), 60, np.uint8)
    strip[:, :, 0] = (np.arange(WIDE) * 255 // WIDE).astype(np.uint8)  # where am I, in red
    face, _, _ = drawn_face(face_size)
    strip[:face_size, at:at + face_size] = face
    return strip


def test_face_in_a_photo_wider_than_opencv_allows_is_cropped_and_pasted_back():
    strip = _wide_strip()
    found = FaceAligner(64).align(strip)  # cv2.error (-215:Assertion failed) before the fix
    assert found is not None
    square, where = found
    assert square.shape == (64, 64, 3)
    x, y, w, h = where.face.box
    assert 35_000 <= x < 35_064 and w <= 64
    # The same cut from a small photo holding the same pixels: the same crop.
    left = 34_800
    shifted = Face(box=(x - left, y, w, h),
                   left_eye=(where.face.left_eye[0] - left, where.face.left_eye[1]),
                   right_eye=(where.face.right_eye[0] - left, where.face.right_eye[1]),
                   eyes_detected=where.face.eyes_detected, faces_found=1)
    small = crop(strip[:, left:left + 500], alignment_for(shifted, 64))
    assert np.abs(small.astype(int) - square).max() <= 1
    # Paste-back maps the crop to the same place in the full-width photo.
    back = paste_back(strip, 255 - square, where)
    assert back.shape == strip.shape
    cy, cx = y + h // 2, x + w // 2
    assert np.abs(back[cy, cx].astype(int) - strip[cy, cx]).max() > 60
    assert (back[:, :34_000] == strip[:, :34_000]).all()


def test_a_face_wider_than_opencv_allows_is_shrunk_first():
    strip = _wide_strip()
    # Eyes 8000 px apart: the crop's source region is ~36500 px wide, over the limit itself.
    face = Face(box=(16_000, 0, 16_000, 64), left_eye=(20_000.0, 30.0),
                right_eye=(28_000.0, 30.0), eyes_detected=True, faces_found=1)
    where = alignment_for(face, 32)
    square = crop(strip, where)
    assert square.shape == (32, 32, 3)
    # Red encodes x: the crop's columns run left to right across the eyes' span.
    eye_row = round(CELEBA_EYES[0][1] * 32)
    red = square[eye_row, :, 0].astype(int)
    for frac, x in ((CELEBA_EYES[0][0], 20_000), (CELEBA_EYES[1][0], 28_000)):
        assert abs(red[round(frac * 32 - 0.5)] - x * 255 // WIDE) <= 3
