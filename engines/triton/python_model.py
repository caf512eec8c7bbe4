"""The Triton Python-backend model that ``m2det-triton`` copies into a model repository as
``<model>/1/model.py``. Triton imports it inside its Python-backend stub; nothing in this package
imports it (``triton_python_backend_utils`` only exists there).

Its config's ``parameters { key: "m2det" }`` (JSON, written by
``m2det.engines.triton.repository``) says what it does:

* ``role`` ``"network"``: input ``images`` [B,3,S,S] float32 BGR 0-255 (preprocessed, as every
  runner takes) -> ``num_detections`` [B,1] int32, ``detection_boxes`` [B,K,4] float32
  (normalized x1,y1,x2,y2), ``detection_scores`` [B,K] float32, ``detection_classes`` [B,K] int32,
  K = the most detections of an image in that request (padding after ``num_detections``).
* ``role`` ``"detect"``: input ``image`` [1,N] uint8, the bytes of one encoded image (JPEG, PNG,
  ...) per request -> the same four outputs for that image with boxes in its pixels (clipped) and
  no padding. The server's dynamic batcher groups requests; one network call serves the group.

``network`` ``{"kind": "onnxruntime", "file": ...}`` runs an exported ONNX file in this process;
``{"kind": "triton", "model": ...}`` calls another model of the repository (BLS), e.g. a
``tensorrt_plan``. Raw outputs (``boxes``/``scores``) go through ``m2det.nms.batched_nms`` with the
``nms`` parameters; NMS outputs pass through. A request that fails (an undecodable image) gets an
error response; the others of its batch are answered.

The Python environment needs numpy, opencv-python(-headless), onnxruntime (for ``onnxruntime``
networks) and the ``m2det`` package. Triton's Python backend before 24.11 (server 2.51, the
``nvidia-pytriton`` 0.7.0 bundle) needs numpy < 2 there: with numpy 2 it returns empty or wrong
tensors without an error (python_backend PR #384 moved to pybind11 2.12 for numpy 2).
"""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np
import triton_python_backend_utils as pb_utils

from m2det import contract
from m2det.detections import Detections
from m2det.engines.triton.model_config import IMAGE_INPUT, PARAMETER
from m2det.nms import NMSParams, batched_nms
from m2det.preprocess import preprocess


class TritonPythonModel:
    """Triton's Python-backend entry points (``initialize``, ``execute``, ``finalize``)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.params = json.loads(config["parameters"][PARAMETER]["string_value"])
        self.role = self.params["role"]
        self.size = int(self.params["input_size"])
        self.nms = NMSParams(**self.params["nms"])
        self.max_batch = int(config.get("max_batch_size", 0)) or 1
        network = self.params["network"]
        self.session: Any = None
        self.network_model: str | None = None
        if network["kind"] == "onnxruntime":
            self.session = _ort_session(os.path.join(args["model_repository"],
                                                     args["model_version"], network["file"]),
                                        network, args.get("model_instance_device_id", "0"))
        elif network["kind"] == "triton":
            self.network_model = network["model"]
            self.network_max_batch = int(network.get("max_batch", self.max_batch))
        else:
            raise pb_utils.TritonModelException(f"unknown network kind {network['kind']!r}")
        if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            pb_utils.Logger.log_warn(
                f"{args['model_name']}: numpy {np.__version__} in this Python environment; "
                "Triton's Python backend before 24.11 returns empty tensors with numpy >= 2")

    # ------------------------------------------------------------------------- network
    def _network(self, images: np.ndarray) -> Detections:
        """images [B,3,S,S] float32 -> Detections (normalized boxes, padded to the batch's K)."""
        if self.session is not None:
            names = [o.name for o in self.session.get_outputs()]
            return _detections(dict(zip(names, self.session.run(names, {contract.INPUT: images}),
                                        strict=True)), self.nms)  # fmt: skip
        parts = [self._call_network(images[i:i + self.network_max_batch])
                 for i in range(0, len(images), self.network_max_batch)]
        return Detections.concatenate(parts)

    def _call_network(self, images: np.ndarray) -> Detections:
        request = pb_utils.InferenceRequest(model_name=self.network_model,
                                            inputs=[pb_utils.Tensor(contract.INPUT, images)],
                                            requested_output_names=[])  # fmt: skip
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{self.network_model}: {response.error().message()}")
        outputs = {t.name(): t.as_numpy() for t in response.output_tensors()}
        return _detections(outputs, self.nms)

    # ------------------------------------------------------------------------- requests
    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            if self.role == "detect":
                return self._detect(requests)
            return self._tensors(requests)
        except Exception as e:  # noqa: BLE001 - answer every request instead of failing the batch
            message = f"{type(e).__name__}: {e}"
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                    for _ in requests]  # fmt: skip

    def _tensors(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, contract.INPUT).as_numpy() for r in requests]
        dets = self._network(np.ascontiguousarray(np.concatenate(arrays), np.float32))
        responses, start = [], 0
        for a in arrays:
            part = slice(start, start + len(a))
            start += len(a)
            k = int(dets.num[part].max(initial=0))
            responses.append(_response(dets.num[part], dets.boxes[part, :k],
                                       dets.scores[part, :k], dets.classes[part, :k]))
        return responses

    def _detect(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        images, owners = [], []
        for i, request in enumerate(requests):
            try:
                images.append(_decode(pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT)
                                      .as_numpy()))
                owners.append(i)
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        if images:
            sizes = [(img.shape[1], img.shape[0]) for img in images]
            dets = self._network(preprocess(images, self.size)).scaled(sizes)
            for j, i in enumerate(owners):
                w, h = sizes[j]
                boxes, scores, classes = dets.image(j)
                boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
                responses[i] = _response(np.array([len(scores)], np.int32), boxes[None],
                                         scores[None], classes[None])  # fmt: skip
        return responses


def _decode(data: np.ndarray) -> np.ndarray:
    """[1,N] uint8 encoded bytes -> BGR image [H,W,3] uint8; ValueError saying why not."""
    if data.ndim != 2 or data.shape[0] != 1:
        raise ValueError(f"{IMAGE_INPUT}: send one encoded image per request as [1,N] uint8, "
                         f"got {list(data.shape)}")
    if data.shape[1] == 0:
        raise ValueError(f"{IMAGE_INPUT}: empty (0 bytes)")
    image = cv2.imdecode(np.ascontiguousarray(data[0]), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{IMAGE_INPUT}: {data.shape[1]} bytes are not an image OpenCV can "
                         "decode (JPEG, PNG, BMP, WebP, TIFF)")
    return image


def _detections(outputs: dict[str, np.ndarray], nms: NMSParams) -> Detections:
    if all(name in outputs for name in contract.RAW_OUTPUTS):
        boxes, scores = (outputs[name] for name in contract.RAW_OUTPUTS)
        return batched_nms(boxes, scores, nms)
    return Detections.from_nms_outputs(outputs)


def _response(num: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> Any:
    names = contract.NMS_OUTPUTS
    arrays = (num.reshape(-1, 1).astype(np.int32), boxes.astype(np.float32),
              scores.astype(np.float32), classes.astype(np.int32))  # fmt: skip
    return pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(a))
                                       for n, a in zip(names, arrays, strict=True)])


def _ort_session(path: str, network: dict[str, Any], device_id: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if network.get("threads"):
        options.intra_op_num_threads = int(network["threads"])
    providers: list[Any] = ["CPUExecutionProvider"]
    if network.get("device") == "gpu":
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device_id)}))
    return ort.InferenceSession(path, options, providers=providers)
