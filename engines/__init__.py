"""Runners (torch, ONNX Runtime, TensorRT) behind one protocol, the TensorRT builder, and the
artifact-level CLIs (detect, eval, build)."""
