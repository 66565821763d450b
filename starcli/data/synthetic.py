"""Built-in synthetic face sets (`demo-celeba`, `demo-rafd`) for demos and tests.

Cartoon faces are drawn with PIL from random parameters and written in exactly the on-disk
formats of the real datasets, so the same parsers read both:

    generate_celeba(Path("data/demo-celeba"), count=4000)  # img_align_celeba/ + 3 list files
    generate_rafd(Path("data/demo-rafd"), subjects=24)  # Rafd090_07_Caucasian_female_happy_left.jpg

Every image depends only on (seed, index) for CelebA or (seed, subject, angle, expression,
gaze) for RaFD, so the output is byte-identical for any `workers` count and after a resumed
run. The rendered attributes are deliberately bold, since the demo trains at 32-64 px on a CPU,
while skin, face shape, framing, background, lighting, noise and JPEG quality vary so that
telling attributes apart still takes a real classifier.

A folder is marked with `synthetic.json`, which records the parameters and is flagged complete
only after the list files are in place. A rerun with the same parameters skips images that
already exist (they are written under a temporary name and renamed, so none is half written).
"""

from __future__ import annotations

import functools
import io
import json
import math
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from starcli.data.celeba_attrs import CELEBA_ATTRIBUTES, HAIR_COLOURS
from starcli.errors import UsageError
from starcli.progress import Progress, progress_task
from starcli.utils import atomic_write_bytes, atomic_write_text

RENDERED_ATTRIBUTES: tuple[str, ...] = (
    *HAIR_COLOURS, "Male", "Young", "Smiling", "Eyeglasses", "Bangs", "Pale_Skin",
)
RAFD_EXPRESSIONS: tuple[str, ...] = (
    "angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised",
)
RAFD_GAZES: tuple[str, ...] = ("left", "frontal", "right")
RAFD_ANGLES: tuple[int, ...] = (0, 45, 90, 135, 180)

CELEBA_SIZE = (178, 218)  # width, height of the aligned CelebA release
RAFD_SIZE = (256, 320)  # a centre crop of 256 holds the whole face
MARKER = "synthetic.json"
LANDMARK_NAMES = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)

# Bump when the drawing changes, so a resumed run never mixes two renderers in one folder.
_RENDER_VERSION = 1
# Separate random streams, so CelebA image i and RaFD subject i share no randomness.
_CELEBA_STREAM, _RAFD_IDENTITY_STREAM, _RAFD_IMAGE_STREAM = 101, 202, 303
# Split sizes of the official list_eval_partition.txt (train, valid; test is the rest).
_CELEBA_TOTAL, _CELEBA_TRAIN, _CELEBA_VALID = 202_599, 162_770, 19_867
_CHUNK = 32  # images per task handed to a worker process

RGB = tuple[int, int, int]
Point = tuple[float, float]

# Priors of the columns that are not drawn: (P(1) for women, P(1) for men).
_UNDRAWN_PRIORS: dict[str, tuple[float, float]] = {
    "5_o_Clock_Shadow": (0.0, 0.25), "Arched_Eyebrows": (0.42, 0.06), "Attractive": (0.65, 0.35),
    "Bags_Under_Eyes": (0.12, 0.30), "Bald": (0.0, 0.05), "Big_Lips": (0.28, 0.20),
    "Big_Nose": (0.12, 0.38), "Blurry": (0.05, 0.05), "Bushy_Eyebrows": (0.08, 0.22),
    "Chubby": (0.03, 0.11), "Double_Chin": (0.03, 0.09), "Goatee": (0.0, 0.14),
    "Heavy_Makeup": (0.66, 0.01), "High_Cheekbones": (0.52, 0.36),
    "Mouth_Slightly_Open": (0.48, 0.48),
    "Mustache": (0.0, 0.09), "Narrow_Eyes": (0.11, 0.12), "Oval_Face": (0.33, 0.22),
    "Pointy_Nose": (0.35, 0.19), "Receding_Hairline": (0.05, 0.12), "Rosy_Cheeks": (0.11, 0.01),
    "Sideburns": (0.0, 0.13), "Straight_Hair": (0.21, 0.21), "Wavy_Hair": (0.45, 0.15),
    "Wearing_Earrings": (0.31, 0.02), "Wearing_Hat": (0.05, 0.05), "Wearing_Lipstick": (0.78, 0.01),
    "Wearing_Necklace": (0.2, 0.01), "Wearing_Necktie": (0.0, 0.16),
}
_BEARD_COLUMNS = ("Goatee", "Mustache", "Sideburns")

# Hair colour ranges (dark end, light end); one point on the segment is picked per face.
_HAIR_RGB: dict[str, tuple[RGB, RGB]] = {
    "Black_Hair": ((22, 19, 19), (48, 40, 38)),
    "Blond_Hair": ((214, 178, 98), (242, 214, 142)),
    "Brown_Hair": ((100, 60, 32), (145, 92, 52)),
    "Gray_Hair": ((150, 150, 153), (200, 200, 203)),
}
# Ordinary skin runs light -> medium -> dark; pale skin is a narrow, almost grey band far above it.
_SKIN_STOPS: tuple[RGB, ...] = ((232, 186, 150), (196, 140, 100), (112, 72, 46))
_PALE_SKIN: tuple[RGB, RGB] = ((238, 224, 218), (250, 238, 232))


