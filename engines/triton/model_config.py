"""Triton model configurations (``config.pbtxt``): built from dicts, validated field by field by
Triton's own protobuf schema (``tritonclient.grpc.model_config_pb2``), then by meaning against the
artifact the model serves (:func:`check_config`).

What :func:`check_config` enforces, beyond the schema:

* the ``m2det`` JSON parameter every model carries: its role for the backend, a valid M2Det
  config and NMS, the input size; for Python models the network (a file or a model to call);
* tensors: names and types of ``m2det.contract``; the input ``images`` [3,S,S] with S the
  artifact's input size; raw outputs ``boxes`` [A,4] / ``scores`` [A,C] with A priors and C
  classes; NMS outputs with K detections (-1: variable, Python models); the ``detect`` role's
  ``image`` [-1] uint8 with ragged batching;
* batching: ``max_batch_size`` within what the artifact accepts (a plan's profile max; a plan's
  profile must start at 1 because the dynamic batcher forms any batch from 1 up), preferred batch
  sizes increasing within [1, max_batch_size], no dynamic batching without a batch dimension;
* instances: ``tensorrt_plan`` models on ``KIND_GPU``, at least one instance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2det import contract
from m2det.errors import M2DetError

#: Key of the JSON parameter every model m2det-triton writes carries.
PARAMETER = "m2det"
#: Input of the ``detect`` role: one encoded image per request.
IMAGE_INPUT = "image"
#: ``detect``: encoded image in; ``network``: preprocessed batch in (Python models);
#: ``native``: the artifact as Triton's onnxruntime/tensorrt backend runs it.
ROLES = ("detect", "network", "native")
PYTHON, ONNXRUNTIME, TENSORRT = "python", "onnxruntime_onnx", "tensorrt_plan"
PLATFORMS = (PYTHON, ONNXRUNTIME, TENSORRT)
#: Format tag of the JSON parameter.
PARAMETER_FORMAT = "m2det-triton/1"


def _pb() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise M2DetError(f"Triton model configs need tritonclient[grpc] ({e.name} is not "
                         "importable): pip install 'm2det-deploy[triton]'") from None
    return model_config_pb2


def from_dict(config: dict[str, Any], source: str) -> Any:
    """A ``ModelConfig`` message from a dict with Triton's field names; M2DetError (one line)
    for a field or enum value the schema does not have."""
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(config, _pb().ModelConfig())
    except json_format.ParseError as e:
        raise M2DetError(f"{source}: not a valid Triton model config: "
                         f"{str(e).splitlines()[0]}") from None


def parse_text(text: str, source: str) -> Any:
    """Parse ``config.pbtxt`` text into a ``ModelConfig`` (schema errors are one line)."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, _pb().ModelConfig())
    except text_format.ParseError as e:
        raise M2DetError(f"{source}: not a valid Triton model config: {e}") from None


def to_text(message: Any) -> str:
    """``config.pbtxt`` text of a ``ModelConfig`` (parses back to the same message)."""
    from google.protobuf import text_format

    return str(text_format.MessageToString(message))


def to_dict(message: Any) -> dict[str, Any]:
    """Plain dict (Triton's field names, int64 as int) of a ``ModelConfig``."""
    from google.protobuf import json_format

    data: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for tensor in data.get("input", []) + data.get("output", []):
        tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
    return data


def platform_of(config: dict[str, Any]) -> str:
    """``python``, ``onnxruntime_onnx`` or ``tensorrt_plan`` (M2DetError for anything else)."""
    backend, platform = config.get("backend", ""), config.get("platform", "")
    if backend == "python":
        return PYTHON
    if platform == ONNXRUNTIME or backend == "onnxruntime":
        return ONNXRUNTIME
    if platform == TENSORRT or backend == "tensorrt":
        return TENSORRT
    raise M2DetError(f"model {config.get('name')!r}: backend {backend!r} / platform {platform!r} "
                     "is not one m2det-triton writes (python, onnxruntime_onnx, tensorrt_plan)")


