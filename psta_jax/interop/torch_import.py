"""Import PyTorch weights: the authors' PSTA release checkpoints and torchvision ResNet-50.

    model = load_official_psta("mars_best.pth")            # PSTA with the release's weights
    load_psta_state_dict(model, state_dict)                 # into an existing model
    load_torchvision_resnet50("resnet50-0676ba61.pth", model)   # ImageNet backbone

A source is a path to a `.pth` file (a state_dict, or a dict holding one under
'state_dict'; keys with or without DataParallel's `module.` prefix) or a mapping
name -> array (NumPy, or anything `np.asarray` accepts). Loading is strict: every model
variable must be present with the right shape and every source entry must be used;
otherwise one `WeightImportError` lists all missing, unexpected and mis-shaped entries.
`num_batches_tracked` entries are accepted and ignored. torch is needed only to read
`.pth` files (`pip install psta-jax[torch]`).

Layout conversions (PyTorch NCHW -> NHWC): conv weight (out, in, kh, kw) -> kernel
(kh, kw, in, out); Linear weight (out, in) -> kernel (in, out); the release's Conv1d
`theta_channel` weight (out, in, 1) -> kernel (in, out); BatchNorm weight/bias/
running_mean/running_var -> scale/bias/mean/var.
"""

from __future__ import annotations

import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from psta_jax.models.psta import PSTA, FrozenParam
from psta_jax.runtime.errors import UserError

StateDict = Mapping[str, Any]
Path = tuple[Any, ...]

IGNORED_SUFFIXES = ("num_batches_tracked",)
LOADED_VARIABLES = (nnx.Param, nnx.BatchStat, FrozenParam)

BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}

# Module names whose meaning depends on the parent block: (parent, name) -> release name.
RELEASE_NAMES = {
    ("stam", "embedding"): "Embeding",
    ("stam", "tra"): "TRAG",
    ("stam", "sra"): "SRAG",
    ("stam", "conv_block"): "conv_block",
    ("tra", "gamma"): "gamma_temporal",
    ("tra", "beta"): "beta_temporal",
    ("tra", "relation_embed"): "gg_temporal",
    ("tra", "appearance_embed"): "tte_para",
    ("tra", "spatial_head"): "te_para",
    ("tra", "theta"): "theta_channel.0",
    ("tra", "channel_mlp"): "channel_para",
    ("sra", "alpha"): "alphi_appearance",
    ("sra", "delta"): "delta_appearance",
    ("sra", "relation_embed"): "gg_spatial",
    ("sra", "spatial_head"): "spa_para",
    ("sra", "channel_mlp"): "app_channel",
}
# PyTorch Sequentials of (conv, bn, act) triples: our list index k -> conv 3k, bn 3k+1.
CONV_BN_LISTS = {"embedding", "conv_block", "spatial_head"}
MLP_INDEX = {"fc1": "0", "fc2": "2"}


class WeightImportError(UserError, ValueError):
    """Raised when a source does not match the model; lists every problem at once."""


class NotATorchCheckpointError(WeightImportError):
    """The weights file is missing, not a `torch.save` file, or a damaged one."""


class MissingTorchError(UserError, ImportError):
    """Reading a `.pth` file needs torch, which is not installed."""


def torch_name(path: Path) -> str:
    """PyTorch state_dict name of a PSTA (or ResNet) variable path, e.g.
    ('stages', 0, 'sra', 'spatial_head', 1, 'bn', 'scale') -> 'layer1.SRAG.spa_para.4.weight'.
    """
    *modules, leaf = [str(p) for p in path]
    out: list[str] = []
    context = ""
    index = 0
    while index < len(modules):
        token = modules[index]
        nxt = modules[index + 1] if index + 1 < len(modules) else None
        if token == "stages" and nxt is not None:
            out.append(f"layer{int(nxt) + 1}")
            context, index = "stam", index + 2
            continue
        if (
            token in CONV_BN_LISTS
            and nxt is not None
            and nxt.isdigit()
            and (context in ("stam", "sra"))
        ):
            after = modules[index + 2] if index + 2 < len(modules) else ""
            offset = {"conv": 0, "bn": 1}[after]
            out += [RELEASE_NAMES.get((context, token), token), str(3 * int(nxt) + offset)]
            context, index = "", index + 3
            continue
        if (context, token) in RELEASE_NAMES:
            out.append(RELEASE_NAMES[(context, token)])
            context = token
            index += 1
            continue
        if token in ("conv", "bn"):
            out.append("0" if token == "conv" else "1")
        elif token in MLP_INDEX:
            out.append(MLP_INDEX[token])
        else:
            out.append(token)
        index += 1
    is_norm = modules and modules[-1] in ("bn", "bn1", "bn2", "bn3") or leaf in ("mean", "var")
    is_bottleneck = len(modules) >= 1 and modules[0] == "bottleneck"
    if is_norm or is_bottleneck:
        out.append(BN_LEAVES[leaf])
    else:
        out.append({"kernel": "weight", "bias": "bias"}[leaf])
    return ".".join(out)