@dataclass(frozen=True)
class Face:
    """Everything that decides one picture. Labels are read off it and pixels drawn from it."""

    size: tuple[int, int]  # image width, height
    cx: float  # face centre
    cy: float
    a: float  # half width of the face
    b: float  # half height of the face
    jaw: float  # superellipse exponent of the lower half: 2 = oval, 3 = square jaw
    skin: RGB
    hair: RGB
    long_hair: bool
    hair_volume: float  # how far the hair stands off the head
    hair_length: float  # how far long hair falls below the chin, in units of b
    bangs: bool
    stubble: bool
    wrinkles: bool
    glasses: RGB | None
    iris: RGB
    lips: RGB
    background: tuple[RGB, RGB]  # top and bottom of a vertical gradient
    shirt: RGB
    brow_weight: float  # eyebrow thickness in units of b
    brows: tuple[float, float, float, float]  # inner, outer offset of left, right brow (+ = down)
    eye_open: float  # 1 = relaxed, < 1 narrowed, > 1 wide open
    lid: float  # share of the eye hidden by a lowered upper lid
    gaze: float  # -1 looks to the image's left, +1 to its right
    yaw: float  # -1..1 head turn
    mouth: str  # line, smile, frown, smirk, teeth, snarl, wide or o (see _draw_mouth)
    mouth_width: float  # half width of the mouth in units of a
    mouth_curve: float  # bend of a closed mouth, units of b (+ = corners up)
    smirk_side: int  # -1 or 1: the raised corner of a contemptuous mouth
    nose_wrinkles: bool
    blur: float
    light: tuple[float, float, float]  # brightness, gradient strength, gradient direction
    cast: tuple[float, float, float]  # per-channel gain
    noise: float  # standard deviation of the pixel noise
    noise_seed: int
    quality: int  # JPEG quality


@dataclass(frozen=True)
class _Expression:
    brow_inner: float
    brow_outer: float
    eye_open: float
    lid: float
    mouth: str
    mouth_width: float
    nose_wrinkles: bool = False
    raise_one_brow: float = 0.0  # extra lift of the brow above a smirk's raised corner


# Each expression differs from every other in the mouth and in at least one of brows or eyes.
_EXPRESSIONS: dict[str, _Expression] = {
    "angry": _Expression(0.10, -0.04, 0.7, 0.25, "teeth", 0.34),
    "contemptuous": _Expression(0.0, 0.0, 0.85, 0.15, "smirk", 0.36, raise_one_brow=0.13),
    "disgusted": _Expression(0.07, 0.05, 0.5, 0.0, "snarl", 0.38, nose_wrinkles=True),
    "fearful": _Expression(-0.12, -0.01, 1.5, 0.0, "wide", 0.44),
    "happy": _Expression(-0.02, -0.02, 0.7, 0.0, "smile", 0.48),
    "neutral": _Expression(0.0, 0.0, 1.0, 0.0, "line", 0.32),
    "sad": _Expression(-0.10, 0.06, 0.85, 0.45, "frown", 0.34),
    "surprised": _Expression(-0.15, -0.13, 1.55, 0.0, "o", 0.17),
}


# --------------------------------------------------------------------------------------------
# Sampling


def _mix(c0: Sequence[float], c1: Sequence[float], t: float) -> RGB:
    return tuple(int(round(x0 + (x1 - x0) * t)) for x0, x1 in zip(c0, c1, strict=True))  # type: ignore[return-value]


def _scale(c: Sequence[float], k: float) -> RGB:
    return tuple(int(min(255, max(0, round(x * k)))) for x in c)  # type: ignore[return-value]


def _skin(rng: np.random.Generator, pale: bool, lo: float = 0.0, hi: float = 1.0) -> RGB:
    if pale:
        return _mix(*_PALE_SKIN, rng.random())
    t = rng.uniform(lo, hi) * 2
    return _mix(_SKIN_STOPS[0], _SKIN_STOPS[1], t) if t < 1 else _mix(*_SKIN_STOPS[1:], t - 1)


def _random_colour(rng: np.random.Generator, sat: tuple[float, float],
                   val: tuple[float, float]) -> RGB:
    h, s, v = rng.random(), rng.uniform(*sat), rng.uniform(*val)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return tuple(int(round(255 * x)) for x in rgb)  # type: ignore[return-value]


def _post(rng: np.random.Generator, quality: tuple[int, int], noise: tuple[float, float],
          light: float) -> dict:
    """Photographic nuisances: blur, lighting, colour cast, noise and JPEG quality."""
    return {
        "blur": float(rng.uniform(0.3, 0.8)),
        "light": (float(rng.uniform(1 - light, 1 + light * 0.7)), float(rng.uniform(0, light)),
                  float(rng.uniform(0, 2 * math.pi))),
        "cast": tuple(float(x) for x in rng.uniform(1 - light / 3, 1 + light / 3, 3)),
        "noise": float(rng.uniform(*noise)),
        "noise_seed": int(rng.integers(2**62)),
        "quality": int(rng.integers(quality[0], quality[1] + 1)),
    }


