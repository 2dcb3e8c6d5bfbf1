"""config.pretrained: "imagenet" downloads, verifies and caches; every failure leaves nothing
partial and says how to provide the file by hand. A local HTTP server stands in for
download.pytorch.org: no test touches the network."""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import logging
import os
import pathlib
import pickle
import socket
import struct
import tarfile
import threading

import numpy as np
import pytest

from psta_jax.interop import imagenet_weights
from psta_jax.interop.imagenet_weights import (
    KnownFile,
    PretrainedWeightsError,
    cache_dir,
    resolve_pretrained,
)
from psta_jax.runtime.errors import ConfigError, UserError

PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes standing in for a .pth file
NAME = "resnet50-test.pth"


def _known(url: str, payload: bytes = PAYLOAD, name: str = NAME) -> KnownFile:
    return KnownFile(
        name=name, url=url, sha256=hashlib.sha256(payload).hexdigest(), size=len(payload)
    )


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.routes[path]` = (body, Content-Length sent), then closes."""

    def do_GET(self):
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, length = self.server.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """(base URL, routes) of an HTTP server on 127.0.0.1; add routes[path] = (body, length)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = {}
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.routes
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def refused_url():
    """A URL on a port that is bound but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/models/{NAME}"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No proxy between the tests and their server; the default cache is a temporary folder."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(imagenet_weights.CACHE_ENV, str(tmp_path / "default_cache"))


def _serve(server, payload: bytes = PAYLOAD, length: int | None = None) -> str:
    base, routes = server
    routes[f"/models/{NAME}"] = (payload, len(payload) if length is None else length)
    return f"{base}/models/{NAME}"


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_download_is_cached_and_the_cache_needs_no_server(server, refused_url, tmp_path, caplog):
    cache = tmp_path / "cache"
    known = _known(_serve(server))
    with caplog.at_level(logging.INFO):
        path = resolve_pretrained("imagenet", known_files=[known], cache=cache)
    assert path == cache / NAME and path.read_bytes() == PAYLOAD
    assert _files(cache) == [NAME]
    assert f"{path} (SHA-256 {known.sha256})" in caplog.text

    offline = KnownFile(NAME, refused_url, known.sha256, known.size)
    assert resolve_pretrained("imagenet", known_files=[offline], cache=cache) == path


def test_connection_refused_names_the_url_and_the_cache_path(refused_url, tmp_path):
    cache = tmp_path / "cache"
    known = _known(refused_url)
    other = _known("http://example.invalid/other.pth", b"other", name="other.pth")
    with pytest.raises(PretrainedWeightsError) as error:
        resolve_pretrained("imagenet", known_files=[known, other], cache=cache)
    message = str(error.value)
    for text in (
        "cannot connect to 127.0.0.1",
        refused_url,
        known.sha256,
        str(cache / NAME),
        f"or {cache / 'other.pth'}, also accepted: {other.url}, SHA-256 {other.sha256}",
        "--config.pretrained=/path/to/file.pth",
        "--config.pretrained=none",
    ):
        assert text in message, text
    assert isinstance(error.value, UserError)
    assert _files(cache) == []


def test_truncated_body_leaves_nothing(server, tmp_path):
    cache = tmp_path / "cache"
    url = _serve(server, PAYLOAD[:4000], length=len(PAYLOAD))  # then the connection closes
    with pytest.raises(PretrainedWeightsError, match="stopped after 4,000 of 10,240 bytes"):
        resolve_pretrained("imagenet", known_files=[_known(url)], cache=cache)
    assert _files(cache) == []


def test_oversized_body_leaves_nothing(server, tmp_path):
    cache = tmp_path / "cache"
    url = _serve(server, PAYLOAD + b"extra")
    with pytest.raises(PretrainedWeightsError, match="announced 10245 bytes, expected 10240"):
        resolve_pretrained("imagenet", known_files=[_known(url)], cache=cache)
    assert _files(cache) == []


def test_wrong_hash_names_both_hashes_and_caches_nothing(server, tmp_path):
    cache = tmp_path / "cache"
    served = PAYLOAD[::-1]
    known = _known(_serve(server, served))  # the expected hash is PAYLOAD's
    with pytest.raises(PretrainedWeightsError) as error:
        resolve_pretrained("imagenet", known_files=[known], cache=cache)
    assert f"SHA-256 {hashlib.sha256(served).hexdigest()}, expected {known.sha256}" in str(
        error.value
    )
    assert _files(cache) == []


def test_http_error_is_named(server, tmp_path):
    base, _ = server
    with pytest.raises(PretrainedWeightsError, match="HTTP 404"):
        resolve_pretrained(
            "imagenet", known_files=[_known(f"{base}/missing.pth")], cache=tmp_path / "cache"
        )
    assert _files(tmp_path / "cache") == []


def test_unwritable_cache_is_named(refused_url, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(PretrainedWeightsError, match="cannot write to the cache folder"):
        resolve_pretrained("imagenet", known_files=[_known(refused_url)], cache=blocker / "w")


def test_ctrl_c_removes_the_partial_file(tmp_path):
    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(PAYLOAD))}

        def read(self, size=-1):
            if self.tell():
                raise KeyboardInterrupt
            return super().read(100)

    known = _known("http://example.invalid/w.pth")
    with pytest.raises(KeyboardInterrupt):
        imagenet_weights.download(
            known, tmp_path / "cache", urlopen=lambda url, timeout: Response(PAYLOAD)
        )
    assert _files(tmp_path / "cache") == []


def test_a_cached_file_with_a_wrong_hash_is_set_aside_and_downloaded_again(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / NAME).write_bytes(b"someone else's file")
    bad = hashlib.sha256(b"someone else's file").hexdigest()
    path = resolve_pretrained("imagenet", known_files=[_known(_serve(server))], cache=cache)
    assert path.read_bytes() == PAYLOAD
    assert (cache / f"{NAME}.bad-{bad[:12]}").read_bytes() == b"someone else's file"
    assert _files(cache) == sorted([NAME, f"{NAME}.bad-{bad[:12]}"])


def test_the_second_accepted_name_is_used_from_the_cache(refused_url, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    other = _known("http://example.invalid/other.pth", b"other weights", name="other.pth")
    (cache / "other.pth").write_bytes(b"other weights")
    path = resolve_pretrained("imagenet", known_files=[_known(refused_url), other], cache=cache)
    assert path == cache / "other.pth"


def test_psta_jax_cache_is_honoured(server, tmp_path, monkeypatch):
    monkeypatch.setenv(imagenet_weights.CACHE_ENV, str(tmp_path / "mine"))
    path = resolve_pretrained("imagenet", known_files=[_known(_serve(server))])
    assert path == tmp_path / "mine" / "weights" / NAME and path.read_bytes() == PAYLOAD
    assert cache_dir({imagenet_weights.CACHE_ENV: "/c"}) == pathlib.Path("/c/weights")
    assert cache_dir({}) == pathlib.Path.home() / ".cache" / "psta_jax" / "weights"


def test_default_files_are_torchvision_s_current_name_then_the_release_s():
    current, release = imagenet_weights.IMAGENET_RESNET50  # the first is the one downloaded
    assert current == imagenet_weights.TORCHVISION_RESNET50
    assert current.name == "resnet50-0676ba61.pth" and current.url.endswith(current.name)
    assert release.name == "resnet50-19c8e357.pth" and release.url.endswith(release.name)
    for known in (release, current):
        assert known.sha256.startswith(known.name[9:17]) and len(known.sha256) == 64


def test_the_default_download_is_torchvision_s_current_file(monkeypatch, tmp_path):
    requested = []

    def refuse(known, cache, **kwargs):
        requested.append(known.name)
        raise PretrainedWeightsError("offline")

    monkeypatch.setattr(imagenet_weights, "download", refuse)
    with pytest.raises(PretrainedWeightsError):
        resolve_pretrained("imagenet", cache=tmp_path / "cache")
    assert requested == ["resnet50-0676ba61.pth"]

    message = imagenet_weights.failure_message(
        "offline", *imagenet_weights.IMAGENET_RESNET50[:1], tmp_path,
        alternatives=imagenet_weights.IMAGENET_RESNET50[1:],
    )  # fmt: skip
    assert "url: https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert f"or {tmp_path / 'resnet50-19c8e357.pth'}, also accepted" in message


def test_a_local_path_is_used_and_a_missing_one_names_the_field(tmp_path):
    weights = tmp_path / "mine.pth"
    weights.write_bytes(PAYLOAD)
    assert resolve_pretrained(str(weights)) == weights
    missing = tmp_path / "missing.pth"
    with pytest.raises(ConfigError, match="config.pretrained") as error:
        resolve_pretrained(str(missing))
    assert str(missing) in str(error.value)


@pytest.mark.parametrize("value", ["none", "", " None "])
def test_none_means_random_weights(value):
    assert resolve_pretrained(value) is None


# ----------------------------------------------------------------------------- the training loop


def _no_download(*args, **kwargs):
    raise AssertionError("nothing may be downloaded")


def test_loop_does_not_download_for_a_backbone_that_is_not_resnet50(monkeypatch, tmp_path, caplog):
    from configs import demo
    from psta_jax.training import loop
    from tests.helpers.tiny import tiny_model, tiny_model_config

    monkeypatch.setenv(imagenet_weights.CACHE_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(imagenet_weights, "download", _no_download)
    config = demo.get_config()
    assert config.pretrained == "imagenet" and config.model.depth != 50
    model = tiny_model()
    with caplog.at_level(logging.INFO):
        loop._load_pretrained(model, config.pretrained, config.model)
        loop._load_pretrained(model, "imagenet", tiny_model_config(depth=50))
    assert "starts from random weights" in caplog.text
    assert not (tmp_path / "empty").exists()

    with pytest.raises(ConfigError, match=r"config.pretrained='/x/r50.pth'.*depth 10, width 4"):
        loop._load_pretrained(model, "/x/r50.pth", tiny_model_config())


def test_loop_loads_imagenet_into_resnet50_and_warns_for_none(server, monkeypatch, caplog):
    from psta_jax.interop import torch_import
    from psta_jax.training import loop
    from tests.helpers.tiny import tiny_model_config

    loaded = []
    known = _known(_serve(server))
    monkeypatch.setattr(imagenet_weights, "IMAGENET_RESNET50", (known,))
    monkeypatch.setattr(imagenet_weights, "read_weights", lambda found: {"read": found})
    monkeypatch.setattr(
        torch_import, "load_torchvision_resnet50", lambda source, model: loaded.append(source)
    )
    resnet50 = tiny_model_config(depth=50, width=64)
    loop._load_pretrained(object(), "imagenet", resnet50)
    assert loaded == [{"read": imagenet_weights.PretrainedFile(cache_dir() / NAME, known.sha256)}]

    with caplog.at_level(logging.WARNING):
        loop._load_pretrained(object(), "none", resnet50)
    assert "RANDOM weights, as config.pretrained='none' asks" in caplog.text
    assert len(loaded) == 1


def test_served_torchvision_file_loads_into_the_backbone(server, tmp_path):
    torch = pytest.importorskip("torch")
    from psta_jax.interop import export_state_dict, load_torchvision_resnet50
    from tests.helpers.tiny import tiny_model

    donor, model = tiny_model(depth=50, seed=4), tiny_model(depth=50)
    state_dict = {
        k: torch.from_numpy(np.array(v)) for k, v in export_state_dict(donor.base).items()
    }
    state_dict.update({"fc.weight": torch.zeros(1000, 128), "fc.bias": torch.zeros(1000)})
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    payload = buffer.getvalue()

    known = _known(_serve(server, payload), payload)
    path = resolve_pretrained("imagenet", known_files=[known], cache=tmp_path / "cache")
    load_torchvision_resnet50(path, model)
    np.testing.assert_array_equal(
        model.base.layer3[1].conv2.kernel[...], donor.base.layer3[1].conv2.kernel[...]
    )


def _refuse_to_locate(*args, **kwargs):
    raise AssertionError("a resumed run must not resolve config.pretrained")


def test_loop_loads_nothing_when_the_run_resumes(monkeypatch, caplog):
    from psta_jax.training import loop
    from tests.helpers.tiny import tiny_model_config

    monkeypatch.setattr(imagenet_weights, "locate_pretrained", _refuse_to_locate)
    resnet50, small = tiny_model_config(depth=50, width=64), tiny_model_config()
    with caplog.at_level(logging.INFO):
        loop._load_pretrained(object(), "imagenet", resnet50, resume_step=12)
        # Not even checked against the backbone: the checkpoint's weights replace the model's.
        loop._load_pretrained(object(), "/x/r50.pth", small, resume_step=0)
    assert "resume from (latest step 12): config.pretrained='imagenet' is not loaded" in (
        caplog.text
    )
    with pytest.raises(AssertionError, match="must not resolve"):
        loop._load_pretrained(object(), "imagenet", resnet50)


@pytest.mark.slow
def test_a_resumed_run_does_not_resolve_pretrained(monkeypatch, tmp_path):
    from psta_jax.training import loop
    from tests.helpers.tiny import tiny_run_config

    data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "run")
    config = tiny_run_config(data_dir, num_train_steps=2, eval_every_steps=100, pretrained="none")
    loop.train_and_evaluate(config, workdir)
    # A path on the tiny backbone is refused, before anything is read (ConfigError), unless
    # the run resumes: the checkpoint of step 2 holds the weights.
    monkeypatch.setattr(imagenet_weights, "locate_pretrained", _refuse_to_locate)
    config.pretrained = str(tmp_path / "missing.pth")
    metrics = loop.train_and_evaluate(config, workdir)
    assert "mAP" in metrics


# ------------------------------------------------------------- reading: pinned and unpinned files


def _legacy_tar_pth(path: pathlib.Path, values: np.ndarray) -> None:
    """A file in torch.save's legacy tar format holding {'w': tensor(values)} (float32, 2-D):
    members 'storages' (raw tensor data), 'tensors' (their views) and 'pickle' (the object,
    with the tensor as a persistent id)."""
    torch = pytest.importorskip("torch")
    values = np.ascontiguousarray(values, np.float32)
    storage_key, tensor_key = 1, 2

    storages = io.BytesIO()
    pickle.dump(1, storages, protocol=2)
    pickle.dump((storage_key, "cpu", torch.FloatStorage), storages, protocol=2)
    storages.write(struct.pack("<q", values.size) + values.tobytes())
    pickle.dump([], storages, protocol=2)  # no views of storages
    tensors = io.BytesIO()
    pickle.dump(1, tensors, protocol=2)
    pickle.dump((tensor_key, storage_key, None), tensors, protocol=2)
    strides = (values.shape[1], 1)
    tensors.write(struct.pack("<i4x2q2qq", 2, *values.shape, *strides, 0))

    class Tensor:
        pass

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return str(tensor_key) if isinstance(obj, Tensor) else None

    obj = io.BytesIO()
    Pickler(obj, protocol=2).dump({"w": Tensor()})
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [
            ("sys_info", pickle.dumps({"little_endian": True}, protocol=2)),
            ("storages", storages.getvalue()),
            ("tensors", tensors.getvalue()),
            ("pickle", obj.getvalue()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _pinned(path: pathlib.Path) -> KnownFile:
    data = path.read_bytes()
    return KnownFile(path.name, "http://example.invalid/x", hashlib.sha256(data).hexdigest(), 1)


def test_a_legacy_tar_file_is_read_only_when_its_hash_is_pinned(tmp_path):
    from psta_jax.interop.torch_import import NotATorchCheckpointError

    path = tmp_path / "resnet50-legacy.pth"
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    _legacy_tar_pth(path, values)

    state_dict = imagenet_weights.read_weights(path, known_files=[_pinned(path)])
    np.testing.assert_array_equal(state_dict["w"], values)

    with pytest.raises(NotATorchCheckpointError) as error:
        imagenet_weights.read_weights(path)  # not one of IMAGENET_RESNET50's hashes
    message = str(error.value)
    for text in (
        "legacy tar format",
        "pinned by their SHA-256",
        "torch.save(state_dict, new_path)",
    ):
        assert text in message, text
    assert "is not a PyTorch checkpoint" not in message


def test_a_pinned_file_may_hold_objects_weights_only_refuses(tmp_path):
    torch = pytest.importorskip("torch")
    from psta_jax.interop.torch_import import WeightImportError

    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=1)}, path)

    found = imagenet_weights.PretrainedFile(path, _pinned(path).sha256)
    state_dict = imagenet_weights.read_weights(found, known_files=[_pinned(path)])
    np.testing.assert_array_equal(state_dict["w"], np.ones(3, np.float32))

    with pytest.raises(WeightImportError, match="argparse.Namespace"):
        imagenet_weights.read_weights(path)
    other = KnownFile("other.pth", "http://example.invalid/o", hashlib.sha256(b"o").hexdigest(), 1)
    with pytest.raises(WeightImportError, match="argparse.Namespace"):
        imagenet_weights.read_weights(path, known_files=[other])
