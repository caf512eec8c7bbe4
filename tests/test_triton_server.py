"""Serving for real: ``m2det-triton`` writes the repository of the bundled checkpoint, the Triton
server bundled in ``nvidia-pytriton`` serves it on free ports, and HTTP and gRPC clients
(concurrent) get exactly the local ONNX Runtime runner's detections; the dynamic batcher formed
batches (the statistics extension); a corrupt image fails its own request only; ``m2det-detect
--triton`` writes what a local run writes; ``m2det-triton serve`` stops on Ctrl-C; models that
fail or hang are reported by the deadline; nothing is left in /dev/shm or /tmp.

Needs the serve extra (``pip install 'm2det-deploy[serve]'``), which pins numpy < 2 for the
models' Python; with numpy 2 here, the models run in a venv with numpy < 2: the one
``$M2DET_TRITON_MODEL_ENV`` names, else one this module makes (``m2det-triton model-env``)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from m2det.errors import M2DetError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None
    or importlib.util.find_spec("tritonclient") is None,
    reason="needs the serve extra (pip install 'm2det-deploy[serve]')")

SHM = Path("/dev/shm")


@pytest.fixture(scope="module", autouse=True)
def _model_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """With numpy 2 in this interpreter and no ``$M2DET_TRITON_MODEL_ENV``: a numpy < 2 venv for
    the served models, for this module's servers only."""
    import os

    from m2det.engines.triton.model_env import create_model_env
    from m2det.engines.triton.server import MODEL_ENV_VARIABLE

    if int(np.__version__.split(".")[0]) < 2 or os.environ.get(MODEL_ENV_VARIABLE):
        yield
        return
    env = tmp_path_factory.mktemp("triton-env") / "venv"
    create_model_env(env)
    os.environ[MODEL_ENV_VARIABLE] = str(env)
    try:
        yield
    finally:
        os.environ.pop(MODEL_ENV_VARIABLE, None)


def _leftovers() -> set[str]:
    return ({str(p) for p in SHM.glob("m2det_*")}
            | {str(p) for p in Path("/tmp").glob("python_env_*")})