def celeba_sample(seed: int, index: int) -> tuple[dict[str, int], Face]:
    """The 40 labels (values -1/1) and the face drawn for image `index` (1-based)."""
    rng = np.random.default_rng([seed, _CELEBA_STREAM, index])
    male, young = rng.random() < 0.45, rng.random() < 0.55
    # Grey hair is likelier on old faces, as in life, but stays a separate choice.
    hair_p = (0.28, 0.28, 0.28, 0.16) if young else (0.21, 0.21, 0.21, 0.37)
    hair_name = HAIR_COLOURS[int(rng.choice(4, p=hair_p))]
    smiling, glasses = rng.random() < 0.5, rng.random() < 0.35
    bangs, pale = rng.random() < 0.4, rng.random() < 0.35

    labels = {name: int(rng.random() < p[int(male)]) for name, p in _UNDRAWN_PRIORS.items()}
    if not male or young:
        labels["Bald"] = 0
    labels["No_Beard"] = int(not any(labels[c] for c in _BEARD_COLUMNS))
    labels.update({h: int(h == hair_name) for h in HAIR_COLOURS})
    labels.update(Male=int(male), Young=int(young), Smiling=int(smiling),
                  Eyeglasses=int(glasses), Bangs=int(bangs), Pale_Skin=int(pale))
    labels = {name: 2 * labels[name] - 1 for name in CELEBA_ATTRIBUTES}

    a = rng.uniform(50, 64)
    b = min(80.0, a * rng.uniform(1.2, 1.32))
    w, h = CELEBA_SIZE
    face = Face(
        size=CELEBA_SIZE, cx=w / 2 + rng.uniform(-6, 6), cy=112 + rng.uniform(-5, 5), a=a, b=b,
        jaw=rng.uniform(2.5, 3.2) if male else rng.uniform(1.8, 2.2),
        skin=_skin(rng, pale),
        hair=_mix(*_HAIR_RGB[hair_name], rng.random()),
        long_hair=not male, hair_volume=rng.uniform(1.04, 1.13),
        hair_length=rng.uniform(0.15, 0.45),
        bangs=bangs, stubble=male, wrinkles=not young,
        glasses=_random_colour(rng, (0.2, 0.8), (0.05, 0.3)) if glasses else None,
        iris=_random_colour(rng, (0.3, 0.7), (0.25, 0.6)),
        lips=_mix((190, 90, 90), (150, 60, 70), rng.random()),
        background=(_random_colour(rng, (0.05, 0.6), (0.3, 0.95)),
                    _random_colour(rng, (0.05, 0.6), (0.3, 0.95))),
        shirt=_random_colour(rng, (0.0, 0.8), (0.1, 0.9)),
        brow_weight=rng.uniform(0.055, 0.07) if male else rng.uniform(0.035, 0.05),
        brows=tuple(float(x) for x in rng.uniform(-0.02, 0.02, 4)),  # type: ignore[arg-type]
        eye_open=rng.uniform(0.85, 1.1), lid=0.0, gaze=rng.uniform(-0.4, 0.4),
        yaw=rng.uniform(-0.15, 0.15),
        mouth="smile" if smiling else "line",
        mouth_width=rng.uniform(0.38, 0.46) if smiling else rng.uniform(0.27, 0.35),
        mouth_curve=rng.uniform(-0.02, 0.03), smirk_side=1, nose_wrinkles=False,
        **_post(rng, quality=(72, 95), noise=(1.0, 5.0), light=0.15),
    )
    return labels, face


def _rafd_identity(seed: int, subject: int) -> tuple[str, str, Face]:
    """Ethnicity, gender and the fixed look of one RaFD subject (a neutral frontal face)."""
    rng = np.random.default_rng([seed, _RAFD_IDENTITY_STREAM, subject])
    # RaFD's Moroccan models are all adult men; the Caucasian ones are about half women.
    moroccan = rng.random() < 0.27
    male = moroccan or rng.random() < 0.5
    hair_names = ("Black_Hair", "Brown_Hair") if moroccan else HAIR_COLOURS[:3]
    hair_name = hair_names[int(rng.integers(len(hair_names)))]
    a = rng.uniform(78, 86)
    w, h = RAFD_SIZE
    face = Face(
        size=RAFD_SIZE, cx=w / 2, cy=164, a=a, b=a * rng.uniform(1.2, 1.28),
        jaw=rng.uniform(2.4, 3.0) if male else rng.uniform(1.8, 2.2),
        skin=_skin(rng, False, *((0.35, 0.8) if moroccan else (0.0, 0.45))),
        hair=_mix(*_HAIR_RGB[hair_name], rng.random()),
        long_hair=not male and rng.random() < 0.85, hair_volume=rng.uniform(1.04, 1.12),
        hair_length=rng.uniform(0.1, 0.35),
        bangs=False, stubble=male and rng.random() < 0.5, wrinkles=False, glasses=None,
        iris=_random_colour(rng, (0.3, 0.7), (0.2, 0.55)),
        lips=_mix((190, 90, 90), (150, 60, 70), rng.random()),
        background=((242, 242, 242), (242, 242, 242)), shirt=(30, 30, 32),
        brow_weight=rng.uniform(0.055, 0.07) if male else rng.uniform(0.045, 0.055),
        brows=(0.0, 0.0, 0.0, 0.0), eye_open=1.0, lid=0.0, gaze=0.0, yaw=0.0,
        mouth="line", mouth_width=0.32, mouth_curve=0.0,
        smirk_side=1 if rng.random() < 0.5 else -1, nose_wrinkles=False,
        blur=0.5, light=(1.0, 0.0, 0.0), cast=(1.0, 1.0, 1.0), noise=2.0, noise_seed=0,
        quality=92,
    )
    return ("Moroccan" if moroccan else "Caucasian"), ("male" if male else "female"), face


def rafd_sample(seed: int, subject: int, angle: int, expression: str, gaze: str) -> Face:
    """The face drawn for one RaFD file: the subject's look posed as asked, plus jitter."""
    expr_i, gaze_i = RAFD_EXPRESSIONS.index(expression), RAFD_GAZES.index(gaze)
    _, _, base = _rafd_identity(seed, subject)
    rng = np.random.default_rng([seed, _RAFD_IMAGE_STREAM, subject, angle, expr_i, gaze_i])
    e = _EXPRESSIONS[expression]
    side = base.smirk_side
    j = rng.uniform(-0.015, 0.015, 4)
    brows = [e.brow_inner + j[0], e.brow_outer + j[1], e.brow_inner + j[2], e.brow_outer + j[3]]
    if e.raise_one_brow:  # the brow over the raised mouth corner goes up
        k = 0 if side < 0 else 2
        brows[k] -= e.raise_one_brow * 0.6
        brows[k + 1] -= e.raise_one_brow
    grey = rng.uniform(232, 250)
    tint = rng.uniform(-4, 4, 3)
    bg = tuple(int(grey + t) for t in tint)
    return replace(
        base,
        cx=base.cx + rng.uniform(-4, 4), cy=base.cy + rng.uniform(-4, 4),
        a=base.a * rng.uniform(0.97, 1.03),
        background=(bg, bg),  # type: ignore[arg-type]
        brows=tuple(float(x) for x in brows),  # type: ignore[arg-type]
        eye_open=e.eye_open * rng.uniform(0.93, 1.07), lid=e.lid,
        gaze=float(gaze_i - 1), yaw=math.sin(math.radians(angle - 90)),
        mouth=e.mouth, mouth_width=e.mouth_width * rng.uniform(0.94, 1.06),
        mouth_curve=rng.uniform(-0.01, 0.01), nose_wrinkles=e.nose_wrinkles,
        **_post(rng, quality=(85, 95), noise=(1.0, 3.5), light=0.08),
    )


