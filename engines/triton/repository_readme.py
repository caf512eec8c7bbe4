"""The ``README.md`` and ``serve.sh`` written at the root of a repository (Triton loads only its
folders, so both ride along): what each model does, how to query it, how to serve it with the
bundled server or with any Triton, including the soft-NMS plugin of a plugin plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from m2det import contract

if TYPE_CHECKING:
    from m2det.engines.triton.artifact import Artifact
    from m2det.engines.triton.model_config import Model


def serve_script(models: list[Model], art: Artifact) -> str:
    """``serve.sh``: start ``tritonserver`` (on PATH) on this folder with the flags it needs."""
    flags = []
    for m in models:
        for name in m.extra:
            flags.append(f'--backend-config=tensorrt,plugins="$REPO/{m.name}/{name}"')
    if art.tensorrt and art.tensorrt.get("version_compatible"):
        flags.append("--backend-config=tensorrt,version-compatible=true")
    note = ""
    if art.tensorrt:
        note = (f"# The plan was built with TensorRT {art.tensorrt.get('tensorrt_version')} on "
                f"{(art.tensorrt.get('gpu') or {}).get('name', 'a GPU')}: use the Triton release\n"
                "# with that TensorRT version (Triton's release notes list it) and that GPU "
                "architecture.\n")
    return ("#!/bin/sh\n"
            "# Serve this model repository with NVIDIA Triton: run it in a Triton container, e.g.\n"
            "#   docker run --gpus all --rm -p8000:8000 -p8001:8001 -v \"$PWD\":/models \\\n"
            "#     nvcr.io/nvidia/tritonserver:<yy.mm>-py3 /models/serve.sh\n"
            "# Python models also need numpy, opencv-python-headless, onnxruntime and m2det-deploy"
            " in the\n# server's Python (pip install m2det-deploy in the container).\n"
            f"{note}set -e\nREPO=\"$(cd \"$(dirname \"$0\")\" && pwd)\"\n"
            f"exec tritonserver --model-repository=\"$REPO\" {' '.join(flags)} \"$@\"\n"
            ).replace("  \"$@\"", " \"$@\"")  # fmt: skip


def repository_readme(models: list[Model], art: Artifact) -> str:
    """README.md of a repository written for ``art``."""
    rows = "\n".join(f"| `{m.name}` | {_backend(m.config)} | {_inputs(m.config)} | "
                     f"{m.config['max_batch_size']} |" for m in models)  # fmt: skip
    detect = models[0].name
    return f"""# Triton model repository: M2Det `{art.config.get('name')}`

Written by `m2det-triton` from `{art.path.name}` ({art.kind}, {art.precision}, {art.graph} graph,
input {art.input_size}x{art.input_size}, sha256 `{art.sha256[:16]}…`). Every model carries an
`m2det` parameter (JSON) with the M2Det config, the class names and the NMS it applies.

| model | backend | input | max batch |
|---|---|---|---|
{rows}

Outputs (all models except raw `*_onnx`/`*_trt`): `{'`, `'.join(contract.NMS_OUTPUTS)}`
([B,1] int32, [B,K,4] float32 x1,y1,x2,y2, [B,K] float32, [B,K] int32). `{detect}` returns boxes in
the pixels of the image sent; the network models return them normalized to the input.

## Serve

* Here, with the server bundled in `nvidia-pytriton` (Python-backend models):
  `m2det-triton serve .` (`pip install 'm2det-deploy[serve]'`).
* With any Triton: `./serve.sh` inside a Triton container (see the script).
* Check the configs after editing them: `m2det-triton check .`

## Query

One image (JPEG, PNG, ...) per request, its bytes as a [1,N] uint8 tensor; with `curl`, through
Triton's binary-data extension (the JSON header, then the bytes):

```sh
IMG=image.jpg; N=$(stat -c%s "$IMG")
HDR='{{"inputs":[{{"name":"image","shape":[1,'$N'],"datatype":"UINT8","parameters":{{"binary_data_size":'$N'}}}}]}}'
{{ printf %s "$HDR"; cat "$IMG"; }} | curl -s --data-binary @- \\
  -H "Inference-Header-Content-Length: ${{#HDR}}" localhost:8000/v2/models/{detect}/infer
```

With the Python client:

```python
import numpy as np, tritonclient.http as http
data = np.fromfile("image.jpg", np.uint8)[None]
inp = http.InferInput("image", list(data.shape), "UINT8"); inp.set_data_from_numpy(data)
r = http.InferenceServerClient("localhost:8000").infer("{detect}", [inp])
print(r.as_numpy("detection_boxes"), r.as_numpy("detection_scores"))
```

or `m2det-detect --triton localhost:8000 --input image.jpg --out det/`.
"""


def _backend(config: dict[str, Any]) -> str:
    return str(config.get("platform") or config.get("backend"))


def _inputs(config: dict[str, Any]) -> str:
    return ", ".join(f"`{t['name']}` {t['data_type'][5:].lower()} {t['dims']}"
                     for t in config["input"])  # fmt: skip