def parameters_of(config: dict[str, Any]) -> dict[str, Any]:
    """The ``m2det`` JSON parameter every model ``m2det-triton`` writes carries (what it serves:
    role, M2Det config, precision, graph, NMS, source file; Python models: the network)."""
    name = config.get("name")
    try:
        raw = config["parameters"][PARAMETER]["string_value"]
    except KeyError:
        raise M2DetError(f"model {name!r} has no {PARAMETER!r} parameter (not written by "
                         "m2det-triton)") from None
    try:
        params = json.loads(raw)
    except ValueError:
        raise M2DetError(f"model {name!r}: parameter {PARAMETER!r} is not JSON") from None
    if not isinstance(params, dict) or params.get("format") != PARAMETER_FORMAT:
        raise M2DetError(f"model {name!r}: parameter {PARAMETER!r} is not {PARAMETER_FORMAT!r}")
    return params


@dataclass(frozen=True)
class Expected:
    """What the served artifact accepts and returns: ``input_size`` S, ``graph`` (a
    ``contract.GRAPH_KINDS`` value), ``anchors`` A and ``classes`` C (raw outputs), ``keep`` K
    (NMS outputs; -1 variable), ``max_batch`` the largest batch it runs (None: unbounded) and
    ``min_batch`` the smallest."""

    input_size: int
    graph: str
    anchors: int
    classes: int
    keep: int
    max_batch: int | None
    min_batch: int = 1


def check_config(config: dict[str, Any], expected: Expected) -> None:
    """M2DetError naming the model and the first field whose meaning is wrong (see module doc)."""
    name = config.get("name") or "?"
    platform = platform_of(config)
    params = parameters_of(config)
    role = params.get("role", "")
    _check_parameters(name, params, expected, platform)
    _check_batching(name, config, expected, platform)
    _check_instances(name, config, platform)
    _check_inputs(name, config, expected, role)
    _check_outputs(name, config, expected, platform, role)


def _check_parameters(name: str, params: dict[str, Any], expected: Expected,
                      platform: str) -> None:
    from m2det.config import M2DetConfig
    from m2det.nms import NMSParams

    roles = ROLES[:2] if platform == PYTHON else ROLES[2:]
    if params.get("role") not in roles:
        raise M2DetError(f"model {name!r}: role {params.get('role')!r}, expected one of {roles} "
                         f"for a {platform} model")
    try:
        M2DetConfig.from_dict(params.get("config") or {})
        NMSParams(**params.get("nms", {}))
    except (TypeError, ValueError, M2DetError) as e:
        raise M2DetError(f"model {name!r}: bad M2Det config or NMS parameters ({e})") from None
    if params.get("input_size") != expected.input_size:
        raise M2DetError(f"model {name!r}: input_size {params.get('input_size')} but the network "
                         f"takes {expected.input_size}")
    if platform != PYTHON:
        return
    network = params.get("network") or {}
    if network.get("kind") == "onnxruntime":
        if not network.get("file"):
            raise M2DetError(f"model {name!r}: onnxruntime network without a file")
    elif network.get("kind") == "triton":
        if not network.get("model"):
            raise M2DetError(f"model {name!r}: triton network without a model name")
    else:
        raise M2DetError(f"model {name!r}: network kind {network.get('kind')!r} is neither "
                         "'onnxruntime' nor 'triton'")


def _check_batching(name: str, config: dict[str, Any], expected: Expected, platform: str) -> None:
    max_batch = int(config.get("max_batch_size", 0))
    dynamic = config.get("dynamic_batching")
    if max_batch < 1:
        raise M2DetError(f"model {name!r}: max_batch_size must be >= 1 (the batch dimension is "
                         f"how Triton batches requests), got {max_batch}")
    if expected.max_batch is not None and max_batch > expected.max_batch:
        raise M2DetError(f"model {name!r}: max_batch_size {max_batch} exceeds the largest batch "
                         f"the artifact runs ({expected.max_batch})")
    if platform == TENSORRT and expected.min_batch > 1:
        raise M2DetError(f"model {name!r}: the plan's batch profile starts at "
                         f"{expected.min_batch}, but Triton sends batches from 1 up; rebuild "
                         "with m2det-build --batch 1:OPT:MAX")
    if dynamic is None:
        return
    preferred = [int(b) for b in dynamic.get("preferred_batch_size", [])]
    if preferred != sorted(set(preferred)):
        raise M2DetError(f"model {name!r}: preferred_batch_size {preferred} must increase")
    bad = [b for b in preferred if not expected.min_batch <= b <= max_batch]
    if bad:
        raise M2DetError(f"model {name!r}: preferred batch size {bad[0]} outside "
                         f"[{expected.min_batch}, max_batch_size {max_batch}]")