# --------------------------------------------------------------------------------------------
# Drawing


class _Canvas:
    """Face-relative coordinates: u runs -1..1 across the face, v -1..1 from crown to chin."""

    def __init__(self, face: Face) -> None:
        self.f = face
        self.squeeze = 1 - 0.15 * abs(face.yaw)  # a turned head looks narrower

    def at(self, u: float, v: float, depth: float = 1.0) -> Point:
        # Features on the front of the head slide towards the turn; `depth` > 1 for the nose.
        f = self.f
        return (f.cx + f.a * (u * self.squeeze + 0.3 * f.yaw * depth), f.cy + f.b * v)

    def eye_scale(self, side: int) -> float:
        return 1 - 0.3 * max(0.0, self.f.yaw * side)  # the far eye is foreshortened

    def eye(self, side: int) -> tuple[float, float, float, float]:
        x, y = self.at(0.38 * side, -0.06)
        s = self.eye_scale(side)
        return x, y, 0.17 * self.f.a * s, 0.085 * self.f.b * self.f.eye_open


def _outline(cx: float, cy: float, ax: float, by: float, n_top: float, n_low: float,
             t0: float = 0.0, t1: float = 2 * math.pi, k: int = 72) -> list[Point]:
    """Points on a superellipse, upper and lower halves with their own exponents."""
    t = np.linspace(t0, t1, k, endpoint=t1 - t0 < 2 * math.pi)
    c, s = np.cos(t), np.sin(t)
    n = np.where(s > 0, n_low, n_top)
    x = cx + ax * np.sign(c) * np.abs(c) ** (2 / n)
    y = cy + by * np.sign(s) * np.abs(s) ** (2 / n)
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _curve(p0: Point, p1: Point, p2: Point, k: int = 9) -> list[Point]:
    """A quadratic Bezier through p0 and p2, pulled towards p1."""
    out = []
    for i in range(k):
        t = i / (k - 1)
        out.append(((1 - t) ** 2 * p0[0] + 2 * t * (1 - t) * p1[0] + t * t * p2[0],
                    (1 - t) ** 2 * p0[1] + 2 * t * (1 - t) * p1[1] + t * t * p2[1]))
    return out


def _box(x: float, y: float, rx: float, ry: float) -> list[float]:
    return [x - rx, y - ry, x + rx, y + ry]


def _w(px: float) -> int:
    return max(1, int(round(px)))


def _face_outline(c: _Canvas) -> list[Point]:
    f = c.f
    return _outline(f.cx + 0.05 * f.yaw * f.a, f.cy, f.a * c.squeeze, f.b, 2.2, f.jaw)


def _draw_hair_back(d: ImageDraw.ImageDraw, c: _Canvas) -> None:
    f = c.f
    ax, by = f.a * c.squeeze * (f.hair_volume + 0.12), f.b * (f.hair_volume + 0.04)
    cx = f.cx + 0.05 * f.yaw * f.a
    top = _outline(cx, f.cy - 0.05 * f.b, ax, by, 2.3, 2.0, math.pi, 2 * math.pi, 40)
    bottom = f.cy + f.b * (1 + f.hair_length)
    wave = [(cx + ax * 1.04 - i * ax * 2.08 / 6, bottom + (6 if i % 2 else 0)) for i in range(7)]
    d.polygon(top + wave, fill=f.hair)


def _hairline(f: Face, u: float) -> float:
    """Lower edge of the hair on the head at face position u, in units of b."""
    if f.bangs:  # a fringe down to the brows, with a ragged edge
        return -0.37 + 0.45 * u**4 + 0.045 * (0.5 + 0.5 * math.cos(u * math.pi * 9))
    return -0.68 + 0.55 * u**4


def _draw_hair_top(d: ImageDraw.ImageDraw, c: _Canvas) -> None:
    f = c.f
    ax, by = f.a * c.squeeze * f.hair_volume, f.b * (f.hair_volume + 0.02)
    cx = f.cx + 0.05 * f.yaw * f.a
    top = _outline(cx, f.cy, ax, by, 2.3, 2.0, math.pi, 2 * math.pi, 64)
    lower = [(x, max(y, f.cy + f.b * _hairline(f, (x - cx) / ax))) for x, y in top]
    d.polygon(top + lower[::-1], fill=f.hair)


def _draw_wrinkles(d: ImageDraw.ImageDraw, c: _Canvas) -> None:
    f = c.f
    col, w = _scale(f.skin, 0.48), _w(0.04 * f.b)
    for v in (-0.43, -0.51, -0.59):  # forehead; hidden under a fringe
        d.line(_curve(c.at(-0.36, v + 0.02), c.at(0, v - 0.03), c.at(0.36, v + 0.02)), col, w)
    for s in (-1, 1):
        d.line(_curve(c.at(0.2 * s, 0.2), c.at(0.42 * s, 0.34), c.at(0.44 * s, 0.64)), col, w)
        d.line(_curve(c.at(0.4 * s, 0.62), c.at(0.42 * s, 0.72), c.at(0.36 * s, 0.84)), col, w)
        eu = 0.38 * s
        d.line(_curve(c.at(eu - 0.17, 0.06), c.at(eu, 0.16), c.at(eu + 0.17, 0.06)), col, w)
        for dv in (-0.09, 0.0, 0.09):  # crow's feet
            d.line([c.at(0.6 * s, -0.06 + dv / 3), c.at(0.74 * s, -0.06 + dv)], col, w)