def _images(folder: Path, count: int = 8) -> list[Path]:
    from m2det.shapes import render_image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image, _ = render_image(rng, 160 + 40 * (i % 3))
        if i % 2:
            image = cv2.resize(image, (image.shape[1] * 3 // 2, image.shape[0]))
        path = folder / f"img{i}.{'jpg' if i % 2 else 'png'}"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository ``m2det-triton --ckpt <bundled checkpoint>`` writes."""
    from m2det.engines.registry import default_checkpoint
    from m2det.engines.triton.cli import main

    out = tmp_path_factory.mktemp("triton") / "repo"
    assert main(["--ckpt", str(default_checkpoint()), "--out", str(out), "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Any]:
    from m2det.engines.triton.server import BundledServer

    before = _leftovers()
    srv = BundledServer(repo, ["m2det", "m2det_net"], http_port=0, grpc_port=0,
                        host="127.0.0.1", ready_timeout=90)
    with srv:
        yield srv
    report = srv.stop()
    assert report.returncode == 0 and not report.killed, report
    assert _leftovers() - before == set()
    assert not list(repo.rglob("__pycache__"))


@pytest.fixture(scope="module")
def local(repo: Path) -> Any:
    from m2det.engines.onnx_runner import OnnxRunner
    from m2det.nms import get_nms_params

    with OnnxRunner(repo / "m2det_net/1/model.onnx", get_nms_params("official")) as runner:
        yield runner


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _images(tmp_path_factory.mktemp("images"))


def _expected(local: Any, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from m2det.preprocess import preprocess, read_image

    image = read_image(path)
    h, w = image.shape[:2]
    dets = local(preprocess(image, local.input_size)).scaled([(w, h)])
    np.clip(dets.boxes, 0, np.array([w, h, w, h], np.float32), out=dets.boxes)
    return dets.image(0)


def _ask(protocol: str, server: Any, data: bytes) -> tuple[np.ndarray, ...]:
    if protocol == "grpc":
        import tritonclient.grpc as module
        client = module.InferenceServerClient(server.grpc_url)
    else:
        import tritonclient.http as module  # type: ignore[no-redef]
        client = module.InferenceServerClient(server.http_url)
    try:
        arr = np.frombuffer(data, np.uint8)[None]
        inp = module.InferInput("image", list(arr.shape), "UINT8")
        inp.set_data_from_numpy(arr)
        r = client.infer("m2det", [inp])
        return tuple(r.as_numpy(n)[0] for n in ("detection_boxes", "detection_scores",
                                                 "detection_classes"))
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_concurrent_clients_get_the_local_runners_detections(server: Any, local: Any,
                                                           images: list[Path],
                                                           protocol: str) -> None:
    expected = [_expected(local, p) for p in images]
    assert sum(len(e[1]) for e in expected) > 0
    got: dict[int, Any] = {}

    def client(i: int) -> None:
        got[i] = _ask(protocol, server, images[i].read_bytes())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, exp in enumerate(expected):
        for a, b in zip(got[i], exp, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("url_scheme", ["", "grpc://"])
def test_triton_runner_equals_the_local_runner(server: Any, local: Any, url_scheme: str) -> None:
    from m2det.engines.triton.runner import TritonRunner
    from m2det.export.parity import random_images

    url = url_scheme + (server.grpc_url if url_scheme else server.http_url)
    with TritonRunner(url) as runner:
        assert runner.config == local.config and runner.nms == local.nms
        for batch in (1, 3, 11):  # 11: two requests of max_batch_size 8 and 3
            x = random_images(batch, local.input_size, batch) if batch != 11 else \
                np.concatenate([random_images(8, local.input_size, 1),
                                random_images(3, local.input_size, 2)])
            a, b = runner(x), local(x)
            k = a.boxes.shape[1]
            np.testing.assert_array_equal(a.num, b.num)
            np.testing.assert_array_equal(a.boxes, b.boxes[:, :k])
            np.testing.assert_array_equal(a.scores, b.scores[:, :k])
            np.testing.assert_array_equal(a.classes, b.classes[:, :k])


def test_dynamic_batching_formed_batches(server: Any, images: list[Path]) -> None:
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    before = client.get_inference_statistics("m2det")["model_stats"][0]
    data = [p.read_bytes() for p in images] * 3
    threads = [threading.Thread(target=_ask, args=("http", server, d)) for d in data]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = client.get_inference_statistics("m2det")["model_stats"][0]
    client.close()
    requests = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert requests == len(data)
    assert executions < requests, (requests, executions)  # some executions took several requests
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert max(sizes) > 1


def test_corrupt_image_fails_only_its_request(server: Any, local: Any,
                                             images: list[Path]) -> None:
    import tritonclient.utils as tu

    bad = b"\xff\xd8\xff\xe0" + b"not a jpeg" * 20
    results: dict[int, Any] = {}

    def client(i: int, data: bytes, protocol: str) -> None:
        try:
            results[i] = _ask(protocol, server, data)
        except tu.InferenceServerException as e:
            results[i] = e

    jobs = [(i, bad if i in (2, 5) else images[i].read_bytes(), ("http", "grpc")[i % 2])
            for i in range(len(images))]
    threads = [threading.Thread(target=client, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, _, _ in jobs:
        if i in (2, 5):
            assert isinstance(results[i], tu.InferenceServerException)
            assert "204 bytes are not an image OpenCV can decode" in str(results[i])
        else:
            np.testing.assert_array_equal(results[i][1], _expected(local, images[i])[1])
    with pytest.raises(tu.InferenceServerException, match="empty"):
        _ask("http", server, b"")
    with pytest.raises(tu.InferenceServerException, match="one encoded image per request"):
        import tritonclient.http as http

        c = http.InferenceServerClient(server.http_url)
        inp = http.InferInput("image", [2, 4], "UINT8")
        inp.set_data_from_numpy(np.zeros((2, 4), np.uint8))
        c.infer("m2det", [inp])
    np.testing.assert_array_equal(_ask("grpc", server, images[0].read_bytes())[1],
                                  _expected(local, images[0])[1])  # still serving


def test_detect_cli_through_triton_writes_what_a_local_run_writes(server: Any, repo: Path,
                                                                 images: list[Path],
                                                                 tmp_path: Path) -> None:
    from m2det.engines.cli import detect_main

    folder = images[0].parent
    assert detect_main(["--onnx", str(repo / "m2det_net/1/model.onnx"), "--input", str(folder),
                        "--out", str(tmp_path / "local")]) == 0
    local = json.loads((tmp_path / "local/detections.json").read_text())
    for url in (server.http_url, "grpc://" + server.grpc_url):
        out = tmp_path / url.replace(":", "_").replace("/", "")
        assert detect_main(["--triton", url, "--input", str(folder), "--out", str(out)]) == 0
        remote = json.loads((out / "detections.json").read_text())
        assert remote["detections"] == local["detections"]
        assert remote["backend"] == "triton-fp32" and remote["artifact"] == url
        for p in images:
            name = p.name
            assert (out / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_repository_readmes_curl_example(server: Any, repo: Path, local: Any,
                                             images: list[Path]) -> None:
    readme = (repo / "README.md").read_text()
    script = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    script = script.replace("image.jpg", str(images[1])).replace(
        "localhost:8000", server.http_url)
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    outputs = {o["name"]: o for o in json.loads(run.stdout)["outputs"]}
    boxes, scores, classes = _expected(local, images[1])
    assert outputs["detection_scores"]["data"] == pytest.approx(scores.tolist(), rel=1e-6)
    assert outputs["detection_classes"]["data"] == classes.tolist()


def test_bench_measures_triton_in_the_benchmark_schema(server: Any, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import jsonschema

    from m2det.benchmarks.cli import main as bench_main

    out = tmp_path / "bench.json"
    assert bench_main(["--triton", "grpc://" + server.grpc_url, "--batch", "1,2", "--iters", "3",
                       "--warmup", "1", "--pool", "4", "--concurrency", "1,3", "--json", str(out),
                       "--quiet"]) == 0
    results = json.loads(out.read_text())
    schema = json.loads((Path(__file__).parents[1] / "benchmarks/schema.json").read_text())
    jsonschema.validate(results, schema)
    rows = results["rows"]
    assert [(r["batch"], r["concurrency"]) for r in rows] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(r["backend"] == "triton" and r["fps"] > 0 for r in rows)
    assert rows[0]["artifact"].endswith("/m2det_net") and rows[0]["source"].endswith(".onnx")
    table = capsys.readouterr().out
    assert "| batch | clients |" in table and "| triton | fp32 | 160 | 2 | 3 |" in table


@pytest.mark.slow
def test_serving_benchmark_runs_and_writes_its_json(repo: Path, tmp_path: Path) -> None:
    from m2det.benchmarks.triton_serving import main as serving_main

    out = tmp_path / "serving.json"
    assert serving_main(["--onnx", str(repo / "m2det_net/1/model.onnx"), "--duration", "0.2",
                         "--rounds", "1", "--concurrency", "2", "--threads", "1",
                         "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["setup"] for r in doc["rows"]] == ["in-process b1", "in-process b8",
                                                 "server grpc c2", "server http c2",
                                                 "server net c2"]
    assert all(r["images_per_s"] > 0 for r in doc["rows"])
    assert doc["rows"][2]["server_batch"] >= 1 and doc["load_average"]


def test_serve_cli_serves_until_ctrl_c_and_leaves_nothing(repo: Path) -> None:
    import tritonclient.http as http

    before = _leftovers()
    cmd = [sys.executable, "-m", "m2det.engines.triton.cli", "serve", str(repo),
           "--http-port", "0", "--grpc-port", "0", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        m = re.search(r"HTTP ([\d.]+:\d+), gRPC", line)
        assert m, line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        client = http.InferenceServerClient(m.group(1))
        assert client.is_model_ready("m2det") and client.is_model_ready("m2det_net")
        assert not client.is_model_ready("m2det_onnx")  # the bundle has no onnxruntime backend
        assert "not loaded (need other backends): m2det_onnx" in line
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _leftovers() - before == set()


def _broken_repo(folder: Path, body: str) -> Path:
    """A one-model repository whose Python model runs ``body`` in initialize."""
    model = folder / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 1\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    (model / "1/model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n"
        f"        {body}\n    def execute(self, requests):\n        return []\n")
    return folder


@pytest.mark.parametrize(("body", "message"), [
    ("raise ValueError('weights missing')", "exited with code 1 .*weights missing"),
    ("import time; time.sleep(600)", "not ready within 4 s"),
])
def test_a_model_that_fails_or_hangs_is_reported_and_cleaned_up(tmp_path: Path, body: str,
                                                               message: str) -> None:
    from m2det.engines.triton.server import BundledServer

    before = _leftovers()
    srv = BundledServer(_broken_repo(tmp_path, body), ["broken"], http_port=0, grpc_port=0,
                        host="127.0.0.1", ready_timeout=4,
                        needs_onnxruntime=False)  # fmt: skip
    with pytest.raises(M2DetError, match=message):
        srv.start()
    assert srv.proc is not None and srv.proc.poll() is not None
    assert _leftovers() - before == set()


def test_numpy_2_in_the_models_environment_is_refused(tmp_path: Path, repo: Path) -> None:
    """A venv over this Python whose numpy says 2.1.0: refused before any server starts."""
    import sysconfig
    import venv

    from m2det.engines.triton.server import BundledServer

    env = tmp_path / "env"
    venv.EnvBuilder(system_site_packages=True, symlinks=True).create(env)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    (site / "numpy").mkdir(parents=True)
    (site / "numpy" / "__init__.py").write_text("__version__ = '2.1.0'\n")
    srv = BundledServer(repo, ["m2det"], http_port=0, grpc_port=0, model_env=env)
    with pytest.raises(M2DetError, match="numpy 2.1.0 in the models' Python environment"):
        srv.start()
    assert srv.proc is None