def to_flax(array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """A PyTorch array in the layout of a Flax variable of `target_shape`."""
    array = np.asarray(array)
    if array.ndim == 4:  # conv (out, in, kh, kw) -> (kh, kw, in, out)
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 3 and array.shape[-1] == 1 and len(target_shape) == 2:  # Conv1d k=1
        return array[..., 0].T
    if array.ndim == 2:  # Linear (out, in) -> (in, out)
        return array.T
    return array


def _strip_prefix(state_dict: StateDict) -> dict[str, Any]:
    """Drops DataParallel's 'module.' prefix when every key carries it."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


# What `torch.save` writes: a zip archive whose records sit under one folder, with the pickled
# object in '<folder>/data.pkl'; or (legacy format) a pickle starting with torch's magic number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_EXPECTED = (
    "expected a file written by torch.save (a zip archive holding <name>/data.pkl, or "
    "torch's legacy pickle format) with a state_dict of tensors"
)
_LEGACY_TAR_MEMBERS = ("sys_info", "pickle", "storages", "tensors")
LEGACY_TAR_REFUSAL = (
    "is a tar archive: torch.save's oldest format (the legacy tar format), which torch reads "
    "only with its unrestricted unpickler, and unpickling arbitrary objects could run code. "
    "psta-jax does that only for files pinned by their SHA-256 (torchvision's ImageNet "
    "ResNet-50 files, psta_jax.interop.imagenet_weights). To use this file, convert it where "
    "you trust it: state_dict = torch.load(path, weights_only=False), then "
    "torch.save(state_dict, new_path), which writes the zip format that psta-jax reads"
)


def _zip_first_record(head: bytes) -> str:
    """The file name of a zip archive's first local record (from its first bytes)."""
    name_length = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + name_length].decode(errors="replace")


def _is_legacy_torch_tar(path: str) -> bool:
    """Whether the tar archive `path` starts like torch.save's legacy tar format (its first
    member is one of that format's: sys_info, pickle, storages, tensors)."""
    try:
        with tarfile.open(path, "r:") as archive:
            first = archive.next()
    except (tarfile.TarError, OSError):
        return False
    return first is not None and first.name in _LEGACY_TAR_MEMBERS