def _draw_stubble(d: ImageDraw.ImageDraw, c: _Canvas, outline: list[Point]) -> None:
    # Shadow along the jaw, chin and upper lip; the cheeks above it stay bare.
    f = c.f
    jaw = [p for p in outline if p[1] > f.cy + 0.02 * f.b]
    right = _curve(c.at(0.98, 0.05), c.at(0.5, 0.55), c.at(0.0, 0.36), 6)
    left = [(2 * c.at(0, 0)[0] - x, y) for x, y in right]
    d.polygon(jaw + left + right[-2::-1], fill=_mix(f.skin, (62, 62, 74), 0.4))


def _draw_eye(d: ImageDraw.ImageDraw, c: _Canvas, side: int) -> None:
    f = c.f
    x, y, rx, ry = c.eye(side)
    dark = (35, 28, 28)
    d.ellipse(_box(x, y, rx, ry), fill=(246, 246, 244))
    r_iris = min(0.55 * rx, ry)
    ix = x + f.gaze * (rx - r_iris) * 0.9
    d.ellipse(_box(ix, y, r_iris, r_iris), fill=f.iris)
    d.ellipse(_box(ix, y, r_iris * 0.45, r_iris * 0.45), fill=(15, 12, 12))
    if f.lid > 0:  # a lowered upper lid hides the top of the eye
        delta = math.degrees(math.asin(1 - f.lid))
        d.chord(_box(x, y, rx + 1, ry + 1), 180 + delta, 360 - delta, fill=f.skin)
        yl = y - ry * (1 - f.lid)
        dx = rx * math.cos(math.radians(delta))
        d.line([(x - dx, yl), (x + dx, yl)], dark, _w(0.025 * f.b))
    else:
        d.arc(_box(x, y, rx, ry), 190, 350, dark, _w(0.025 * f.b))


def _draw_brows(d: ImageDraw.ImageDraw, c: _Canvas) -> None:
    f = c.f
    col = _scale(f.hair, 0.55 if sum(f.hair) > 300 else 0.8)
    for k, s in enumerate((-1, 1)):
        inner, outer = f.brows[2 * k], f.brows[2 * k + 1]
        v0 = -0.29
        pts = _curve(c.at(0.14 * s, v0 + inner), c.at(0.4 * s, v0 - 0.06 + (inner + outer) / 2),
                     c.at(0.64 * s, v0 + 0.02 + outer), 7)
        d.line(pts, col, _w(f.brow_weight * f.b), joint="curve")


def _draw_nose(d: ImageDraw.ImageDraw, c: _Canvas) -> None:
    f = c.f
    col, w = _scale(f.skin, 0.7), _w(0.03 * f.b)
    d.line(_curve(c.at(0.04, 0.02, 1.2), c.at(0.1, 0.2, 1.4), c.at(0.04, 0.29, 1.5)), col, w)
    d.line(_curve(c.at(-0.1, 0.27, 1.4), c.at(0.0, 0.33, 1.5), c.at(0.12, 0.27, 1.4)), col, w)
    if f.nose_wrinkles:  # a scrunched nose
        for v in (0.0, 0.07, 0.14):
            d.line([c.at(-0.12, v, 1.2), c.at(0.12, v, 1.2)], _scale(f.skin, 0.55), w)


def _mouth_corners(c: _Canvas) -> tuple[Point, Point]:
    f = c.f
    mw, v = f.mouth_width, 0.55
    lift_l = lift_r = 0.0
    if f.mouth in ("line", "frown", "teeth", "wide"):
        lift_l = lift_r = {"line": f.mouth_curve, "frown": -0.1, "teeth": -0.02,
                           "wide": -0.03}[f.mouth]
    elif f.mouth == "smirk":
        lift_l, lift_r = (0.16, -0.02) if f.smirk_side < 0 else (-0.02, 0.16)
    elif f.mouth == "snarl":
        lift_l = lift_r = -0.06
    return c.at(-mw, v - lift_l), c.at(mw, v - lift_r)


