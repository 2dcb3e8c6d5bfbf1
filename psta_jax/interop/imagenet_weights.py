"""`config.pretrained`: torchvision's ImageNet ResNet-50, downloaded once, verified, cached.

`resolve_pretrained(config.pretrained)` turns the config value into the `.pth` file to load
(`locate_pretrained` gives its SHA-256 too), and `read_weights` reads that file:

- "imagenet": torchvision's ImageNet-1K ResNet-50 from the cache, downloaded on first use;
- "none" (or "", what older configs hold): None, random initialisation;
- anything else: the path of a local `.pth` file, which must exist.

The accepted files are `IMAGENET_RESNET50`: torchvision's current `resnet50-0676ba61.pth`
(zip format, the one downloaded) and the release's `resnet50-19c8e357.pth` (the file the
authors' PSTA code loads, from torchvision's old `model_urls`); torchvision documents both
names as its ImageNet-1K V1 weights. Each is known by its URL, SHA-256 and size. A cached
file of either name with the right SHA-256 is used without network; otherwise the first
(torchvision's current file) is downloaded.

The release's file is in torch's legacy tar format, which torch reads only with its
unrestricted unpickler (`weights_only=False`), able to run code. `read_weights` uses that
unpickler only for a file whose SHA-256 is one of the pinned `KnownFile` hashes: those bytes
are the ones torchvision published. Any other file is read with `weights_only=True`
(`torch_import.read_torch_checkpoint`), which refuses the legacy tar format with a message
that says how to convert the file to the zip format.

The cache is `$PSTA_JAX_CACHE/weights/` when PSTA_JAX_CACHE is set, else
`~/.cache/psta_jax/weights/`. To use a machine without internet, put either file there under
its own name, or pass `--config.pretrained=/path/to/file.pth`.

A download streams to `<name>.partial-<pid>-<random>` in the cache folder, hashing as it
writes, with a timeout on every network operation; the size and SHA-256 are checked and the
file is renamed into place with `os.replace`, which is atomic. Processes that download at
once (the processes of a multi-process run each resolve the value) therefore each write a
file of their own, and the last rename wins with the same bytes: nothing needs a lock.
On any failure (no connection, DNS, an HTTP error, a timeout, a truncated or oversized body,
a wrong SHA-256, a full disk) the partial file is removed and one `PretrainedWeightsError`
says what failed, the URL, the expected SHA-256, where to put the file by hand, and the
`--config.pretrained=/path/to/file.pth` and `--config.pretrained=none` alternatives. Ctrl-C
removes the partial file too and stays a KeyboardInterrupt (the commands end it with
"interrupted", exit code 130). Only a process killed outright (SIGKILL, power loss) can
leave a `*.partial-*` file behind; it is never read, and may be deleted.

A cached file with the wrong SHA-256 may be the user's own download (another release, a
damaged copy): it is never deleted. It is renamed aside to `<name>.bad-<its SHA-256's first
12 hex digits>` in the same folder, with a warning that says so, and the file is downloaded
again; the renamed file can be deleted by hand.

Finding and downloading use only the standard library (urllib, hashlib) and absl logging;
`read_weights` imports `torch_import` (JAX, and torch to read the file) when it is called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pathlib
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from absl import logging

from psta_jax.runtime.errors import ConfigError, UserError

if TYPE_CHECKING:
    import numpy as np

IMAGENET = "imagenet"
NONE = "none"
PATH = "path"
CACHE_ENV = "PSTA_JAX_CACHE"
DEFAULT_CACHE = pathlib.Path("~/.cache/psta_jax")
WEIGHTS_SUBDIR = "weights"
DOWNLOAD_TIMEOUT_S = 60.0  # per network operation (connect, each read), not for the whole file
CHUNK_BYTES = 1 << 20
FIELD = "config.pretrained"


@dataclasses.dataclass(frozen=True)
class KnownFile:
    """A weights file accepted for "imagenet": its cache name, where it is downloaded from,
    and what it must be."""

    name: str
    url: str
    sha256: str  # 64 lowercase hex digits
    size: int  # bytes


# torch's legacy tar format: read only because its SHA-256 is pinned (`read_weights`).
RELEASE_RESNET50 = KnownFile(
    name="resnet50-19c8e357.pth",
    url="https://download.pytorch.org/models/resnet50-19c8e357.pth",
    sha256="19c8e3572231adff6824a2da93fd67b5986919a2e65f8b6007eab4edee220097",
    size=102_502_400,
)
TORCHVISION_RESNET50 = KnownFile(
    name="resnet50-0676ba61.pth",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    sha256="0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
    size=102_530_333,
)
# The files "imagenet" accepts from the cache; the first is the one downloaded. Their
# SHA-256s are the pinned ones that `read_weights` unpickles without restriction.
IMAGENET_RESNET50: tuple[KnownFile, ...] = (TORCHVISION_RESNET50, RELEASE_RESNET50)


@dataclasses.dataclass(frozen=True)
class PretrainedFile:
    """A weights file that `locate_pretrained` found, and its SHA-256 (hashed once)."""

    path: pathlib.Path
    sha256: str  # 64 lowercase hex digits


class PretrainedWeightsError(UserError):
    """The ImageNet weights could not be found, downloaded or verified (the message says what
    failed and how to provide the file by hand)."""


def cache_dir(environ: Mapping[str, str] | None = None) -> pathlib.Path:
    """The folder of cached weights: `$PSTA_JAX_CACHE/weights`, else
    `~/.cache/psta_jax/weights`."""
    environ = os.environ if environ is None else environ
    root = environ.get(CACHE_ENV) or DEFAULT_CACHE
    return pathlib.Path(root).expanduser() / WEIGHTS_SUBDIR


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, in lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_pretrained(
    value: str,
    *,
    known_files: Sequence[KnownFile] | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> pathlib.Path | None:
    """The `.pth` file that `config.pretrained` = `value` names, or None for random weights
    (`locate_pretrained`'s path)."""
    found = locate_pretrained(value, known_files=known_files, cache=cache, timeout=timeout)
    return None if found is None else found.path


def locate_pretrained(
    value: str,
    *,
    known_files: Sequence[KnownFile] | None = None,
    cache: str | os.PathLike | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> PretrainedFile | None:
    """The `.pth` file that `config.pretrained` = `value` names, with its SHA-256, or None for
    random weights.

    "imagenet": a verified file of `known_files` (default `IMAGENET_RESNET50`) from `cache`
    (default `cache_dir()`), downloaded on first use. "none" or "": None. Anything else: an
    existing local file (`ConfigError` naming config.pretrained otherwise). Logs the file and
    its SHA-256.
    """
    choice = kind(value)
    if choice == NONE:
        return None
    if choice == IMAGENET:
        known = tuple(IMAGENET_RESNET50 if known_files is None else known_files)
        folder = cache_dir() if cache is None else pathlib.Path(cache)
        path, digest = cached_or_downloaded(known, folder, timeout=timeout)
        logging.info("ImageNet ResNet-50 weights: %s (SHA-256 %s)", path, digest)
        return PretrainedFile(path, digest)
    path = local_file(value.strip())
    digest = file_sha256(path)
    logging.info("pretrained weights: %s (SHA-256 %s)", path, digest)
    return PretrainedFile(path, digest)


def read_weights(
    source: str | os.PathLike | PretrainedFile,
    *,
    known_files: Sequence[KnownFile] | None = None,
) -> dict[str, np.ndarray]:
    """The state_dict of a weights file, as NumPy arrays (torch needed).

    A file whose SHA-256 is pinned by `known_files` (default `IMAGENET_RESNET50`) holds the
    bytes torchvision published: torch unpickles it without restriction, which reads the
    release's legacy tar format too. Any other file is read with `weights_only=True`, which
    unpickles tensors and plain containers only and refuses the legacy tar format
    (`torch_import.read_torch_checkpoint`). A `PretrainedFile` carries the SHA-256 that
    `locate_pretrained` computed; a path is hashed here.
    """
    from psta_jax.interop import torch_import  # noqa: PLC0415 (imports JAX; torch to read)

    if isinstance(source, PretrainedFile):
        path, digest = source.path, source.sha256
    else:
        path = pathlib.Path(source)
        digest = file_sha256(path) if path.is_file() else None  # missing: torch_import says so
    known = IMAGENET_RESNET50 if known_files is None else known_files
    pinned = digest is not None and digest in {k.sha256 for k in known}
    if pinned:
        logging.info("%s has a pinned SHA-256: unpickled without restriction", path)
    return torch_import.read_torch_checkpoint(path, trusted=pinned)


def kind(value: str) -> str:
    """What `config.pretrained` = `value` asks for: IMAGENET, NONE ("none" or "", whatever the
    case and spaces) or PATH."""
    text = value.strip().lower()
    if text in (NONE, ""):
        return NONE
    return IMAGENET if text == IMAGENET else PATH


def local_file(value: str) -> pathlib.Path:
    """`value` as the path of an existing file, else a `ConfigError` naming config.pretrained."""
    path = pathlib.Path(value).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"{FIELD}={value!r}: {path} {what}; expected a torchvision ResNet-50 .pth file, "
            f"'{IMAGENET}' (downloaded and cached) or '{NONE}' (random weights)"
        )
    return path


def cached_or_downloaded(
    known_files: Sequence[KnownFile], cache: pathlib.Path, *, timeout: float = DOWNLOAD_TIMEOUT_S
) -> tuple[pathlib.Path, str]:
    """(path, SHA-256) of a verified file of `known_files` in `cache`, downloading the first
    one when none is there. A cached file with a wrong SHA-256 is renamed aside first."""
    if not known_files:
        raise ValueError("known_files is empty")
    notes = []
    for known in known_files:
        path = cache / known.name
        if not path.is_file():
            continue
        try:
            digest = file_sha256(path)
        except OSError as error:
            raise PretrainedWeightsError(
                failure_message(f"cannot read the cached file ({error})", known, cache)
            ) from error
        if digest == known.sha256:
            return path, digest
        notes.append(set_aside(path, digest, known))
    wanted = known_files[0]
    path = download(
        wanted, cache, timeout=timeout, notes=notes, alternatives=tuple(known_files[1:])
    )
    return path, wanted.sha256


def set_aside(path: pathlib.Path, digest: str, known: KnownFile) -> str:
    """Renames a cached file whose SHA-256 is wrong to `<name>.bad-<digest[:12]>`, warns, and
    returns a note saying so for a later error message."""
    aside = path.with_name(f"{path.name}.bad-{digest[:12]}")
    try:
        os.replace(path, aside)
    except OSError as error:
        raise PretrainedWeightsError(
            f"{path} has SHA-256 {digest}, not the expected {known.sha256}, and it could not "
            f"be renamed aside ({error}); delete or replace it, or use "
            f"--config.pretrained=/path/to/file.pth or --config.pretrained=none"
        ) from error
    note = (
        f"the cached {path} had SHA-256 {digest}, not the expected {known.sha256}: it was "
        f"renamed to {aside} (delete it when you no longer need it)"
    )
    logging.warning("%s; downloading the weights again", note)
    return note


def download(
    known: KnownFile,
    cache: pathlib.Path,
    *,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    notes: Sequence[str] = (),
    alternatives: Sequence[KnownFile] = (),
    urlopen: Callable[..., Any] = urllib.request.urlopen,
) -> pathlib.Path:
    """Downloads `known` into `cache` through a partial file, checks its size and SHA-256 and
    renames it into place; returns the cached path. Any failure removes the partial file and
    raises one `PretrainedWeightsError` (with `notes`, and the `alternatives` also accepted in
    the cache); Ctrl-C removes it and stays a KeyboardInterrupt. `urlopen` is
    `urllib.request.urlopen` (tests inject one)."""
    target = cache / known.name
    partial = cache / f"{known.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    logging.info("downloading %s (%.0f MB) to %s", known.url, known.size / 1e6, target)
    try:
        with _create(partial) as out, urlopen(known.url, timeout=timeout) as response:
            digest = _stream(response, out, known)
        if digest != known.sha256:
            raise _Failed(
                f"the downloaded file has SHA-256 {digest}, expected {known.sha256} (a proxy "
                "that alters downloads, or a changed file on the server?)"
            )
        os.replace(partial, target)
    except Exception as error:
        _remove(partial)
        what = _describe(error, known, timeout)
        message = failure_message(what, known, cache, notes, alternatives)
        cause = error.__cause__ if isinstance(error, _Failed) else error
        raise PretrainedWeightsError(message) from cause
    except BaseException:  # Ctrl-C: nothing partial stays; the command reports "interrupted"
        _remove(partial)
        raise
    logging.info("saved %s", target)
    return target


class _Failed(Exception):
    """A download that cannot become the cached file (its size or hash, a cache write)."""


def _create(partial: pathlib.Path) -> BinaryIO:
    """The partial file, opened for writing (its folder created)."""
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        return open(partial, "xb")
    except OSError as error:
        raise _Failed(f"cannot write to the cache folder {partial.parent} ({error})") from error


def _stream(response: Any, out: BinaryIO, known: KnownFile) -> str:
    """Copies the body to `out`, hashing it; checks its length against the server's
    Content-Length and `known.size`. Returns the SHA-256."""
    announced = response.headers.get("Content-Length")
    if announced is not None and announced.isdigit() and int(announced) != known.size:
        raise _Failed(f"the server announced {announced} bytes, expected {known.size}")
    digest, received = hashlib.sha256(), 0
    while chunk := response.read(CHUNK_BYTES):
        received += len(chunk)
        if received > known.size:
            raise _Failed(f"the server sent more than the expected {known.size} bytes")
        digest.update(chunk)
        try:
            out.write(chunk)
        except OSError as error:  # a full disk, a quota
            raise _Failed(f"cannot write {out.name} ({error})") from error
    if received != known.size:  # urllib returns what arrived when the connection closes early
        raise _Failed(f"the download stopped after {received:,} of {known.size:,} bytes")
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as error:
        raise _Failed(f"cannot write {out.name} ({error})") from error
    return digest.hexdigest()


def _describe(error: Exception, known: KnownFile, timeout: float) -> str:
    """What failed, in a few words."""
    host = urllib.parse.urlsplit(known.url).netloc
    if isinstance(error, _Failed):
        return str(error)
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if isinstance(reason, TimeoutError):
            return f"no answer from {host} within {timeout:g} s"
        detail = getattr(reason, "strerror", None) or str(reason)
        return f"cannot connect to {host} ({detail})"
    if isinstance(error, TimeoutError):
        return f"no data from {host} for {timeout:g} s"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed before the whole file arrived"
    return f"the download from {host} failed ({type(error).__name__}: {error})"


def failure_message(
    what: str,
    known: KnownFile,
    cache: pathlib.Path,
    notes: Sequence[str] = (),
    alternatives: Sequence[KnownFile] = (),
) -> str:
    """The one message of a failed download: what failed, the URL and SHA-256, where to put
    the file by hand (or an accepted alternative), and the config values that avoid it."""
    lines = [
        f"{FIELD}='{IMAGENET}': could not get torchvision's ImageNet ResNet-50 weights: {what}",
        f"  url: {known.url}",
        f"  expected SHA-256: {known.sha256} ({known.size:,} bytes)",
        *(f"  note: {note}" for note in notes),
        "To fix it, download that file on a machine with internet and either put it at",
        f"  {cache / known.name}",
        *(
            f"  (or {cache / other.name}, also accepted: {other.url}, SHA-256 {other.sha256})"
            for other in alternatives
        ),
        f"  (the cache folder: ${CACHE_ENV}/{WEIGHTS_SUBDIR}, else "
        f"~/.cache/psta_jax/{WEIGHTS_SUBDIR}),",
        "or pass --config.pretrained=/path/to/file.pth; --config.pretrained=none trains from "
        "random weights.",
    ]
    return "\n".join(lines)


def _remove(path: pathlib.Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:  # the original failure is the one to report
        logging.warning("could not remove the partial download %s: %s", path, error)