def check_torch_checkpoint(path: str | os.PathLike) -> None:
    """Raises `NotATorchCheckpointError` unless `path` looks like a `torch.save` file that
    psta-jax reads: a file in torch's legacy tar format is refused too (`LEGACY_TAR_REFUSAL`
    says why and how to convert it)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NotATorchCheckpointError(
            f"no PyTorch checkpoint at {path!r}: the file does not exist (check the path)"
        )
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(_LEGACY_MAGIC):
        return
    if head.startswith(_ZIP_MAGIC):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith("/data.pkl") for name in archive.namelist()):
                    return
            raise NotATorchCheckpointError(
                f"{path!r} is a zip archive but not a PyTorch "
                f"checkpoint (no <name>/data.pkl in it); {_EXPECTED}"
            )
        if _zip_first_record(head).endswith("/data.pkl"):
            raise NotATorchCheckpointError(
                f"{path!r} is a damaged or truncated PyTorch checkpoint ({os.path.getsize(path)} "
                "bytes; its zip directory is missing): copy or download it again"
            )
    if tarfile.is_tarfile(path):
        if _is_legacy_torch_tar(path):
            raise NotATorchCheckpointError(f"{path!r} {LEGACY_TAR_REFUSAL}")
        raise NotATorchCheckpointError(
            f"{path!r} is a tar archive but not a PyTorch checkpoint; {_EXPECTED}"
        )
    raise NotATorchCheckpointError(
        f"{path!r} is not a PyTorch checkpoint ({os.path.getsize(path)} bytes, starting with "
        f"{head[:8]!r}); {_EXPECTED}"
    )


def _numpy_scalar_globals() -> list:
    """What pickled NumPy scalars (e.g. a saved accuracy) need: data only, no code."""
    import numpy.dtypes

    multiarray = getattr(np, "_core", None) or np.core
    return [
        multiarray.multiarray.scalar,
        np.dtype,
        *(getattr(numpy.dtypes, name) for name in numpy.dtypes.__all__),
    ]


def read_torch_checkpoint(
    path: str | os.PathLike, *, trusted: bool = False
) -> dict[str, np.ndarray]:
    """A `.pth` state_dict as NumPy arrays (torch imported lazily).

    Only tensors, containers and NumPy scalars are unpickled (`weights_only`): a file that
    needs any other Python object is refused, since unpickling it could run code, and so is
    torch's legacy tar format. `trusted=True` lifts both limits; pass it only for a file
    whose bytes were verified against a pinned SHA-256 (`imagenet_weights.read_weights`).
    """
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingTorchError(
            f"reading the PyTorch checkpoint {os.fspath(path)!r} needs torch: "
            "pip install 'psta-jax[torch]' (or pass a mapping of NumPy "
            "arrays instead)"
        ) from err
    if not trusted:
        check_torch_checkpoint(path)
    try:
        if trusted:  # pinned bytes: any pickled object, any format (the legacy tar one too)
            checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_numpy_scalar_globals()):
                checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path))
        except Exception:  # Legacy files cannot be inspected; the message below still holds.
            unsafe = []
        what = f" ({', '.join(unsafe)})" if unsafe else ""
        raise WeightImportError(
            f"{os.fspath(path)!r} is a PyTorch checkpoint, but besides tensors it holds Python "
            f"objects{what} that psta-jax does not unpickle, since that could run code. Where "
            "the file was made, save its tensors alone, e.g. torch.save(checkpoint['state_dict'],"
            " 'weights.pth'), and convert that file."
        ) from err
    except (RuntimeError, EOFError, ValueError) as err:
        raise WeightImportError(
            f"{os.fspath(path)!r} is a damaged PyTorch checkpoint (torch "
            f"cannot read it: {str(err).splitlines()[0]}): copy or download "
            "it again"
        ) from err
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping):
        raise WeightImportError(
            f"{os.fspath(path)!r} holds a {type(checkpoint).__name__}, "
            "expected a state_dict (or a dict with 'state_dict')"
        )
    return {
        k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        for k, v in checkpoint.items()
    }


def read_state_dict(source: str | os.PathLike | StateDict) -> dict[str, Any]:
    """A source (path or mapping) as a dict with any 'module.' prefix removed."""
    if isinstance(source, (str, os.PathLike)):
        source = read_torch_checkpoint(source)
    elif not isinstance(source, Mapping):
        raise TypeError(f"weights source must be a path or a mapping, got {type(source)}")
    elif "state_dict" in source and isinstance(source["state_dict"], Mapping):
        source = source["state_dict"]
    return _strip_prefix(source)


def key_map(module: nnx.Module, prefix: str = "") -> dict[str, Path]:
    """PyTorch name -> variable path for every loadable variable of `module`."""
    names = {}
    for path, _ in nnx.to_flat_state(nnx.state(module, LOADED_VARIABLES)):
        names[prefix + torch_name(path)] = tuple(path)
    return names


def load_state_dict(
    module: nnx.Module,
    source: str | os.PathLike | StateDict,
    *,
    prefix: str = "",
    ignore: Callable[[str], bool] | None = None,
    what: str = "model",
) -> nnx.Module:
    """Loads a PyTorch state_dict into `module` (in place; also returned), strictly.

    `prefix` is prepended to our names to find the source entries ('base.' ...);
    `ignore(name)` marks source entries that may stay unused (besides
    num_batches_tracked).
    """
    state_dict = read_state_dict(source)
    names = key_map(module, prefix)
    state = nnx.state(module, LOADED_VARIABLES)
    flat = dict(nnx.to_flat_state(state))
    missing, misshaped, updates = [], [], {}
    for name, path in names.items():
        if name not in state_dict:
            missing.append(name)
            continue
        target = flat[path]
        value = to_flax(state_dict[name], tuple(target.shape))
        if tuple(value.shape) != tuple(target.shape):
            misshaped.append(
                f"{name}: source {tuple(np.shape(state_dict[name]))} -> "
                f"{tuple(value.shape)}, model expects {tuple(target.shape)}"
            )
            continue
        updates[path] = jnp.asarray(value, dtype=target.dtype)
    unexpected = [
        k
        for k in state_dict
        if k not in names and not k.endswith(IGNORED_SUFFIXES) and not (ignore and ignore(k))
    ]
    if missing or unexpected or misshaped:
        parts = [f"cannot load these weights into the {what}:"]
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                parts.append(f"  {len(items)} {title}: " + _first_names(sorted(items)))
        if len(missing) + len(unexpected) > len(names) // 2:
            parts.append(
                "  most names differ: the file holds another network (or another depth) than "
                f"this {what}; check the file and the config's model fields"
            )
        raise WeightImportError("\n".join(parts))
    for path, value in updates.items():
        flat[path] = flat[path].replace(value) if hasattr(flat[path], "replace") else value
    nnx.update(module, nnx.from_flat_state(flat))
    return module


_NAMES_SHOWN = 8


def _first_names(items: list[str]) -> str:
    """The first `_NAMES_SHOWN` names and how many more: a wrong file misses hundreds."""
    shown = ", ".join(items[:_NAMES_SHOWN])
    more = len(items) - _NAMES_SHOWN
    return shown + (f", ... and {more} more" if more > 0 else "")


def load_psta_state_dict(model: PSTA, source: str | os.PathLike | StateDict) -> PSTA:
    """Loads a release state_dict (or checkpoint path) into an existing PSTA."""
    return load_state_dict(model, source, what="PSTA model")


def load_official_psta(source: str | os.PathLike | StateDict, **model_overrides) -> PSTA:
    """A PSTA holding the release's weights; num_classes is read from the classifier.

    `model_overrides` are PSTA keyword arguments (e.g. `seq_len`, `image_size`, `dtype`);
    the defaults are the release's network. The model is returned in eval mode.
    """
    state_dict = read_state_dict(source)
    if "classifier.0.weight" not in state_dict:
        raise WeightImportError(
            "not a PSTA release state_dict: no 'classifier.0.weight' "
            f"among its {len(state_dict)} entries"
        )
    num_classes = int(np.shape(state_dict["classifier.0.weight"])[0])
    model = nnx.eval_shape(lambda: PSTA(num_classes, **model_overrides, rngs=nnx.Rngs(0)))
    _materialize(model)
    load_state_dict(model, state_dict, what="PSTA model")
    model.eval()
    return model


def _materialize(module: nnx.Module) -> None:
    """Gives an abstract (eval_shape) module zero arrays so it can be loaded into."""
    state = nnx.state(module)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state)
    nnx.update(module, zeros)


def load_torchvision_resnet50(
    source: str | os.PathLike | StateDict, model_or_backbone: nnx.Module
) -> nnx.Module:
    """Loads torchvision ImageNet ResNet-50 weights into a PSTA's backbone (or a ResNet).

    The `fc` entries are ignored; anything else missing, unexpected or mis-shaped raises.
    Returns the model or backbone that was passed.
    """
    backbone = model_or_backbone.base if isinstance(model_or_backbone, PSTA) else model_or_backbone
    load_state_dict(backbone, source, ignore=lambda k: k.startswith("fc."), what="ResNet backbone")
    return model_or_backbone


def to_torch(array: np.ndarray, name: str) -> np.ndarray:
    """Inverse of `to_flax`: a Flax variable in the PyTorch layout of entry `name`."""
    array = np.asarray(array)
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if array.ndim == 2 and name.endswith("theta_channel.0.weight"):
        return array.T[..., None]
    if array.ndim == 2:
        return array.T
    return array


def export_state_dict(module: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
    """`module`'s variables as a PyTorch-named, PyTorch-layout dict of NumPy arrays
    (no num_batches_tracked); `load_state_dict` reads it back exactly."""
    state = dict(nnx.to_flat_state(nnx.state(module, LOADED_VARIABLES)))
    return {
        name: to_torch(np.asarray(state[path][...]), name)
        for name, path in key_map(module, prefix).items()
    }
