"""``TritonRunner``: the runner protocol (``m2det.engines.base.Runner``) over a Triton server.

It sends preprocessed batches ([B,3,S,S] float32) to a model of a repository ``m2det-triton``
wrote (default ``m2det_net``) over HTTP (``HOST:PORT``, ``http://HOST:PORT``) or gRPC
(``grpc://HOST:PORT``) and returns ``Detections`` like a local runner. The model's config tells
it the M2Det config, precision and NMS (the ``m2det`` parameter); raw outputs (``m2det_onnx``,
``m2det_trt``) go through ``m2det.nms.batched_nms`` here with the runner's NMS, NMS outputs are
returned as served.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import threading
from typing import Any

import numpy as np

from m2det import contract
from m2det.config import M2DetConfig
from m2det.detections import Detections
from m2det.engines.base import Runner, Timing, check_batch, now_ms
from m2det.engines.triton import model_config as mc
from m2det.errors import M2DetError
from m2det.nms import NMSParams, batched_nms

DEFAULT_MODEL = "m2det_net"
_URL = re.compile(r"^(?:(?P<scheme>http|grpc)://)?(?P<host>[^/:\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)/?$")
# NMS fields that change which boxes are kept (the caps only shorten the list).
_SEMANTIC = ("method", "score_threshold", "iou_threshold", "sigma", "min_score", "keep_per_class")


def parse_url(url: str) -> tuple[str, str]:
    """``HOST:PORT`` / ``http://HOST:PORT`` -> ("http", "HOST:PORT"); ``grpc://HOST:PORT`` ->
    ("grpc", "HOST:PORT"); M2DetError otherwise."""
    m = _URL.match(url.strip())
    if m is None or not 0 < int(m["port"]) < 65536:
        raise M2DetError(f"bad Triton address {url!r}: use HOST:PORT (HTTP) or grpc://HOST:PORT")
    return m["scheme"] or "http", f"{m['host']}:{m['port']}"


def connect(url: str, timeout_s: float = 60.0) -> tuple[Any, Any, str]:
    """(client, tritonclient module, protocol) for ``url``; M2DetError when tritonclient is
    missing or the server is not live."""
    protocol, address = parse_url(url)
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as e:
        raise M2DetError(f"the Triton client needs tritonclient[{protocol}] ({e.name} is not "
                         "importable): pip install 'm2det-deploy[triton]'") from None
    try:
        if protocol == "grpc":
            client = module.InferenceServerClient(address)
        else:
            client = module.InferenceServerClient(address, connection_timeout=timeout_s,
                                                  network_timeout=timeout_s)
        live = client.is_server_live()
    except Exception as e:  # noqa: BLE001 - connection errors come in many types
        raise M2DetError(f"cannot reach Triton at {url}: {_first_line(e)}") from None
    if not live:
        raise M2DetError(f"Triton at {url} is not live")
    return client, module, protocol


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def model_config(client: Any, protocol: str, model: str, url: str) -> dict[str, Any]:
    """The served model's config as a dict (Triton's field names); M2DetError when the server
    does not have the model ready."""
    try:
        ready = client.is_model_ready(model)
    except Exception as e:  # noqa: BLE001
        raise M2DetError(f"Triton at {url}: {_first_line(e)}") from None
    if not ready:
        names = _ready_models(client, protocol)
        raise M2DetError(f"Triton at {url} has no ready model {model!r} (ready: "
                         f"{', '.join(names) or 'none'})")  # fmt: skip
    if protocol == "grpc":
        return mc.to_dict(client.get_model_config(model).config)
    config: dict[str, Any] = client.get_model_config(model)
    for tensor in config.get("input", []) + config.get("output", []):
        tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
    return config


def _ready_models(client: Any, protocol: str) -> list[str]:
    try:
        index = client.get_model_repository_index()
    except Exception:  # noqa: BLE001
        return []
    if protocol == "grpc":
        return [m.name for m in index.models if m.state == "READY"]
    return [m["name"] for m in index if m.get("state") == "READY"]


class TritonRunner(Runner):
    """Run a model served by Triton (see the module doc).

    ``nms``: post-processing for models with raw outputs; a model with NMS outputs applies the
    NMS it was written with (a different ``nms`` draws a warning). ``model``: the model name.
    Threads may share a runner: each uses a connection of its own.
    """

    backend = "triton"

    def __init__(self, url: str, nms: NMSParams | None = None, *, model: str = DEFAULT_MODEL,
                 timeout_s: float = 60.0) -> None:
        self.url = url
        self.model = model
        self.timeout_s = timeout_s
        client, self._module, self.protocol = connect(url, timeout_s)
        self._local = threading.local()
        self._local.client = client
        self._clients = [client]
        self._lock = threading.Lock()
        cfg = model_config(client, self.protocol, model, url)
        params = _parameters(cfg, url)
        inputs = {t["name"]: t for t in cfg.get("input", [])}
        if contract.INPUT not in inputs:
            raise M2DetError(f"model {model!r} at {url} takes {sorted(inputs)}, not "
                             f"{contract.INPUT!r}: use its network model (e.g. {DEFAULT_MODEL})")
        self.outputs = tuple(t["name"] for t in cfg.get("output", []))
        self.raw = set(self.outputs) == set(contract.RAW_OUTPUTS)
        if not self.raw and set(self.outputs) != set(contract.NMS_OUTPUTS):
            raise M2DetError(f"model {model!r} at {url} returns {list(self.outputs)}")
        served = NMSParams(**params["nms"])
        chosen = served if nms is None or not self.raw else nms
        if nms is not None and not self.raw and _differs(nms, served):
            print(f"warning: model {model!r} applies its own NMS {dataclasses.asdict(served)}; "
                  "the requested NMS parameters are not used", file=sys.stderr)  # fmt: skip
        super().__init__(M2DetConfig.from_dict(params["config"]), chosen,
                         precision=params.get("precision", "fp32"))
        self.max_batch = int(cfg.get("max_batch_size", 0)) or 1
        self.served_config = cfg
        self.parameters = params

    @property
    def batch_range(self) -> tuple[int, int]:
        return (1, 1 << 30)  # larger batches are sent in chunks of max_batch_size

    @property
    def name(self) -> str:
        return f"triton-{self.precision}"

    def _client(self) -> Any:
        """This thread's connection (tritonclient's HTTP client only works in the thread that
        made it, so each thread gets its own)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client, _, _ = connect(self.url, self.timeout_s)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def deactivate(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a connection of a finished thread
                pass
        self._local = threading.local()

    def infer(self, images: Any) -> Detections:
        """images [B,3,S,S] float32 BGR 0-255 -> Detections (normalized boxes)."""
        check_batch(images, self.input_size)
        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        x = np.ascontiguousarray(images, dtype=np.float32)
        t0 = now_ms()
        parts = [self._infer(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        t1 = now_ms()
        if self.raw:
            boxes = np.concatenate([p[contract.RAW_OUTPUTS[0]] for p in parts])
            scores = np.concatenate([p[contract.RAW_OUTPUTS[1]] for p in parts])
            dets = batched_nms(boxes, scores, self.nms)
        else:
            dets = Detections.concatenate([Detections.from_nms_outputs(p) for p in parts])
        self.last_timing = Timing(network=t1 - t0, nms=now_ms() - t1)
        return dets

    def _infer(self, x: np.ndarray) -> dict[str, np.ndarray]:
        m = self._module
        inp = m.InferInput(contract.INPUT, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        outs = [m.InferRequestedOutput(name) for name in self.outputs]
        try:
            result = self._client().infer(self.model, [inp], outputs=outs)
            arrays = {name: result.as_numpy(name) for name in self.outputs}
        except ValueError as e:  # a tensor with fewer bytes than its shape
            raise M2DetError(f"Triton at {self.url} returned malformed outputs ({e}); Python "
                             "models before Triton 24.11 do so with numpy >= 2 in their "
                             "environment") from None  # fmt: skip
        except Exception as e:  # noqa: BLE001 - InferenceServerException and transport errors
            raise M2DetError(f"Triton at {self.url}, model {self.model!r}: "
                             f"{_first_line(e)}") from None
        if any(a is None or a.shape[0] != x.shape[0] for a in arrays.values()):
            raise M2DetError(f"Triton at {self.url} returned outputs for the wrong batch")
        return arrays


def _parameters(cfg: dict[str, Any], url: str) -> dict[str, Any]:
    try:
        params = mc.parameters_of(cfg)
    except M2DetError as e:
        raise M2DetError(f"{e} at {url}: serve a repository m2det-triton wrote") from None
    return params


def _differs(a: NMSParams, b: NMSParams) -> bool:
    return any(getattr(a, f) != getattr(b, f) for f in _SEMANTIC)