def _draw_mouth(d: ImageDraw.ImageDraw, c: _Canvas) -> None:
    f = c.f
    (xl, yl), (xr, yr) = _mouth_corners(c)
    mx, my = (xl + xr) / 2, f.cy + 0.55 * f.b
    hw = (xr - xl) / 2
    lip_w = _w(0.045 * f.b)
    dark, teeth = (80, 22, 30), (244, 242, 232)
    closed = _mix(f.lips, (60, 18, 24), 0.45)  # a closed mouth must show on any skin
    kind = f.mouth
    if kind == "line":
        d.line(_curve((xl, yl), (mx, my + f.mouth_curve * f.b * 1.5), (xr, yr)), closed, lip_w,
               joint="curve")
    elif kind == "frown":
        d.line(_curve((xl, yl), (mx, my - 0.22 * f.b), (xr, yr)), closed, _w(0.055 * f.b),
               joint="curve")
    elif kind == "smirk":
        up = f.smirk_side
        d.line(_curve((xl, yl), (mx + 0.3 * hw * up, my + 0.04 * f.b), (xr, yr)), closed,
               _w(0.055 * f.b), joint="curve")
        hx, hy = (xr, yr) if up > 0 else (xl, yl)  # a dimple beside the raised corner
        d.line(_curve((hx + 0.03 * f.a * up, hy - 0.1 * f.b), (hx + 0.1 * f.a * up, hy),
                      (hx + 0.03 * f.a * up, hy + 0.1 * f.b)), _scale(f.skin, 0.6), _w(0.03 * f.b))
    elif kind == "smile":
        h = 0.25 * f.b
        d.chord(_box(mx, my, hw, h), 0, 180, fill=dark)
        d.polygon([(xl + 0.1 * hw, my), (xr - 0.1 * hw, my), (xr - 0.3 * hw, my + 0.3 * h),
                   (xl + 0.3 * hw, my + 0.3 * h)], fill=teeth)
        d.arc(_box(mx, my, hw, h), 0, 180, f.lips, lip_w)
        d.line([(xl, my), (xr, my)], f.lips, lip_w)
        for s, (x, y) in ((-1, (xl, my)), (1, (xr, my))):  # cheeks pushed up at the corners
            d.arc(_box(x + 0.05 * f.a * s, y - 0.02 * f.b, 0.06 * f.a, 0.08 * f.b),
                  270 if s > 0 else 90, 90 if s > 0 else 270, _scale(f.skin, 0.7), _w(0.025 * f.b))
    elif kind == "teeth":  # bared, clenched teeth
        h = 0.1 * f.b
        d.rounded_rectangle([xl, my - h, xr, my + h], radius=h * 0.6, fill=teeth,
                            outline=closed, width=lip_w)
        d.line([(xl + lip_w, my), (xr - lip_w, my)], (120, 110, 100), _w(0.015 * f.b))
        for k in range(1, 6):
            x = xl + (xr - xl) * k / 6
            d.line([(x, my - h + lip_w), (x, my + h - lip_w)], (150, 140, 130), 1)
    elif kind == "snarl":  # upper lip pulled up into an arch, upper teeth showing
        h = 0.14 * f.b
        pts = [(xl, yl), (mx - 0.55 * hw, my - h), (mx + 0.55 * hw, my - h), (xr, yr),
               (mx + 0.4 * hw, my + 0.02 * f.b), (mx - 0.4 * hw, my + 0.02 * f.b)]
        d.polygon(pts, fill=dark)
        d.polygon([(mx - 0.55 * hw, my - h), (mx + 0.55 * hw, my - h),
                   (mx + 0.5 * hw, my - 0.35 * h), (mx - 0.5 * hw, my - 0.35 * h)], fill=teeth)
        d.line(pts + [pts[0]], f.lips, lip_w, joint="curve")
    elif kind == "wide":  # stretched open mouth, lower teeth showing
        h = 0.08 * f.b
        box = [xl, my - h, xr, my + h * 1.3]
        d.rounded_rectangle(box, radius=h, fill=dark)
        d.rectangle([xl + 0.25 * hw, my + h * 0.6, xr - 0.25 * hw, my + h * 1.25], fill=teeth)
        d.rounded_rectangle(box, radius=h, outline=f.lips, width=lip_w)
    elif kind == "o":
        oy = my + 0.05 * f.b
        d.ellipse(_box(mx, oy, hw, 0.17 * f.b), fill=dark, outline=f.lips, width=lip_w + 1)
    else:
        raise ValueError(f"unknown mouth {kind!r}")


def _draw_glasses(d: ImageDraw.ImageDraw, c: _Canvas, outline: list[Point]) -> None:
    f = c.f
    col, w = f.glasses, _w(0.05 * f.b)
    edges = []
    for s in (-1, 1):
        x, y, _, _ = c.eye(s)
        rx, ry = 0.27 * f.a * c.eye_scale(s), 0.17 * f.b
        d.rounded_rectangle(_box(x, y, rx, ry), radius=0.08 * f.b, outline=col, width=w)
        edges.append((x - rx * s, x + rx * s, y))
    (li, lo, y), (ri, ro, _) = edges
    d.line([(li, y - 0.04 * f.b), (ri, y - 0.04 * f.b)], col, w)
    xs = [p[0] for p in outline]
    d.line([(lo, y - 0.05 * f.b), (min(xs) + 1, y - 0.08 * f.b)], col, w)
    d.line([(ro, y - 0.05 * f.b), (max(xs) - 1, y - 0.08 * f.b)], col, w)


@functools.lru_cache(maxsize=4)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return (xs / (w - 1) * 2 - 1)[..., None], (ys / (h - 1) * 2 - 1)[..., None]


@functools.lru_cache(maxsize=4)
def _noise_bank(w: int, h: int) -> np.ndarray:
    # Drawing fresh Gaussian noise costs more than the rest of an image; a window at a random
    # offset into one fixed field is just as good for a demo set and stays deterministic.
    return np.random.default_rng(12345).standard_normal((2 * h, 2 * w, 3), np.float32)


def draw_face(f: Face) -> Image.Image:
    """The face as an RGB image, before lighting, noise and JPEG."""
    w, h = f.size
    c = _Canvas(f)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    bg = np.asarray(f.background[0], np.float32) * (1 - t) + np.asarray(f.background[1]) * t
    img = Image.fromarray(np.repeat(bg[:, None, :], w, axis=1).astype(np.uint8))
    d = ImageDraw.Draw(img)
    if f.long_hair:
        _draw_hair_back(d, c)
    neck = _scale(f.skin, 0.86)
    d.rectangle([f.cx - 0.42 * f.a, f.cy + 0.5 * f.b, f.cx + 0.42 * f.a, h], fill=neck)
    d.ellipse([f.cx - 2.0 * f.a, h - 0.42 * f.b, f.cx + 2.0 * f.a, h + 1.3 * f.b], fill=f.shirt)
    d.chord([f.cx - 0.42 * f.a, h - 0.7 * f.b, f.cx + 0.42 * f.a, h - 0.2 * f.b], 0, 180,
            fill=neck)
    outline = _face_outline(c)
    if not f.long_hair:
        for s in (-1, 1):
            x = (max if s > 0 else min)(p[0] for p in outline)
            d.ellipse(_box(x - 0.02 * f.a * s, f.cy, 0.12 * f.a, 0.19 * f.b),
                      fill=_scale(f.skin, 0.92))
    d.polygon(outline, fill=f.skin)
    if f.stubble:
        _draw_stubble(d, c, outline)
    if f.wrinkles:
        _draw_wrinkles(d, c)
    _draw_nose(d, c)
    for s in (-1, 1):
        _draw_eye(d, c, s)
    _draw_brows(d, c)
    _draw_mouth(d, c)
    _draw_hair_top(d, c)
    if f.glasses is not None:
        _draw_glasses(d, c, outline)
    return img


