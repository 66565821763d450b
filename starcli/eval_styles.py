"""Eval figures for style-based families (StarGAN v2): latent and reference guidance.

On held-out faces, for every target domain t, the faces the judge reads in another domain go
through the model two ways:

- latent-guided: `styles` outputs per face, each with a fresh z (seeded by the eval seed, the
  target and the style number); success is the share the judge reads as t. Diversity: the
  mean pairwise L1 between one face's outputs, and per exclusive label group of the judge
  (e.g. the hair colours) the mean number of distinct members it reads among them.
- reference-guided: each face takes the style of a test face the judge reads as t (a fixed
  shuffle, cycled); success as above, plus, per exclusive group, the share of outputs whose
  group member reads the same as the reference's ("the output takes the reference's hair
  colour"), and the identity L1 over the whole image and the outer frame (pose and
  background should stay the source's).

    figures = style_metrics(translator, judge, clf, columns, domains, images, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["style_metrics", "style_pictures", "DEFAULT_STYLES"]

DEFAULT_STYLES = 10  # the StarGAN v2 protocol's outputs per source image


def _group_member(read: np.ndarray, group: Sequence[int]) -> np.ndarray:
    """(N,) which member of `group` the judge reads on (the first one on), -1 for none."""
    sub = read[:, list(group)].astype(bool)
    return np.where(sub.any(1), sub.argmax(1), -1)


def style_metrics(model: Any, judge_space, clf, columns: Sequence[int], domains,
                  images: np.ndarray, *, styles: int = DEFAULT_STYLES, seed: int = 0,
                  batch_size: int = 32) -> dict[str, Any]:
    """The latent and reference figures above for uint8 test images (N, S, S, 3).

    `clf.predict(x)` gives the judge's 0/1 decisions over `judge_space`'s labels, `columns`
    the judge columns of the model's label space (in its order), `domains` the model's
    `Domains`. Returns a JSON-able dict."""
    from starcli.evaluate import identity_l1

    n = len(images)
    xs = [model.to_input(images[i:i + batch_size]) for i in range(0, n, batch_size)]
    read_real = np.concatenate([clf.predict(x.float()).numpy() for x in xs])
    own = domains.assign(read_real[:, list(columns)].astype(np.float32))
    # Label groups that say something about style and are not the domains themselves.
    domain_cols = {judge_space.names[columns[c]] for c in (*domains.columns, *domains.off)}
    groups = {"+".join(g): [judge_space.names.index(m) for m in g]
              for g in judge_space.exclusive_groups
              if not any(m in domain_cols for m in g) and all(m in judge_space.names for m in g)}

    def batches(rows: np.ndarray):
        for i in range(0, len(rows), batch_size):
            part = rows[i:i + batch_size]
            yield part, model.to_input(images[part])

    latent: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    totals = {"lat_hits": 0, "lat_n": 0, "ref_hits": 0, "ref_n": 0}
    div_sum, div_n = 0.0, 0
    distinct = {g: [0.0, 0] for g in groups}
    match = {g: [0, 0] for g in groups}
    id_sum = id_frame = 0.0
    id_n = 0
    for t, name in enumerate(domains.names):
        src = np.flatnonzero((own >= 0) & (own != t))
        pool = np.flatnonzero(own == t)
        if not len(src):
            continue
        hits = 0
        for part, x in batches(src):
            y = torch.full((len(part),), t, dtype=torch.long)
            outs, reads = [], []
            for k in range(styles):
                gen = torch.Generator().manual_seed(
                    (seed * 1_000_003 + t * 10_007 + k) % (2 ** 63))
                # A fresh z per output (each face, each style), as the v2 protocol draws.
                z = torch.randn(len(part), model.latent_dim, generator=gen)
                fake = model.generate_styled(x, model.latent_style(z, y)).float()
                read = clf.predict(fake).numpy()
                hits += int((domains.assign(read[:, list(columns)].astype(np.float32)) == t)
                            .sum())
                outs.append(fake)
                reads.append(read)
            for i in range(styles):
                for j in range(i + 1, styles):
                    d = (outs[i] - outs[j]).abs().flatten(1).mean(1)
                    div_sum += float(d.sum())
                    div_n += len(d)
            for g, members in groups.items():
                picked = np.stack([_group_member(r, members) for r in reads], 1)  # (B, K)
                for row in picked:
                    distinct[g][0] += len(set(row[row >= 0].tolist()))
                    distinct[g][1] += 1
        latent[name] = hits / (len(src) * styles)
        totals["lat_hits"] += hits
        totals["lat_n"] += len(src) * styles
        if not len(pool):
            reference[name] = None
            continue
        order = np.random.default_rng(seed + t).permutation(pool)
        ref_rows = order[np.arange(len(src)) % len(order)]
        hits = 0
        for start in range(0, len(src), batch_size):
            part = src[start:start + batch_size]
            refs = ref_rows[start:start + batch_size]
            x = model.to_input(images[part])
            r = model.to_input(images[refs])
            y = torch.full((len(part),), t, dtype=torch.long)
            fake = model.generate_styled(x, model.reference_style(r, y)).float()
            read = clf.predict(fake).numpy()
            hits += int((domains.assign(read[:, list(columns)].astype(np.float32)) == t).sum())
            whole, edge = identity_l1(x.float(), fake)
            id_sum += float(whole.sum())
            id_frame += float(edge.sum())
            id_n += len(whole)
            for g, members in groups.items():
                want = _group_member(read_real[refs], members)
                got = _group_member(read, members)
                decided = want >= 0
                match[g][0] += int((got[decided] == want[decided]).sum())
                match[g][1] += int(decided.sum())
        reference[name] = hits / len(src)
        totals["ref_hits"] += hits
        totals["ref_n"] += len(src)

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    def mean(values) -> float | None:
        got = [v for v in values if v is not None]
        return sum(got) / len(got) if got else None

    return {
        "styles": styles, "images": n, "domains": list(domains.names),
        # Success is the mean over target domains (an output the judge cannot read, e.g.
        # noise, tends to read as one domain: a pooled share would reward that).
        "latent": {"success": mean(latent.values()),
                   "pooled": ratio(totals["lat_hits"], totals["lat_n"]),
                   "per_domain": latent,
                   "diversity_l1": ratio(div_sum, div_n),
                   "distinct": {g: ratio(*v) for g, v in distinct.items()}},
        "reference": {"success": mean(reference.values()),
                      "pooled": ratio(totals["ref_hits"], totals["ref_n"]),
                      "per_domain": reference,
                      "style_match": {g: ratio(*v) for g, v in match.items()},
                      "identity_l1": ratio(id_sum, id_n),
                      "identity_l1_frame": ratio(id_frame, id_n)},
        "notes": {"success": "mean over target domains of the share of outputs the judge "
                             "reads in the target domain (sources: faces read in another "
                             "domain); pooled: the share over all outputs",
                  "diversity_l1": "mean |G(x, s_i) - G(x, s_j)| over pairs of one face's "
                                  "latent outputs, pixels in [-1, 1]",
                  "distinct": "mean number of distinct group members (e.g. hair colours) "
                              "the judge reads among one face's latent outputs",
                  "style_match": "share of reference-guided outputs whose group member "
                                 "reads as the reference's"},
    }


def style_pictures(model: Any, images: np.ndarray, domains, read: np.ndarray | None = None,
                   *, faces: int = 4, styles: int = 5, seed: int = 0,
                   pad: int = 2) -> dict[str, np.ndarray]:
    """The paper's two figures on test faces, as uint8 pictures (tiles enlarged to at least
    128 px, nearest neighbour): "latent", a row per face and domain (the input, then
    `styles` latent styles; style j is the same z in every row), and "reference", the
    matrix: the faces across the top, other test faces down the left as references, each
    cell a face in a reference's style, read in the domain the reference is in (`read`: each
    image's domain as the judge reads it; without it, D's guess, else domain 0)."""
    if len(images) < 2:
        return {}
    n = min(faces, len(images) // 2)
    src, refs = images[:n], images[n:2 * n]
    x = model.to_input(src)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(styles, model.latent_dim, generator=gen)
    rows = []
    for i in range(n):
        for d in range(len(domains.names)):
            y = torch.full((styles,), d, dtype=torch.long)
            out = model.generate_styled(x[i:i + 1].expand(styles, -1, -1, -1),
                                        model.latent_style(z, y))
            rows.append([src[i], *model.to_uint8(out)])
    pictures = {"latent": _tiles(rows, pad)}
    r = model.to_input(refs)
    blank = np.full_like(src[0], 255)
    matrix = [[blank, *src]]
    for j in range(len(refs)):
        d = int(read[n + j]) if read is not None and read[n + j] >= 0 else \
            _domain_of(model, refs[j:j + 1])
        y = torch.tensor([d])
        s = model.reference_style(r[j:j + 1], y).expand(n, -1)
        matrix.append([refs[j], *model.to_uint8(model.generate_styled(x, s))])
    pictures["reference"] = _tiles(matrix, pad)
    return pictures


def _domain_of(model: Any, ref: np.ndarray) -> int:
    """The domain a reference is read in: D's guess when the checkpoint has D, else 0."""
    if getattr(model, "D", None) is not None:
        return int(model.domain_of(model.to_input(ref))[0])
    return 0


def _tiles(rows: list[list[np.ndarray]], pad: int) -> np.ndarray:
    s = rows[0][0].shape[0]
    k = max(1, -(-128 // s))
    h = len(rows) * (s + pad) + pad
    w = max(len(r) for r in rows) * (s + pad) + pad
    canvas = np.full((h, w, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y0, x0 = pad + i * (s + pad), pad + j * (s + pad)
            canvas[y0:y0 + s, x0:x0 + s] = tile
    return np.repeat(np.repeat(canvas, k, axis=0), k, axis=1)
