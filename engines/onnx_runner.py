"""The ONNX Runtime runner: any file ``m2det-export`` writes (FP32/FP16/INT8, raw or NMS graph).

Config, precision, graph kind and batch come from the file's ``m2det.*`` metadata. When a tool
dropped it (``polygraphy surgeon sanitize`` does), the graph itself gives the input size, batch,
graph kind, class count, precision and an ONNX NMS graph's parameters, and ``config`` (a preset
name, ``--config`` on the CLIs) gives the rest; without one, one line names what is missing.
ONNX Runtime runs with ``m2det.export.ort_session``'s defaults (``WeightBiasQuantization`` off, so
INT8 files give what the graph and TensorRT compute). A raw graph's ``boxes``/``scores`` go
through the CPU post-processing (``m2det.nms.batched_nms``, compiled, on ``threads``) with the
runner's ``nms`` parameters; an ONNX NMS graph's EfficientNMS-style outputs are returned as they
are (its NMS parameters are the ones baked in at export, recorded in ``self.nms``). A plugin NMS
graph (``M2Det_SoftNMS_TRT``) needs TensorRT: this runner refuses it with one line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2det import contract
from m2det.config import M2DetConfig
from m2det.contract import INPUT, NMS_OUTPUTS, PLUGIN_NAME, RAW_OUTPUTS
from m2det.engines.onnx_file_runner import OnnxFileRunner
from m2det.engines.onnx_info import config_for_stripped, graph_facts
from m2det.errors import M2DetError
from m2det.export.onnx_export import config_from_metadata, read_metadata
from m2det.export.ort_session import SPEC_DISABLED_OPTIMIZERS, ort_session
from m2det.nms import Method, NMSParams


class OnnxRunner(OnnxFileRunner):
    """Run an exported ``.onnx`` file in ONNX Runtime.

    ``providers``: ORT execution providers in priority order (default CPU); ones this onnxruntime
    build lacks are dropped (CPU is always last). ``threads``: intra-op threads (default: ORT's).
    ``optimization``: ORT graph optimization level (disable|basic|extended|all);
    ``disabled_optimizers``: ORT transformers turned off (``()``: ORT's full defaults).
    ``config``: the preset (name or config) for a file whose metadata was stripped; checked
    against the graph (input size, classes). A file with metadata ignores it here (the registry
    checks that it names the recorded one).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, nms: NMSParams, providers: list[str] | None = None, *,
                 threads: int | None = None, optimization: str = "all",
                 disabled_optimizers: Sequence[str] = SPEC_DISABLED_OPTIMIZERS,
                 config: M2DetConfig | str | None = None) -> None:
        import onnx

        self.path = Path(path)
        if not self.path.is_file():
            raise M2DetError(f"ONNX file not found: {self.path}")
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - any decode failure is a bad file
            raise M2DetError(f"{self.path} is not a readable ONNX file "
                             f"({type(e).__name__})") from None
        meta = read_metadata(model)
        facts = graph_facts(model)
        if contract.META_CONFIG in meta:
            cfg = config_from_metadata(meta, str(self.path))
        else:
            cfg = config_for_stripped(self.path, facts, config)
        if any(n.op_type == PLUGIN_NAME for n in model.graph.node):
            raise M2DetError(f"{self.path.name} contains the TensorRT plugin op {PLUGIN_NAME}, "
                             "which ONNX Runtime cannot run: build a plan with m2det-build, or "
                             "export with --nms-graph none or --nms-graph onnx-hard")  # fmt: skip
        outputs = tuple(o.name for o in model.graph.output)
        if outputs not in (RAW_OUTPUTS, NMS_OUTPUTS):
            raise M2DetError(f"{self.path.name}: unexpected outputs {outputs}")
        self.graph = contract.GRAPH_RAW if outputs == RAW_OUTPUTS else contract.GRAPH_NMS_ONNX
        if self.graph == contract.GRAPH_NMS_ONNX:  # what the graph actually does
            if contract.META_NMS in meta:
                nms = NMSParams(**json.loads(meta[contract.META_NMS]))
            elif facts.nms:  # an ONNX NMS graph is hard NMS by construction
                nms = dataclasses.replace(nms, method=Method.HARD, **facts.nms)
        super().__init__(cfg, nms, precision=meta.get(contract.META_PRECISION, facts.precision))
        batch = meta.get(contract.META_BATCH)
        if batch is None:
            self.fixed_batch = facts.batch_dim
        else:
            self.fixed_batch = int(batch) if batch.isdigit() else None
        self.providers = _available(providers or ["CPUExecutionProvider"])
        self.threads = threads
        self.optimization = optimization
        self.disabled_optimizers = tuple(disabled_optimizers)
        self._session: Any = None

    def activate(self) -> None:
        self._session = ort_session(self.path, self.threads, self.providers, self.optimization,
                                    self.disabled_optimizers)

    def deactivate(self) -> None:
        self._session = None

    def execute(self, x: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
        return list(self._session.run(list(names), {INPUT: x}))

def _available(providers: list[str]) -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    chosen = [p for p in providers if p in have and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]
