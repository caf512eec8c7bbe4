"""The contract between the stages: every name and limit that more than one stage (or language)
must agree on is spelled here once and imported everywhere else.

The C++ side mirrors it in ``plugins/include/m2det/contract.h``; ``tests/test_contract.py`` parses
that header and checks that both say the same. Graphs (``docs/design.md`` §2):

* raw graph: ``images`` [B,3,S,S] float32 BGR 0-255 -> ``boxes`` [B,A,4] float32 (decoded,
  normalized x1,y1,x2,y2) and ``scores`` [B,A,C] float32 (softmax, background dropped);
* NMS graph: the raw graph + NMS, outputs in TensorRT's EfficientNMS convention:
  ``num_detections`` [B,1] int32, ``detection_boxes`` [B,K,4] float32, ``detection_scores`` [B,K]
  float32, ``detection_classes`` [B,K] int32.
"""

from __future__ import annotations

from typing import Final

# ----------------------------------------------------------------------------- tensors
INPUT: Final = "images"
RAW_OUTPUTS: Final = ("boxes", "scores")
NMS_OUTPUTS: Final = ("num_detections", "detection_boxes", "detection_scores",
                      "detection_classes")  # fmt: skip

# ----------------------------------------------------------------------------- graph kinds
#: What an exported file (and a plan built from it) computes after the network.
GRAPH_RAW: Final = "raw"  # boxes + scores; NMS runs on the host
GRAPH_NMS_PLUGIN: Final = "nms-plugin"  # + one M2Det_SoftNMS_TRT node (TensorRT)
GRAPH_NMS_ONNX: Final = "nms-onnx"  # + standard ONNX NonMaxSuppression ops (hard NMS)
GRAPH_KINDS: Final = (GRAPH_RAW, GRAPH_NMS_PLUGIN, GRAPH_NMS_ONNX)

PRECISIONS: Final = ("fp32", "fp16", "int8")

# ----------------------------------------------------------------------------- the plugin
PLUGIN_NAME: Final = "M2Det_SoftNMS_TRT"  # TensorRT plugin name = the ONNX node's op type
PLUGIN_VERSION: Final = "1"
PLUGIN_NAMESPACE: Final = ""
#: ONNX domain of the plugin node (declared in the file's ``opset_import`` at version
#: PLUGIN_DOMAIN_VERSION), so that ``onnx.checker`` in any process accepts the file: ops of the
#: default domain must be registered ONNX ops. TensorRT's parser finds the plugin by op type,
#: ``plugin_version`` and ``plugin_namespace`` attributes (export/README.md); the C++ side never
#: sees the domain.
PLUGIN_DOMAIN: Final = "m2det"
PLUGIN_DOMAIN_VERSION: Final = 1
#: The node's attributes (= ``m2det.nms.NMSParams`` fields), by ONNX attribute type.
PLUGIN_FLOAT_ATTRIBUTES: Final = ("score_threshold", "iou_threshold", "sigma", "min_score")
PLUGIN_INT_ATTRIBUTES: Final = ("method", "max_candidates", "keep_per_class", "max_detections")
#: Largest ``max_candidates`` (per image and class) and ``max_detections`` (K) the CUDA kernel,
#: and therefore the plugin, accepts.
MAX_CANDIDATES: Final = 4096
MAX_DETECTIONS: Final = 4096
#: What the plugin uses for an attribute the node leaves out: the ``official`` post-processing
#: preset (m2det.nms) with K = 100, except ``sigma``. The released M2Det code passes its IoU
#: threshold 0.45 into sigma by mistake, so the official preset records 0.45 there; linear
#: soft-NMS never reads sigma, and a gaussian node that names none gets 0.5, the gaussian default
#: of Bodla et al. (2017).
PLUGIN_DEFAULTS: Final[dict[str, float | int]] = {
    "score_threshold": 0.1, "iou_threshold": 0.3, "sigma": 0.5, "min_score": 0.001,
    "method": 1, "max_candidates": MAX_CANDIDATES, "keep_per_class": 50, "max_detections": 100,
}  # fmt: skip

# ----------------------------------------------------------------------------- file metadata
#: Prefix of the ``metadata_props`` keys ``m2det-export`` writes; the keys below follow it.
META_PREFIX: Final = "m2det."
META_CONFIG: Final = "config"  # M2DetConfig.to_dict() as JSON
META_CONFIG_NAME: Final = "config_name"
META_INPUT_SIZE: Final = "input_size"
META_CLASSES: Final = "classes"  # JSON list of class names (background excluded)
META_PRECISION: Final = "precision"  # one of PRECISIONS
META_GRAPH: Final = "graph"  # one of GRAPH_KINDS
META_BATCH: Final = "batch"  # an int or "dynamic"
META_VERSION: Final = "version"  # m2det version that wrote the file
META_NMS: Final = "nms"  # NMS attributes JSON (NMS graphs)
#: INT8 files: the Q/DQ recipe (``--qdq-placement``): "tensorrt" | "cpu" (ModelOpt) |
#: "onnxruntime" (ORT's quantizer: uint8 activations, int32 biases; TensorRT does not take it).
META_QDQ_PLACEMENT: Final = "qdq_placement"

#: ``format`` of the JSON sidecar written beside a TensorRT plan (``<plan>.json``).
PLAN_SIDECAR_FORMAT: Final = "m2det-plan/1"
