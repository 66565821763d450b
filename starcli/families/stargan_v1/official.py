"""Convert the official StarGAN v1 checkpoints (yunjey/stargan `*-G.ckpt`, `*-D.ckpt`) to our
`Generator`/`Discriminator` state_dicts and back.

The official modules keep every layer in one ``nn.Sequential`` called ``main`` whose indices
count the activations too:

- G: ``main.0`` conv7x7, ``main.1`` IN, ``main.3``/``main.6`` down convs with IN at ``.4``/``.7``,
  residual blocks at ``main.9 .. main.(8+R)`` (each ``.main.0`` conv, ``.main.1`` IN, ``.main.3``
  conv, ``.main.4`` IN), then at p = 9 + R: ``main.p``/``main.(p+3)`` transposed convs with IN at
  ``p+1``/``p+4`` and the final conv7x7 at ``main.(p+6)``. Its IN layers carry running
  statistics that the official code never uses (it never calls ``eval()``); they are dropped.
- D: ``main.0, main.2, ...`` strided convs (weight + bias), ``conv1`` the src head, ``conv2``
  the classifier head whose kernel is image_size / 2**(number of strided convs).

The files carry no metadata, so the caller supplies the label count (`c_dim`, the length of
``--attrs``) and ``--image-size``; both are checked against the weight shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from starcli.errors import CheckpointError
from starcli.families.stargan_v1.networks import Discriminator, Generator, ModelConfig

__all__ = [
    "convert_official_generator",
    "convert_official_discriminator",
    "to_official_generator",
    "to_official_discriminator",
    "official_model_config",
]

_RUNNING = ("running_mean", "running_var", "num_batches_tracked")
_BLOCK_RE = re.compile(r"^main\.(\d+)\.main\.")
_D_CONV_RE = re.compile(r"^main\.(\d+)\.weight$")
_SHOW = 4  # how many offending keys an error message lists


# --- key maps: official module prefix -> (our module prefix, is_instance_norm) -------------

def _generator_map(repeat_num: int) -> dict[str, tuple[str, bool]]:
    m = {
        "main.0": ("stem.conv", False), "main.1": ("stem.norm", True),
        "main.3": ("down.0.conv", False), "main.4": ("down.0.norm", True),
        "main.6": ("down.1.conv", False), "main.7": ("down.1.norm", True),
    }
    for i in range(repeat_num):
        k = 9 + i
        m[f"main.{k}.main.0"] = (f"blocks.{i}.conv1", False)
        m[f"main.{k}.main.1"] = (f"blocks.{i}.norm1", True)
        m[f"main.{k}.main.3"] = (f"blocks.{i}.conv2", False)
        m[f"main.{k}.main.4"] = (f"blocks.{i}.norm2", True)
    p = 9 + repeat_num
    m[f"main.{p}"] = ("up.0.conv", False)
    m[f"main.{p + 1}"] = ("up.0.norm", True)
    m[f"main.{p + 3}"] = ("up.1.conv", False)
    m[f"main.{p + 4}"] = ("up.1.norm", True)
    m[f"main.{p + 6}"] = ("to_rgb", False)
    return m


def _discriminator_map(repeat_num: int) -> dict[str, str]:
    m = {f"main.{2 * i}": f"convs.{i}" for i in range(repeat_num)}
    m["conv1"] = "src_head"
    m["conv2"] = "cls_head"
    return m


# --- helpers ------------------------------------------------------------------------------

def _few(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _clean(state_dict: Mapping, source: str) -> dict[str, torch.Tensor]:
    """Plain {key: tensor}, with a DataParallel ``module.`` prefix removed."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{source}: expected a state_dict (a mapping of names to tensors), "
            f"got {type(state_dict).__name__}."
        )
    bad = [str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries are not tensors: {_few(bad)}.")
    sd = {str(k): v for k, v in state_dict.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _translate(sd: dict[str, torch.Tensor], prefix_map: Mapping[str, str],
               norms: set[str], source: str) -> dict[str, torch.Tensor]:
    """Rename official keys to ours; drop IN running stats; report unknown keys."""
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in sd.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in prefix_map:
            unexpected.append(key)
        elif leaf in _RUNNING and prefix in norms:
            continue  # statistics the official test loop never uses
        else:
            out[f"{prefix_map[prefix]}.{leaf}"] = value
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected keys for an official StarGAN checkpoint: {_few(unexpected)}; "
            "is this the right file?"
        )
    return out


def _check_against(converted: dict[str, torch.Tensor], model: torch.nn.Module,
                   prefix_map: Mapping[str, str], source: str) -> None:
    """Compare key sets and shapes with a freshly built model; name keys in official terms."""
    to_official = {ours: official for official, ours in prefix_map.items()}

    def name(key: str) -> str:
        prefix, _, leaf = key.rpartition(".")
        return f"{to_official.get(prefix, prefix)}.{leaf}"

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [name(k) for k in expected if k not in converted]
    extra = [name(k) for k in converted if k not in expected]
    shapes = [f"{name(k)} {tuple(v.shape)} (expected {expected[k]})"
              for k, v in converted.items() if k in expected and tuple(v.shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if extra:
        problems.append(f"unexpected keys: {_few(extra)}")
    if shapes:
        problems.append(f"shape differences: {_few(shapes)}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the StarGAN v1 architecture: {'; '.join(problems)}."
        )


def _depth_for(image_size: int) -> int:
    """A D depth (<= 6) that fits `image_size`, for configs where only G matters."""
    if image_size <= 0:
        return 1
    return max(1, min(6, (image_size & -image_size).bit_length() - 1))


# --- inspection ---------------------------------------------------------------------------

def _inspect_generator(sd: dict[str, torch.Tensor], source: str) -> tuple[int, int, int]:
    """(c_dim, conv_dim, repeat_num) read from an official G state_dict."""
    first = sd.get("main.0.weight")
    if "conv2.weight" in sd:
        raise CheckpointError(
            f"{source} looks like a discriminator (it has conv1/conv2 heads), not an official "
            "StarGAN generator; pass the G file (e.g. 200000-G.ckpt)."
        )
    if first is None:
        raise CheckpointError(
            f"{source} is not an official StarGAN generator: it has no main.0.weight; "
            f"its keys start with {_few(sorted(sd))}."
        )
    if first.dim() != 4 or first.shape[1] < 4:
        raise CheckpointError(
            f"{source}: main.0.weight has shape {tuple(first.shape)}; an official generator's "
            "first conv is (width, 3 + c_dim, 7, 7)."
        )
    blocks = sorted({int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))})
    if blocks != list(range(9, 9 + len(blocks))):
        raise CheckpointError(
            f"{source}: residual blocks sit at main.{blocks} but must be numbered from main.9 "
            "without gaps; is this an official StarGAN v1 generator?"
        )
    return first.shape[1] - 3, first.shape[0], len(blocks)


def _inspect_discriminator(sd: dict[str, torch.Tensor], source: str) -> tuple[int, int, int, int]:
    """(cls_dim, conv_dim, repeat_num, kernel) read from an official D state_dict."""
    head = sd.get("conv2.weight")
    first = sd.get("main.0.weight")
    if head is None or first is None:
        if any(_BLOCK_RE.match(k) for k in sd):
            raise CheckpointError(
                f"{source} looks like a generator (it has residual blocks), not an official "
                "StarGAN discriminator; pass the D file (e.g. 200000-D.ckpt)."
            )
        missing = [k for k in ("main.0.weight", "conv2.weight") if k not in sd]
        raise CheckpointError(
            f"{source} is not an official StarGAN discriminator: it has no {_few(missing)}; "
            f"its keys start with {_few(sorted(sd))}."
        )
    convs = sorted(int(m.group(1)) for k in sd if (m := _D_CONV_RE.match(k)))
    if convs != list(range(0, 2 * len(convs), 2)):
        raise CheckpointError(
            f"{source}: strided convs sit at main.{convs} but must be main.0, main.2, main.4, ... "
            "without gaps; is this an official StarGAN v1 discriminator?"
        )
    if head.dim() != 4 or head.shape[2] != head.shape[3]:
        raise CheckpointError(
            f"{source}: conv2.weight has shape {tuple(head.shape)}; expected "
            "(c_dim, channels, k, k)."
        )
    return head.shape[0], first.shape[0], len(convs), head.shape[2]


def _check_c_dim(found: int, c_dim: int, what: str, source: str) -> None:
    if found != c_dim:
        raise CheckpointError(
            f"{source}: {what} (c_dim {found}) but --attrs lists {c_dim} attribute"
            f"{'s' if c_dim != 1 else ''}; pass the {found} attribute names the model was "
            "trained with, in training order."
        )


def _check_image_size(kernel: int, repeat_num: int, image_size: int, source: str) -> None:
    trained = kernel * 2**repeat_num
    if trained != image_size:
        raise CheckpointError(
            f"{source}: the classifier kernel is {kernel}x{kernel}, so with {repeat_num} strided "
            f"convs the model was trained on {trained}px images, but --image-size is "
            f"{image_size}; pass --image-size {trained}."
        )


# --- public API ---------------------------------------------------------------------------

def official_model_config(g_state: Mapping, d_state: Mapping | None = None, *, c_dim: int,
                          image_size: int, g_source: str = "G checkpoint",
                          d_source: str = "D checkpoint") -> ModelConfig:
    """The `ModelConfig` of an official G (and optionally D) checkpoint, after checking that
    `c_dim` (the number of attributes) and `image_size` agree with the weights. Without D,
    D's width and depth are the paper's (64, at most 6 strided convs)."""
    g = _clean(g_state, g_source)
    g_c, g_width, g_rep = _inspect_generator(g, g_source)
    _check_c_dim(g_c, c_dim, f"the first conv takes 3+{g_c} channels", g_source)
    d_width, d_rep, cls_dim = 64, _depth_for(image_size), c_dim
    if d_state is not None:
        d = _clean(d_state, d_source)
        cls_dim, d_width, d_rep, kernel = _inspect_discriminator(d, d_source)
        if cls_dim > c_dim:
            raise CheckpointError(
                f"{d_source}: the classifier has {cls_dim} outputs but {g_source} takes only "
                f"{c_dim} labels; are the two files from the same run?"
            )
        _check_image_size(kernel, d_rep, image_size, d_source)
    return ModelConfig(image_size=image_size, c_dim=c_dim, cls_dim=cls_dim, g_conv_dim=g_width,
                       d_conv_dim=d_width, g_repeat_num=g_rep, d_repeat_num=d_rep)


def convert_official_generator(state_dict: Mapping, *, c_dim: int, image_size: int,
                               repeat_num: int | None = None,
                               source: str = "G checkpoint") -> dict[str, torch.Tensor]:
    """Official G state_dict -> state_dict for our `Generator`.

    `c_dim` is the number of labels (attributes) G takes and `repeat_num` the residual block
    count (inferred when None); `source` names the file in error messages. Raises
    `CheckpointError` on any mismatch, listing the differing keys or shapes.
    """
    sd = _clean(state_dict, source)
    found_c, width, found_rep = _inspect_generator(sd, source)
    _check_c_dim(found_c, c_dim, f"the first conv takes 3+{found_c} channels", source)
    if repeat_num is not None and repeat_num != found_rep:
        raise CheckpointError(
            f"{source} has {found_rep} residual blocks but {repeat_num} were requested; "
            f"use --g-repeat-num {found_rep}."
        )
    cfg = ModelConfig(image_size=image_size, c_dim=c_dim, g_conv_dim=width,
                      g_repeat_num=found_rep, d_repeat_num=_depth_for(image_size))
    full = _generator_map(found_rep)
    prefix_map = {k: ours for k, (ours, _) in full.items()}
    norms = {k for k, (_, is_norm) in full.items() if is_norm}
    converted = _translate(sd, prefix_map, norms, source)
    with torch.device("meta"):
        model = Generator(cfg)
    _check_against(converted, model, prefix_map, source)
    return converted


def convert_official_discriminator(state_dict: Mapping, *, c_dim: int, image_size: int,
                                   source: str = "D checkpoint") -> dict[str, torch.Tensor]:
    """Official D state_dict -> state_dict for our `Discriminator`.

    `c_dim` is the number of classifier outputs (attributes) and `image_size` the training
    resolution, checked against the classifier kernel. Raises `CheckpointError` on mismatch.
    """
    sd = _clean(state_dict, source)
    found_c, width, rep, kernel = _inspect_discriminator(sd, source)
    _check_c_dim(found_c, c_dim, f"the classifier has {found_c} outputs", source)
    _check_image_size(kernel, rep, image_size, source)
    cfg = ModelConfig(image_size=image_size, c_dim=c_dim, d_conv_dim=width, d_repeat_num=rep)
    prefix_map = _discriminator_map(rep)
    converted = _translate(sd, prefix_map, set(), source)
    with torch.device("meta"):
        model = Discriminator(cfg)
    _check_against(converted, model, prefix_map, source)
    return converted


def to_official_generator(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `Generator` state_dict -> the official layout, including the IN running statistics
    (mean 0, variance 1, 0 batches) that official files carry."""
    repeat = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    out: dict[str, torch.Tensor] = {}
    for official, (ours, is_norm) in _generator_map(repeat).items():
        weight = state_dict[f"{ours}.weight"]
        out[f"{official}.weight"] = weight
        if is_norm:
            out[f"{official}.bias"] = state_dict[f"{ours}.bias"]
            out[f"{official}.running_mean"] = torch.zeros_like(weight)
            out[f"{official}.running_var"] = torch.ones_like(weight)
            out[f"{official}.num_batches_tracked"] = torch.zeros((), dtype=torch.long,
                                                                 device=weight.device)
    return out


def to_official_discriminator(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `Discriminator` state_dict -> the official layout."""
    repeat = len({k.split(".")[1] for k in state_dict if k.startswith("convs.")})
    out: dict[str, torch.Tensor] = {}
    for official, ours in _discriminator_map(repeat).items():
        for leaf in ("weight", "bias"):
            if f"{ours}.{leaf}" in state_dict:
                out[f"{official}.{leaf}"] = state_dict[f"{ours}.{leaf}"]
    return out
