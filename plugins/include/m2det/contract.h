/*
 * The contract between the stages, C/C++ side: the C++ mirror of m2det/contract.py (the source of
 * truth).  Every name and limit that the exporter, the TensorRT plugin, the C ABI and the C++
 * runtime must agree on is spelled here once; tests/test_contract.py parses this file and checks
 * it against m2det/contract.py.  Graph and soft-NMS semantics: docs/design.md §2.
 *
 * Plain C macros, so C code (softNmsParams.h, the C ABI) can include it too.  Format, kept regular
 * for the test: one `#define M2DET_<NAME> <value>` per line, <value> a string literal, an integer,
 * a float literal with an F suffix, or the name of another M2DET_ macro; comments on lines of
 * their own.
 */
#ifndef M2DET_CONTRACT_H
#define M2DET_CONTRACT_H

/* ------------------------------------------------------------------------------------ tensors */
/* raw graph: images [B,3,S,S] float32 BGR 0-255 -> boxes [B,A,4] float32 (decoded, normalized
 * x1,y1,x2,y2) and scores [B,A,C] float32 (softmax, background dropped) */
#define M2DET_INPUT_NAME "images"
#define M2DET_RAW_OUTPUT_BOXES "boxes"
#define M2DET_RAW_OUTPUT_SCORES "scores"
/* NMS graph (TensorRT's EfficientNMS convention): num_detections [B,1] int32, detection_boxes
 * [B,K,4] float32, detection_scores [B,K] float32, detection_classes [B,K] int32 */
#define M2DET_NMS_OUTPUT_NUM "num_detections"
#define M2DET_NMS_OUTPUT_BOXES "detection_boxes"
#define M2DET_NMS_OUTPUT_SCORES "detection_scores"
#define M2DET_NMS_OUTPUT_CLASSES "detection_classes"

/* -------------------------------------------------------------------------------- graph kinds */
/* What an exported file (and a plan built from it) computes after the network. */
/* boxes + scores; NMS runs on the host */
#define M2DET_GRAPH_RAW "raw"
/* + one M2DET_PLUGIN_NAME node (TensorRT) */
#define M2DET_GRAPH_NMS_PLUGIN "nms-plugin"
/* + standard ONNX NonMaxSuppression ops (hard NMS) */
#define M2DET_GRAPH_NMS_ONNX "nms-onnx"

#define M2DET_PRECISION_FP32 "fp32"
#define M2DET_PRECISION_FP16 "fp16"
#define M2DET_PRECISION_INT8 "int8"

/* --------------------------------------------------------------------------------- the plugin */
/* TensorRT plugin name = the ONNX node's op type */
#define M2DET_PLUGIN_NAME "M2Det_SoftNMS_TRT"
#define M2DET_PLUGIN_VERSION "1"
#define M2DET_PLUGIN_NAMESPACE ""

/* The node's attributes (= m2det.nms.NMSParams fields, = the fields of M2DetSoftNmsParams in
 * plugins/soft_nms/softNmsParams.h, in this order).  Float attributes: */
#define M2DET_ATTR_SCORE_THRESHOLD "score_threshold"
#define M2DET_ATTR_IOU_THRESHOLD "iou_threshold"
#define M2DET_ATTR_SIGMA "sigma"
#define M2DET_ATTR_MIN_SCORE "min_score"
/* Int attributes: */
#define M2DET_ATTR_METHOD "method"
#define M2DET_ATTR_MAX_CANDIDATES "max_candidates"
#define M2DET_ATTR_KEEP_PER_CLASS "keep_per_class"
#define M2DET_ATTR_MAX_DETECTIONS "max_detections"

/* Largest max_candidates (per image and class) and max_detections (K) the CUDA kernel, and
 * therefore the plugin, accepts. */
#define M2DET_MAX_CANDIDATES 4096
#define M2DET_MAX_DETECTIONS 4096

/* What the plugin uses for an attribute the node leaves out: the `official` post-processing
 * preset (m2det.nms) with K = 100, except sigma.  The released M2Det code passes its IoU
 * threshold 0.45 into sigma by mistake, so the official preset records 0.45 there; linear
 * soft-NMS never reads sigma, and a gaussian node that names none gets 0.5, the gaussian default
 * of Bodla et al. (2017). */
#define M2DET_DEFAULT_SCORE_THRESHOLD 0.1F
#define M2DET_DEFAULT_IOU_THRESHOLD 0.3F
#define M2DET_DEFAULT_SIGMA 0.5F
#define M2DET_DEFAULT_MIN_SCORE 0.001F
/* 1 = linear (M2DET_SOFT_NMS_LINEAR of softNmsParams.h) */
#define M2DET_DEFAULT_METHOD 1
#define M2DET_DEFAULT_MAX_CANDIDATES M2DET_MAX_CANDIDATES
#define M2DET_DEFAULT_KEEP_PER_CLASS 50
#define M2DET_DEFAULT_MAX_DETECTIONS 100

/* ------------------------------------------------------------------------------ file metadata */
/* Prefix of the metadata_props keys m2det-export writes; the keys below follow it. */
#define M2DET_META_PREFIX "m2det."
/* M2DetConfig.to_dict() as JSON */
#define M2DET_META_CONFIG "config"
#define M2DET_META_CONFIG_NAME "config_name"
#define M2DET_META_INPUT_SIZE "input_size"
/* JSON list of class names (background excluded) */
#define M2DET_META_CLASSES "classes"
/* one of the M2DET_PRECISION_ values */
#define M2DET_META_PRECISION "precision"
/* one of the M2DET_GRAPH_ kinds */
#define M2DET_META_GRAPH "graph"
/* an int or "dynamic" */
#define M2DET_META_BATCH "batch"
/* m2det version that wrote the file */
#define M2DET_META_VERSION "version"
/* NMS attributes JSON (NMS graphs) */
#define M2DET_META_NMS "nms"

/* `format` of the JSON sidecar written beside a TensorRT plan (<plan>.json). */
#define M2DET_PLAN_SIDECAR_FORMAT "m2det-plan/1"

/* --------------------------------------------------------------------------------- utilities */
/* M2DET_STRINGIFY(M2DET_MAX_CANDIDATES) is "4096": numbers inside message literals. */
#define M2DET_STRINGIFY_(x) #x
#define M2DET_STRINGIFY(x) M2DET_STRINGIFY_(x)

#endif /* M2DET_CONTRACT_H */