def render_face(f: Face) -> bytes:
    """The finished JPEG bytes of a face: drawing, blur, lighting, colour cast, noise."""
    w, h = f.size
    img = draw_face(f).filter(ImageFilter.BoxBlur(f.blur))
    xs, ys = _grid(w, h)
    bright, strength, angle = f.light
    gain = bright * (1 + strength * (math.cos(angle) * xs + math.sin(angle) * ys))
    arr = np.asarray(img, np.float32)
    arr *= gain * np.asarray(f.cast, np.float32)
    oy, ox = f.noise_seed % h, (f.noise_seed // h) % w
    arr += _noise_bank(w, h)[oy:oy + h, ox:ox + w] * np.float32(f.noise)
    out = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=f.quality)
    return buf.getvalue()


def landmarks(f: Face) -> tuple[int, ...]:
    """Eye centres, nose tip and mouth corners as drawn, in CelebA's column order."""
    c = _Canvas(f)
    (lx, ly, _, _), (rx, ry, _, _) = c.eye(-1), c.eye(1)
    nx, ny = c.at(0.0, 0.31, 1.5)
    (mlx, mly), (mrx, mry) = _mouth_corners(c)
    return tuple(int(round(v)) for v in (lx, ly, rx, ry, nx, ny, mlx, mly, mrx, mry))


# --------------------------------------------------------------------------------------------
# Files


def _write_image(path: Path, f: Face, skip_existing: bool) -> bool:
    if skip_existing and path.exists():
        return False
    atomic_write_bytes(path, render_face(f), durable=False)
    return True


def _celeba_chunk(job: tuple[str, int, int, int, bool]) -> tuple[int, list[str], list[str]]:
    """Render images start..stop-1 into `folder`; returns (rendered, attr lines, landmark lines)."""
    folder, seed, start, stop, skip = job
    rendered, attr_lines, mark_lines = 0, [], []
    for index in range(start, stop):
        labels, face = celeba_sample(seed, index)
        name = f"{index:06d}.jpg"
        rendered += _write_image(Path(folder) / name, face, skip)
        attr_lines.append(name + "".join(f" {labels[k]:2d}" for k in CELEBA_ATTRIBUTES) + "\n")
        mark_lines.append(name + "".join(f" {v:4d}" for v in landmarks(face)) + "\n")
    return rendered, attr_lines, mark_lines


def rafd_name(angle: int, subject: int, ethnicity: str, gender: str, expression: str,
              gaze: str) -> str:
    return f"Rafd{angle:03d}_{subject:02d}_{ethnicity}_{gender}_{expression}_{gaze}.jpg"


def _rafd_chunk(job: tuple[str, int, list[tuple[int, int, str, str]], bool]) -> int:
    folder, seed, items, skip = job
    rendered = 0
    for angle, subject, expression, gaze in items:
        ethnicity, gender, _ = _rafd_identity(seed, subject)
        name = rafd_name(angle, subject, ethnicity, gender, expression, gaze)
        rendered += _write_image(Path(folder) / name, rafd_sample(seed, subject, angle,
                                                                   expression, gaze), skip)
    return rendered


def _run_jobs(func: Callable[[Any], Any], jobs: list, workers: int) -> Iterator[Any]:
    """Results of func over jobs, in order, in this process or a pool of `workers`."""
    if workers <= 0:
        yield from map(func, jobs)
        return
    # fork needs no importable __main__ (spawn fails under `python -c` or a notebook) and starts
    # at once; the workers only use PIL and numpy, so threads the parent may run do not matter.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(min(workers, max(1, len(jobs)))) as pool:
        yield from pool.imap(func, jobs)


def _check_args(seed: int, workers: int) -> None:
    if seed < 0:
        raise UsageError(f"--seed {seed}: use a non-negative integer.")
    if workers < 0:
        raise UsageError(f"--workers {workers}: use 0 (this process) or a positive count.")


def _prepare_root(root: Path, state: dict, ours: list[Path]) -> bool:
    """Create root and decide whether to resume. Refuses folders that starcli did not fill."""
    marker = root / MARKER
    old = None
    if marker.exists():
        try:
            old = json.loads(marker.read_text())
        except (OSError, ValueError):
            old = None
    elif any(p.exists() for p in ours):
        raise UsageError(f"{root} holds files that starcli did not generate (no {MARKER}); "
                         "choose an empty folder for the synthetic set.")
    root.mkdir(parents=True, exist_ok=True)
    resume = isinstance(old, dict) and {k: old.get(k) for k in state} == state
    atomic_write_text(marker, json.dumps({**state, "complete": False}, indent=1) + "\n")
    return resume


def _finish(root: Path, state: dict, summary: dict) -> None:
    atomic_write_text(root / MARKER,
                      json.dumps({**state, "complete": True, **summary}, indent=1) + "\n")


def _remove_stale(folder: Path, pattern: re.Pattern, keep: Callable[[str], bool]) -> None:
    """Delete temp files and generated images that the new parameters no longer produce."""
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp") and pattern.match(name[1:-4]):
            os.unlink(entry.path)
        elif pattern.match(name) and not keep(name):
            os.unlink(entry.path)