def _check_instances(name: str, config: dict[str, Any], platform: str) -> None:
    for group in config.get("instance_group", []):
        if int(group.get("count", 1)) < 1:
            raise M2DetError(f"model {name!r}: instance_group count must be >= 1")
        if platform == TENSORRT and group.get("kind", "KIND_AUTO") == "KIND_CPU":
            raise M2DetError(f"model {name!r}: a TensorRT plan runs on KIND_GPU instances")


def _tensors(config: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in config.get(key, [])}


def _expect_tensor(name: str, tensors: dict[str, dict[str, Any]], tensor: str, dtype: str,
                   dims: list[int], what: str) -> None:
    t = tensors.get(tensor)
    if t is None:
        raise M2DetError(f"model {name!r}: no {what} {tensor!r} (has {sorted(tensors)})")
    if t.get("data_type") != dtype:
        raise M2DetError(f"model {name!r}: {what} {tensor!r} is {t.get('data_type')}, "
                         f"expected {dtype}")
    got = [int(d) for d in t.get("dims", [])]
    if got != dims:
        raise M2DetError(f"model {name!r}: {what} {tensor!r} has dims {got}, expected {dims} "
                         "(without the batch dimension)")


def _check_inputs(name: str, config: dict[str, Any], expected: Expected, role: str) -> None:
    inputs = _tensors(config, "input")
    want = IMAGE_INPUT if role == "detect" else contract.INPUT
    if list(inputs) != [want]:
        raise M2DetError(f"model {name!r}: inputs {list(inputs)}, expected [{want!r}]")
    if role == "detect":
        _expect_tensor(name, inputs, IMAGE_INPUT, "TYPE_UINT8", [-1], "input")
        if not inputs[IMAGE_INPUT].get("allow_ragged_batch"):
            raise M2DetError(f"model {name!r}: input {IMAGE_INPUT!r} needs allow_ragged_batch "
                             "(encoded images differ in length)")
        return
    s = expected.input_size
    _expect_tensor(name, inputs, contract.INPUT, "TYPE_FP32", [3, s, s], "input")


def _check_outputs(name: str, config: dict[str, Any], expected: Expected, platform: str,
                   role: str) -> None:
    outputs = _tensors(config, "output")
    raw = platform != PYTHON and expected.graph == contract.GRAPH_RAW
    if raw:
        a, c = expected.anchors, expected.classes
        want = dict(zip(contract.RAW_OUTPUTS, [("TYPE_FP32", [a, 4]), ("TYPE_FP32", [a, c])],
                        strict=True))
    else:
        k = -1 if platform == PYTHON else expected.keep
        want = dict(zip(contract.NMS_OUTPUTS, [("TYPE_INT32", [1]), ("TYPE_FP32", [k, 4]),
                                               ("TYPE_FP32", [k]), ("TYPE_INT32", [k])],
                        strict=True))
    names = tuple(want)
    if tuple(outputs) != names:
        raise M2DetError(f"model {name!r}: outputs {list(outputs)}, expected {list(names)}")
    for tensor, (dtype, dims) in want.items():
        _expect_tensor(name, outputs, tensor, dtype, dims, "output")


@dataclass
class Model:
    """One model of a repository: its config (Triton's field names) and the files of version 1
    (name in the version folder -> source)."""

    config: dict[str, Any]
    files: dict[str, Path]
    extra: dict[str, Path] = field(default_factory=dict)  # beside config.pbtxt

    @property
    def name(self) -> str:
        return str(self.config["name"])
