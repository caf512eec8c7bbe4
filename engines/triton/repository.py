"""Triton model repositories for an exported ONNX file or a TensorRT plan: what models they hold,
writing them (every config validated before anything lands on disk) and checking existing ones.

Models (``<name>`` defaults to ``m2det``):

=================  ===========================================================================
``<name>``         Python backend. One encoded image per request (``image`` [1,N] uint8: JPEG,
                   PNG, ...) -> detections in that image's pixels. Decodes, resizes and calls
                   ``<name>_net`` (BLS) for the group of requests the dynamic batcher formed.
``<name>_net``     ``images`` [B,3,S,S] float32 -> detections normalized to the input (the
                   ``contract.NMS_OUTPUTS``), what every runner returns. ONNX: Python backend
                   running ONNX Runtime + ``m2det.nms``; NMS plan: the ``tensorrt_plan`` itself;
                   raw plan: Python backend calling ``<name>_trt`` + ``m2det.nms``.
``<name>_onnx``    ONNX only: the file as Triton's ``onnxruntime_onnx`` backend runs it (raw
                   boxes/scores, or the NMS outputs of an ``onnx-hard`` graph).
``<name>_trt``     Raw plans only: the ``tensorrt_plan`` (raw boxes/scores).
=================  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2det import contract
from m2det.engines.triton import model_config as mc
from m2det.engines.triton.artifact import ONNX, PLAN, Artifact, describe_onnx, describe_plan
from m2det.engines.triton.model_config import Model
from m2det.engines.triton.repository_readme import repository_readme, serve_script
from m2det.errors import M2DetError
from m2det.nms import NMSParams, get_nms_params

VERSION = "1"
MODEL_SOURCE = Path(__file__).with_name("python_model.py")
ONNX_FILE, PLAN_FILE = "model.onnx", "model.plan"
DEFAULT_MAX_BATCH = 8
DEVICES = ("cpu", "gpu")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class RepositoryOptions:
    """``max_batch``: max_batch_size of every model (default 8; a plan's profile max);
    ``preferred``: preferred batch sizes (default none; a plan's profile opt and max);
    ``queue_delay_us``: how long the dynamic batcher waits to fill a batch; ``instances``: model
    instances of the network model; ``device``: where an ONNX network runs (cpu, gpu);
    ``threads``: ONNX Runtime intra-op threads per instance; ``nms``: post-processing of raw
    graphs; ``plugin_lib``: the soft-NMS plugin library copied beside a plugin plan."""

    name: str = "m2det"
    max_batch: int | None = None
    preferred: tuple[int, ...] | None = None
    queue_delay_us: int = 1000
    instances: int = 1
    device: str = "cpu"
    threads: int | None = None
    nms: NMSParams = dataclasses.field(default_factory=lambda: get_nms_params("official"))
    plugin_lib: Path | None = None

    def check(self) -> None:
        if not _NAME.match(self.name):
            raise M2DetError(f"model name {self.name!r}: use letters, digits, '_', '-', '.'")
        if self.max_batch is not None and self.max_batch < 1:
            raise M2DetError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.preferred is not None and min(self.preferred, default=1) < 1:
            raise M2DetError(f"preferred batch sizes must be >= 1, got {list(self.preferred)}")
        if self.queue_delay_us < 0:
            raise M2DetError(f"--queue-delay-us must be >= 0, got {self.queue_delay_us}")
        if self.instances < 1:
            raise M2DetError(f"--instances must be >= 1, got {self.instances}")
        if self.device not in DEVICES:
            raise M2DetError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise M2DetError(f"--threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class ModelSummary:
    """What :func:`check_repository` found: ``platform`` (python, onnxruntime_onnx,
    tensorrt_plan), ``role`` (detect, network, native) and ``max_batch``."""

    name: str
    platform: str
    role: str
    max_batch: int


# ----------------------------------------------------------------------------- building
def _nms_dict(nms: NMSParams) -> dict[str, Any]:
    return {f.name: (int(v) if f.name == "method" else v)
            for f in dataclasses.fields(nms) for v in [getattr(nms, f.name)]}  # fmt: skip


def _served_nms(art: Artifact, options: RepositoryOptions) -> dict[str, Any]:
    """The NMS a client gets: the options' for a raw graph, the graph's own otherwise."""
    if art.graph == contract.GRAPH_RAW:
        return _nms_dict(options.nms)
    names = {f.name for f in dataclasses.fields(NMSParams)}
    return _nms_dict(NMSParams(**{k: v for k, v in (art.nms or {}).items() if k in names}))


def _batching(art: Artifact, options: RepositoryOptions) -> tuple[int, list[int]]:
    lo, opt, hi = art.batch
    if art.kind == PLAN:
        max_batch = options.max_batch or int(hi or 1)
        preferred = list(options.preferred) if options.preferred is not None else \
            sorted({b for b in (opt, hi) if b is not None and b <= max_batch})
    else:
        max_batch = options.max_batch or min(DEFAULT_MAX_BATCH, hi or DEFAULT_MAX_BATCH)
        preferred = list(options.preferred or ())
    return max_batch, preferred


def _tensor(name: str, dtype: str, dims: list[int], **kw: Any) -> dict[str, Any]:
    return {"name": name, "data_type": dtype, "dims": dims, **kw}


def _outputs(art: Artifact, variable: bool) -> list[dict[str, Any]]:
    if art.graph == contract.GRAPH_RAW and not variable:
        boxes, scores = contract.RAW_OUTPUTS
        return [_tensor(boxes, "TYPE_FP32", [art.anchors, 4]),
                _tensor(scores, "TYPE_FP32", [art.anchors, art.classes])]
    k = -1 if variable else art.keep
    num, boxes, scores, classes = contract.NMS_OUTPUTS
    return [_tensor(num, "TYPE_INT32", [1]), _tensor(boxes, "TYPE_FP32", [k, 4]),
            _tensor(scores, "TYPE_FP32", [k]), _tensor(classes, "TYPE_INT32", [k])]


def _images_input(art: Artifact) -> list[dict[str, Any]]:
    s = art.input_size
    return [_tensor(contract.INPUT, "TYPE_FP32", [3, s, s])]


def _config(name: str, backend: dict[str, str], max_batch: int, preferred: list[int],
            options: RepositoryOptions, inputs: list[dict[str, Any]],
            outputs: list[dict[str, Any]], kind: str, instances: int) -> dict[str, Any]:
    dynamic: dict[str, Any] = {"max_queue_delay_microseconds": options.queue_delay_us}
    if preferred:
        dynamic["preferred_batch_size"] = preferred
    return {"name": name, **backend, "max_batch_size": max_batch, "input": inputs,
            "output": outputs, "instance_group": [{"kind": kind, "count": instances}],
            "dynamic_batching": dynamic}  # fmt: skip


def _params(role: str, network: dict[str, Any] | None, art: Artifact,
            options: RepositoryOptions) -> dict[str, Any]:
    """The ``m2det`` parameter: what the model serves (and, for Python models, how)."""
    value = {"format": mc.PARAMETER_FORMAT, "role": role, "input_size": art.input_size,
             "graph": art.graph, "precision": art.precision, "nms": _served_nms(art, options),
             "config": art.config, "source": {"file": art.path.name, "sha256": art.sha256},
             **({"network": network} if network is not None else {})}  # fmt: skip
    return {"parameters": {mc.PARAMETER: {"string_value": json.dumps(value, sort_keys=True)}}}


def plan_models(art: Artifact, options: RepositoryOptions) -> list[Model]:
    """The models serving ``art`` (see the module doc), configs not yet validated."""
    name, net = options.name, f"{options.name}_net"
    max_batch, preferred = _batching(art, options)
    python = {"backend": "python"}
    gpu_kind = "KIND_GPU" if options.device == "gpu" else "KIND_CPU"
    models: list[Model] = []
    if art.kind == ONNX:
        network = {"kind": "onnxruntime", "file": ONNX_FILE, "device": options.device,
                   "threads": options.threads}  # fmt: skip
        cfg = _config(net, python, max_batch, preferred, options, _images_input(art),
                      _outputs(art, variable=True), gpu_kind, options.instances)
        models.append(Model({**cfg, **_params("network", network, art, options)},
                            {ONNX_FILE: art.path, "model.py": MODEL_SOURCE}))
        native = _config(f"{name}_onnx", {"platform": mc.ONNXRUNTIME}, max_batch, preferred,
                         options, _images_input(art), _outputs(art, variable=False), gpu_kind,
                         options.instances)  # fmt: skip
        models.append(Model({**native, "default_model_filename": ONNX_FILE,
                             **_params("native", None, art, options)}, {ONNX_FILE: art.path}))
    else:
        plan_name = net if art.graph != contract.GRAPH_RAW else f"{name}_trt"
        plan_cfg = _config(plan_name, {"platform": mc.TENSORRT}, max_batch, preferred, options,
                           _images_input(art), _outputs(art, variable=False), "KIND_GPU",
                           options.instances)  # fmt: skip
        extra = {}
        if art.tensorrt and art.tensorrt.get("plugin") and \
                not art.tensorrt["plugin"].get("serialized_in_plan"):
            extra[_plugin_name()] = _plugin_library(art, options)
        models.append(Model({**plan_cfg, "default_model_filename": PLAN_FILE,
                             **_params("native", None, art, options)},
                            {PLAN_FILE: art.path, PLAN_FILE + ".json": _sidecar(art.path)},
                            extra))  # fmt: skip
        if art.graph == contract.GRAPH_RAW:
            network = {"kind": "triton", "model": plan_name, "max_batch": max_batch}
            cfg = _config(net, python, max_batch, preferred, options, _images_input(art),
                          _outputs(art, variable=True), "KIND_CPU", 1)
            models.append(Model({**cfg, **_params("network", network, art, options)},
                                {"model.py": MODEL_SOURCE}))
    detect_net = {"kind": "triton", "model": net, "max_batch": max_batch}
    image = [_tensor(mc.IMAGE_INPUT, "TYPE_UINT8", [-1], allow_ragged_batch=True)]
    cfg = _config(name, python, max_batch, [], options, image, _outputs(art, variable=True),
                  "KIND_CPU", 1)
    models.insert(0, Model({**cfg, **_params("detect", detect_net, art, options)},
                           {"model.py": MODEL_SOURCE}))
    return models


def _plugin_name() -> str:
    from m2det.engines.plugin_library import PLUGIN_LIBRARY

    return PLUGIN_LIBRARY


def _plugin_library(art: Artifact, options: RepositoryOptions) -> Path:
    from m2det.engines.plugin_library import resolve_plugin_library

    lib = resolve_plugin_library(options.plugin_lib)
    recorded = (art.tensorrt or {}).get("plugin", {}).get("library")
    if lib is None and recorded and Path(recorded).is_file():
        lib = Path(recorded)
    if lib is None:
        raise M2DetError(f"{art.path.name} runs the soft-NMS plugin {contract.PLUGIN_NAME}: pass "
                         "--plugin-lib libm2det_plugins.so (built from plugins/ for the "
                         "TensorRT of your Triton) to copy it into the repository")  # fmt: skip
    return lib


def _sidecar(plan: Path) -> Path:
    from m2det.engines.plan_sidecar import sidecar_path

    return sidecar_path(plan)


# ----------------------------------------------------------------------------- writing
def write_repository(artifact: str | Path, out: str | Path,
                     options: RepositoryOptions | None = None, *,
                     force: bool = False) -> list[Model]:
    """Write the repository for ``artifact`` (``.onnx``, ``.plan``/``.engine``) to ``out``.

    Built in a temporary sibling folder, checked with :func:`check_repository`, then moved into
    place: a failure leaves nothing behind, and an existing ``out`` is replaced only with
    ``force``."""
    options = options or RepositoryOptions()
    options.check()
    out = Path(out)
    if out.exists() and not force:
        raise M2DetError(f"{out} exists: pass --force to replace it")
    path = Path(artifact)
    art = describe_plan(path) if path.suffix.lower() in (".plan", ".engine") else \
        describe_onnx(path)
    models = plan_models(art, options)
    texts = {m.name: _validated_text(m) for m in models}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        placed: dict[Path, Path] = {}
        for m in models:
            _write_model(tmp / m.name, m, texts[m.name], placed)
        _write_root_files(tmp, models, art)
        check_repository(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return models


def _validated_text(model: Model) -> str:
    """config.pbtxt text: the dict through the protobuf schema and back."""
    message = mc.from_dict(model.config, f"model {model.name!r}")
    text = mc.to_text(message)
    if mc.parse_text(text, model.name) != message:
        raise M2DetError(f"model {model.name!r}: config does not survive a text round trip")
    return text


def _write_model(folder: Path, model: Model, text: str, placed: dict[Path, Path]) -> None:
    version = folder / VERSION
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(text)
    for dest, src in [*((version / k, v) for k, v in model.files.items()),
                      *((folder / k, v) for k, v in model.extra.items())]:
        _place(src, dest, placed)


def _place(src: Path, dest: Path, placed: dict[Path, Path]) -> None:
    """Copy ``src`` to ``dest``; a file placed twice (the ONNX file of ``<name>_net`` and
    ``<name>_onnx``) is hard-linked to its first copy where the file system allows."""
    first = placed.get(src.resolve())
    if first is not None:
        try:
            os.link(first, dest)
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)
    placed.setdefault(src.resolve(), dest)


def _replace(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, trash / out.name)
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def _write_root_files(folder: Path, models: list[Model], art: Artifact) -> None:
    """README.md and serve.sh (Triton loads only folders, so files at the root ride along)."""

    (folder / "README.md").write_text(repository_readme(models, art))
    script = folder / "serve.sh"
    script.write_text(serve_script(models, art))
    script.chmod(0o755)


# ----------------------------------------------------------------------------- checking
def check_repository(repo: str | Path) -> list[ModelSummary]:
    """Parse every ``<model>/config.pbtxt`` of ``repo`` (Triton's schema) and check it against the
    artifact it serves (:func:`model_config.check_config`); a Python model calling another model
    is checked against that model. Returns one summary per model."""
    repo = Path(repo)
    if not repo.is_dir():
        raise M2DetError(f"model repository not found: {repo}")
    configs: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()):
        source = folder / "config.pbtxt"
        if not source.is_file():
            raise M2DetError(f"{folder}: no config.pbtxt (Triton loads every folder of a "
                             "repository as a model)")  # fmt: skip
        cfg = mc.to_dict(mc.parse_text(source.read_text(), str(source)))
        if cfg.get("name", folder.name) != folder.name:
            raise M2DetError(f"{source}: name {cfg['name']!r} differs from its folder")
        cfg["name"] = folder.name
        configs[folder.name] = cfg
    if not configs:
        raise M2DetError(f"{repo}: no models")
    expected: dict[str, mc.Expected] = {}
    summaries = []
    for name in _dependency_order(configs):
        cfg = configs[name]
        exp = _expected(repo / name, cfg, configs, expected)
        mc.check_config(cfg, exp)
        expected[name] = exp
        role = mc.parameters_of(cfg)["role"]
        summaries.append(ModelSummary(name, mc.platform_of(cfg), role,
                                      int(cfg.get("max_batch_size", 0))))
    return sorted(summaries, key=lambda s: s.name)


def _target(cfg: dict[str, Any]) -> str | None:
    if mc.platform_of(cfg) != mc.PYTHON:
        return None
    network = mc.parameters_of(cfg).get("network") or {}
    return network.get("model") if network.get("kind") == "triton" else None


def _dependency_order(configs: dict[str, dict[str, Any]]) -> list[str]:
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in seen:
            raise M2DetError(f"model {name!r} calls itself through {' -> '.join(seen)}")
        target = _target(configs[name])
        if target is not None:
            if target not in configs:
                raise M2DetError(f"model {name!r} calls model {target!r}, which the repository "
                                 "does not have")  # fmt: skip
            visit(target, (*seen, name))
        order.append(name)

    for name in configs:
        visit(name, ())
    return order


def _version_file(folder: Path, cfg: dict[str, Any], default: str) -> Path:
    path = folder / VERSION / cfg.get("default_model_filename", default)
    if not path.is_file():
        raise M2DetError(f"model {folder.name!r}: {path} not found")
    return path


def _expected(folder: Path, cfg: dict[str, Any], configs: dict[str, dict[str, Any]],
              known: dict[str, mc.Expected]) -> mc.Expected:
    platform = mc.platform_of(cfg)
    if platform == mc.ONNXRUNTIME:
        return _from_artifact(describe_onnx(_version_file(folder, cfg, ONNX_FILE)))
    if platform == mc.TENSORRT:
        return _from_artifact(describe_plan(_version_file(folder, cfg, PLAN_FILE)))
    if not (folder / VERSION / "model.py").is_file():
        raise M2DetError(f"model {folder.name!r}: {VERSION}/model.py not found")
    network = mc.parameters_of(cfg).get("network") or {}
    if network.get("kind") == "onnxruntime":
        return _from_artifact(describe_onnx(_version_file(folder, {}, network.get("file", ""))))
    target = network.get("model")
    if target not in known:  # _dependency_order visits targets first
        raise M2DetError(f"model {folder.name!r}: unknown network model {target!r}")
    target_batch = int(configs[target].get("max_batch_size", 0))
    if int(network.get("max_batch", target_batch)) != target_batch:
        raise M2DetError(f"model {folder.name!r}: records max_batch {network.get('max_batch')} "
                         f"for {target!r}, which has max_batch_size {target_batch}")
    return dataclasses.replace(known[target], max_batch=None, min_batch=1)


def _from_artifact(art: Artifact) -> mc.Expected:
    lo, _, hi = art.batch
    return mc.Expected(art.input_size, art.graph, art.anchors, art.classes, art.keep, hi, lo)