def celeba_split_sizes(count: int) -> tuple[int, int, int]:
    """Train, valid and test sizes in the proportions of the official CelebA partition."""
    if count < 3:
        return count, 0, 0
    valid = max(1, round(count * _CELEBA_VALID / _CELEBA_TOTAL))
    train = min(count - valid - 1, round(count * _CELEBA_TRAIN / _CELEBA_TOTAL))
    return train, valid, count - train - valid


def generate_celeba(root: Path, count: int = 4000, seed: int = 0, progress: Progress | None = None,
                    workers: int = 0) -> dict:
    """Write a synthetic CelebA (aligned release layout) of `count` faces under `root`.

    Produces `img_align_celeba/000001.jpg...` (178x218 JPEG), `list_attr_celeba.txt`,
    `list_eval_partition.txt` and `list_landmarks_align_celeba.txt`. The attributes in
    RENDERED_ATTRIBUTES are drawn; the other columns are random labels only.
    """
    _check_args(seed, workers)
    if count < 1:
        raise UsageError(f"--count {count}: generate at least one image.")
    root = Path(root)
    images = root / "img_align_celeba"
    lists = [root / n for n in ("list_attr_celeba.txt", "list_eval_partition.txt",
                                "list_landmarks_align_celeba.txt")]
    state = {"generator": "demo-celeba", "render_version": _RENDER_VERSION, "seed": seed,
             "count": count}
    resume = _prepare_root(root, state, [images, *lists])
    images.mkdir(exist_ok=True)
    _remove_stale(images, re.compile(r"^\d{6}\.jpg$"), lambda n: int(n[:6]) <= count)

    t0 = time.perf_counter()
    jobs = [(str(images), seed, s, min(s + _CHUNK, count + 1), resume)
            for s in range(1, count + 1, _CHUNK)]
    tmps = [p.with_name(f".{p.name}.tmp") for p in lists]
    rendered = 0
    with progress_task(progress, "render demo-celeba", total=count, unit="images") as task, \
            open(tmps[0], "w", newline="\n") as attr, open(tmps[2], "w", newline="\n") as marks:
        attr.write(f"{count}\n{' '.join(CELEBA_ATTRIBUTES)}\n")
        marks.write(f"{count}\n{' '.join(LANDMARK_NAMES)}\n")
        for n, attr_lines, mark_lines in _run_jobs(_celeba_chunk, jobs, workers):
            attr.writelines(attr_lines)
            marks.writelines(mark_lines)
            rendered += n
            task.advance(len(attr_lines))
    train, valid, _ = celeba_split_sizes(count)
    with open(tmps[1], "w", newline="\r\n") as part:  # CRLF, like the original file
        for i in range(1, count + 1):
            part.write(f"{i:06d}.jpg {0 if i <= train else 1 if i <= train + valid else 2}\n")
    for tmp, final in zip(tmps, lists, strict=True):
        os.replace(tmp, final)

    seconds = time.perf_counter() - t0
    summary = {"images": count, "rendered": rendered, "seconds": round(seconds, 3),
               "images_per_s": round(count / max(seconds, 1e-9), 1), "root": str(root)}
    _finish(root, state, summary)
    return summary


_RAFD_NAME = re.compile(
    r"^Rafd(?P<angle>\d{3})_(?P<subject>\d+)_(?P<ethnicity>[A-Za-z]+)_(?P<gender>[a-z]+)"
    r"_(?P<expression>[a-z]+)_(?P<gaze>[a-z]+)\.jpg$")


def generate_rafd(root: Path, subjects: int = 24, seed: int = 0,
                  angles: Sequence[int] = (45, 90, 135), progress: Progress | None = None,
                  workers: int = 0) -> dict:
    """Write a synthetic RaFD of subjects x 8 expressions x 3 gazes x len(angles) faces.

    Files lie flat in `root`, named like the real set (`Rafd090_07_Caucasian_female_happy_
    frontal.jpg`), 256 wide x 320 high with the face centred for a 256 centre crop.
    """
    _check_args(seed, workers)
    angles = tuple(int(a) for a in angles)
    if subjects < 1:
        raise UsageError(f"--subjects {subjects}: generate at least one subject.")
    if not angles or any(a not in RAFD_ANGLES for a in angles) or len(set(angles)) < len(angles):
        raise UsageError(f"angles {angles}: choose distinct values from {RAFD_ANGLES}.")
    root = Path(root)
    items = [(a, s, e, g) for a in angles for s in range(1, subjects + 1)
             for e in RAFD_EXPRESSIONS for g in RAFD_GAZES]
    ids = {s: _rafd_identity(seed, s)[:2] for s in range(1, subjects + 1)}
    names = {rafd_name(a, s, *ids[s], e, g) for a, s, e, g in items}
    state = {"generator": "demo-rafd", "render_version": _RENDER_VERSION, "seed": seed,
             "subjects": subjects, "angles": list(angles)}
    existing = [root / n for n in os.listdir(root)] if root.is_dir() else []
    resume = _prepare_root(root, state, [p for p in existing if _RAFD_NAME.match(p.name)])
    _remove_stale(root, _RAFD_NAME, lambda n: n in names)

    t0 = time.perf_counter()
    jobs = [(str(root), seed, items[i:i + _CHUNK], resume) for i in range(0, len(items), _CHUNK)]
    rendered = 0
    with progress_task(progress, "render demo-rafd", total=len(items), unit="images") as task:
        for job, n in zip(jobs, _run_jobs(_rafd_chunk, jobs, workers), strict=True):
            rendered += n
            task.advance(len(job[2]))
    seconds = time.perf_counter() - t0
    summary = {"images": len(items), "rendered": rendered, "seconds": round(seconds, 3),
               "images_per_s": round(len(items) / max(seconds, 1e-9), 1), "root": str(root)}
    _finish(root, state, summary)
    return summary
