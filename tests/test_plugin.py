"""The soft-NMS plugin sources on a CPU machine: CMake build (kernel compiled by nvcc, C++
reference, ctest), the C++ reference against ``m2det.nms`` through ctypes, the C ABI's error
reporting (no C++ exception reaches ctypes), and a compile check of the TensorRT plugin against
TensorRT headers when they are found.

The random-case helpers here are shared with tests/test_plugin_gpu.py."""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from m2det import contract
from m2det.detections import Detections
from m2det.engines import soft_nms_kernel as snk
from m2det.errors import M2DetError
from m2det.nms import Method, NMSParams, batched_nms

BUILD_DIR = snk.PLUGINS_DIR / "build" / "pytest"
# Relative score tolerance for gaussian: each decay may differ by the exp implementations' ulps
# (CUDA expf <= 2 ulp); over the decays of one score that stays far below 2e-5 (~170 ulp) in
# practice (C++ vs numpy: at most 1.4e-6 over tests' cases).
GAUSSIAN_RTOL = 2e-5


def tensorrt_include_dir() -> str | None:
    """TensorRT headers: $TensorRT_INCLUDE_DIR, else the newest ~/.cache/tensorrt-oss/*/include."""
    env = os.environ.get("TensorRT_INCLUDE_DIR")
    if env:
        return env if Path(env, "NvInferRuntime.h").is_file() else None
    found = glob.glob(os.path.expanduser("~/.cache/tensorrt-oss/*/include/NvInferRuntime.h"))
    return str(Path(max(found, key=os.path.getmtime)).parent) if found else None


@dataclass
class Build:
    dir: Path
    trt_include: str | None


@pytest.fixture(scope="session")
def plugin_build() -> Iterator[Build]:
    """plugins/ built (incrementally) into plugins/build/pytest: sm_90 only, to stay fast; our
    sources with warnings as errors; the plugin compile check when TensorRT headers are found."""
    missing = [tool for tool in ("cmake", "nvcc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH: cannot build plugins/")
    trt = tensorrt_include_dir()
    args = (f"-DTensorRT_INCLUDE_DIR={trt}",) if trt else ("-DTensorRT_INCLUDE_DIR=",)
    snk.build_libraries(BUILD_DIR, cuda_architectures="90",
                        extra_args=(*args, "-DM2DET_WARNINGS_AS_ERRORS=ON"))
    old = os.environ.get("M2DET_SOFTNMS_LIB_DIR")
    os.environ["M2DET_SOFTNMS_LIB_DIR"] = str(BUILD_DIR)
    snk.load_library.cache_clear()
    yield Build(BUILD_DIR, trt)
    if old is None:
        del os.environ["M2DET_SOFTNMS_LIB_DIR"]
    else:
        os.environ["M2DET_SOFTNMS_LIB_DIR"] = old
    snk.load_library.cache_clear()


# ----------------------------------------------------------------------------------------------
# Random cases


def random_case(rng: np.random.Generator, batch: int, anchors: int, classes: int,
                ties: bool = False, degenerate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """boxes [B,A,4] float32 in [0,1] with clustered overlaps, scores [B,A,C] float32 in [0,1),
    skewed low like softmax outputs. ``ties``: scores on a coarse grid and duplicated boxes;
    ``degenerate``: some zero-size and inverted boxes."""
    centers = rng.random((batch, max(1, anchors // 8), 2), dtype=np.float32)
    pick = rng.integers(0, centers.shape[1], (batch, anchors))
    xy = np.take_along_axis(centers, pick[..., None], 1)
    xy = xy + rng.normal(0, 0.02, (batch, anchors, 2)).astype(np.float32)
    wh = rng.uniform(0.01, 0.3, (batch, anchors, 2)).astype(np.float32)
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], -1).astype(np.float32)
    scores = (rng.random((batch, anchors, classes), dtype=np.float32) ** 3).astype(np.float32)
    if ties:
        scores = (np.round(scores * 16) / 16).astype(np.float32)
        dup = rng.random((batch, anchors)) < 0.2
        boxes[dup] = boxes[:, :1].repeat(anchors, 1)[dup]
    if degenerate:
        flat = rng.random((batch, anchors)) < 0.1
        boxes[flat, 2] = boxes[flat, 0]
        inv = rng.random((batch, anchors)) < 0.05
        boxes[inv] = boxes[inv][:, [2, 3, 0, 1]]
    return boxes, scores


def random_params(rng: np.random.Generator, method: Method, anchors: int, classes: int,
                  max_candidates_cap: int = 4096) -> NMSParams:
    """Parameters spanning the interesting regimes: top-k active or not, per-class limit or
    none, per-image cap below/above the detections or none."""
    return NMSParams(
        method=method,
        score_threshold=float(rng.choice([0.0, 0.05, 0.1, 0.3])),
        iou_threshold=float(rng.choice([0.3, 0.45, 0.5, 0.7])),
        sigma=float(rng.choice([0.3, 0.5, 1.0])),
        min_score=float(rng.choice([0.001, 0.01, 0.05])),
        max_candidates=int(min(max_candidates_cap, rng.choice([1, 7, 100, anchors, 4096]))),
        keep_per_class=int(rng.choice([0, 1, 5, 50])),
        max_detections=int(rng.choice([0, 1, 20, 100, 300])),
    )


def assert_identical(got: Detections, ref: Detections, what: str) -> None:
    """Same count, boxes, scores (bit for bit) and classes per image, in the same order."""
    assert len(got) == len(ref), what
    for b in range(len(ref)):
        g, r = got.image(b), ref.image(b)
        assert len(g[1]) == len(r[1]), f"{what} image {b}: {len(g[1])} vs {len(r[1])} detections"
        for name, x, y in zip(("boxes", "scores", "classes"), g, r, strict=True):
            assert x.tobytes() == y.tobytes(), f"{what} image {b}: {name} differ"


def assert_gaussian_consistent(got: Detections, ref: Detections, params: NMSParams,
                               what: str) -> None:
    """Gaussian results agree up to the exp implementation: shared (class, box) entries have
    scores within GAUSSIAN_RTOL; an entry in only one result sits at a cut (min_score or the
    lowest score of a result filled to the K cap) within that tolerance; both are sorted
    descending."""
    for b in range(len(ref)):
        entries = []
        for det in (got, ref):
            boxes, scores, classes = det.image(b)
            assert np.all(np.diff(scores) <= 0), f"{what} image {b}: not sorted"
            entries.append({(int(c), *bx.tolist()): float(s)
                            for bx, s, c in zip(boxes, scores, classes, strict=True)})
        g, r = entries
        for key in g.keys() & r.keys():
            assert g[key] == pytest.approx(r[key], rel=GAUSSIAN_RTOL), f"{what} image {b}"
        for only, other in ((g.keys() - r.keys(), r), (r.keys() - g.keys(), g)):
            full = params.max_detections > 0 and len(other) == params.max_detections
            cut = max(min(other.values()), params.min_score) if full else params.min_score
            for key in only:
                s = g.get(key, r.get(key))
                assert s is not None and s <= cut * (1 + GAUSSIAN_RTOL), \
                    f"{what} image {b}: {key} score {s} only in one result, above the cut {cut}"


def sample_sizes(rng: np.random.Generator, n: int, max_elements: int
                 ) -> Iterator[tuple[int, int, int, bool, bool]]:
    """n (batch, anchors, classes, ties, degenerate) draws with batch*anchors*classes bounded."""
    for _ in range(n):
        batch = int(rng.integers(1, 5))
        classes = int(rng.choice([1, 2, 3, 20, 80]))
        anchors = int(rng.integers(50, 4097))
        anchors = max(50, min(anchors, max_elements // (batch * classes)))
        yield batch, anchors, classes, bool(rng.random() < 0.3), bool(rng.random() < 0.3)


# ----------------------------------------------------------------------------------------------
# Build


@pytest.mark.slow
def test_ctest_passes(plugin_build: Build) -> None:
    run = subprocess.run(["ctest", "--output-on-failure"], cwd=plugin_build.dir,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "100% tests passed" in run.stdout


def test_libraries_and_their_dependencies(plugin_build: Build) -> None:
    cpu, cuda = plugin_build.dir / snk.CPU_LIBRARY, plugin_build.dir / snk.CUDA_LIBRARY
    assert cpu.is_file() and cuda.is_file()
    if shutil.which("readelf"):
        needed = subprocess.run(["readelf", "-d", str(cpu)], capture_output=True, text=True,
                                check=True).stdout
        assert "NEEDED" in needed and "cuda" not in needed.lower(), needed
        symbols = subprocess.run(["readelf", "--dyn-syms", "-W", str(cuda)], capture_output=True,
                                 text=True, check=True).stdout
        for name in ("m2det_soft_nms_cuda", "m2det_soft_nms_cpu", "m2det_soft_nms_workspace_size"):
            assert name in symbols


def test_plugin_compiles_against_tensorrt_headers(plugin_build: Build) -> None:
    if plugin_build.trt_include is None:
        pytest.skip("no TensorRT headers: set TensorRT_INCLUDE_DIR or run "
                    "plugins/tensorrt_headers.sh on a NVIDIA/TensorRT git dir")
    plugin = plugin_build.dir / "libm2det_plugins.so"
    assert plugin.is_file(), f"plugin not built against {plugin_build.trt_include}"
    if shutil.which("readelf"):
        symbols = subprocess.run(["readelf", "--dyn-syms", "-W", str(plugin)],
                                 capture_output=True, text=True, check=True).stdout
        exported = {line.split()[-1] for line in symbols.splitlines()
                    if " FUNC " in line and " UND " not in line}
        assert {"getCreators", "setLoggerFinder"} <= exported


# ----------------------------------------------------------------------------------------------
# C++ reference vs m2det.nms


@pytest.mark.slow
@pytest.mark.parametrize("method", [Method.HARD, Method.LINEAR])
def test_reference_matches_python_bit_for_bit(plugin_build: Build, method: Method) -> None:
    rng = np.random.default_rng(int(method))
    for i, (batch, anchors, classes, ties, degenerate) in enumerate(
            sample_sizes(rng, 600, max_elements=4_000)):
        boxes, scores = random_case(rng, batch, anchors, classes, ties, degenerate)
        params = random_params(rng, method, anchors, classes)
        ref = batched_nms(boxes, scores, params, backend="numpy")
        got = snk.soft_nms_cpu_reference(boxes, scores, params)
        assert_identical(got, ref, f"case {i} {params}")


@pytest.mark.slow
def test_reference_gaussian_within_tolerance(plugin_build: Build) -> None:
    rng = np.random.default_rng(2)
    for i, (batch, anchors, classes, _, degenerate) in enumerate(
            sample_sizes(rng, 300, max_elements=4_000)):
        boxes, scores = random_case(rng, batch, anchors, classes, False, degenerate)
        params = random_params(rng, Method.GAUSSIAN, anchors, classes)
        ref = batched_nms(boxes, scores, params, backend="numpy")
        got = snk.soft_nms_cpu_reference(boxes, scores, params)
        assert_gaussian_consistent(got, ref, params, f"case {i} {params}")


def test_reference_large_problem(plugin_build: Build) -> None:
    """One M2Det-sized class count with 4096 candidates and top-k ties active."""
    rng = np.random.default_rng(7)
    boxes, scores = random_case(rng, 1, 4096, 80, ties=True)
    params = NMSParams(Method.LINEAR, score_threshold=0.0, max_candidates=1000,
                       keep_per_class=100, max_detections=500)
    assert_identical(snk.soft_nms_cpu_reference(boxes, scores, params),
                     batched_nms(boxes, scores, params, backend="numpy"), "large")


def test_reference_float16_scores(plugin_build: Build) -> None:
    rng = np.random.default_rng(3)
    boxes, scores = random_case(rng, 2, 500, 5)
    half = scores.astype(np.float16)
    params = NMSParams(Method.LINEAR, max_detections=50)
    assert_identical(snk.soft_nms_cpu_reference(boxes, half, params),
                     batched_nms(boxes, half.astype(np.float32), params, backend="numpy"),
                     "float16")


def test_reference_without_cap_pads_to_capacity(plugin_build: Build) -> None:
    rng = np.random.default_rng(4)
    boxes, scores = random_case(rng, 2, 300, 3)
    params = NMSParams(Method.HARD, keep_per_class=10, max_detections=0)
    got = snk.soft_nms_cpu_reference(boxes, scores, params)
    assert got.scores.shape == (2, 30)
    ref = batched_nms(boxes, scores, params, backend="numpy")
    assert np.array_equal(got.num, ref.num) and ref.num.min() > 0
    assert_identical(got, ref, "no cap")


def test_empty_and_all_suppressed(plugin_build: Build) -> None:
    boxes = np.tile(np.array([0.1, 0.1, 0.5, 0.5], np.float32), (1, 60, 1))
    scores = np.zeros((1, 60, 4), np.float32)
    params = NMSParams(Method.HARD, max_detections=10)
    got = snk.soft_nms_cpu_reference(boxes, scores, params)
    assert got.num.tolist() == [0] and not got.scores.any() and not got.boxes.any()
    scores[0, :, 2] = 0.9  # 60 identical boxes, equal scores: one kept, the rest suppressed
    got = snk.soft_nms_cpu_reference(boxes, scores, params)
    assert got.num.tolist() == [1] and got.classes[0, 0] == 2
    assert got.scores[0, 0] == np.float32(0.9)


def test_parameter_checks(plugin_build: Build) -> None:
    limit = contract.MAX_CANDIDATES
    params = NMSParams(max_candidates=limit + 1, max_detections=100)
    assert snk.c_params(params, 10, 2).max_candidates == limit + 1  # the reference has no limit
    with pytest.raises(M2DetError, match=f"max_candidates must be <= {limit}"):
        snk.c_params(params, 10, 2, for_cuda=True)
    with pytest.raises(M2DetError, match=f"max_detections <= {contract.MAX_DETECTIONS}"):
        snk.c_params(NMSParams(keep_per_class=0, max_detections=0), 4096, 80, for_cuda=True)
    with pytest.raises(M2DetError, match=r"boxes \[B,A,4\]"):
        snk.soft_nms_cpu_reference(np.zeros((1, 5, 4)), np.zeros((1, 6, 2)), params)
    assert snk.workspace_size(2, 100, 3, NMSParams(keep_per_class=10, max_detections=10)) == 3 * 256


# ----------------------------------------------------------------------------------------------
# The C ABI's errors reach Python as M2DetError with the library's message


def _unchecked(params: NMSParams, **fields: int) -> NMSParams:
    """``params`` with ``fields`` set past NMSParams' own validation (frozen dataclass), so the
    values reach the C++ side."""
    out = dataclasses.replace(params)
    for name, value in fields.items():
        object.__setattr__(out, name, value)
    return out


def test_c_abi_reports_invalid_arguments(plugin_build: Build) -> None:
    boxes, scores = random_case(np.random.default_rng(8), 1, 20, 2)
    for fields, why in (({"max_candidates": 0}, "max_candidates must be >= 1"),
                        ({"method": 7}, r"method must be 0 \(hard\)")):
        with pytest.raises(M2DetError, match=rf"status 1\): m2det_soft_nms_cpu: {why}"):
            snk.soft_nms_cpu_reference(boxes, scores, _unchecked(NMSParams(), **fields))
    lib = snk.load_library()
    c = snk.c_params(NMSParams(max_detections=5), 20, 2)
    with pytest.raises(M2DetError, match="m2det_soft_nms_cpu: a pointer argument is NULL"):
        snk.call_checked(lib, "m2det_soft_nms_cpu", boxes.ctypes.data, None, 0, 1, 20, 2,
                         ctypes.byref(c), None, None, None, None)
    # The next failure replaces the message.
    with pytest.raises(M2DetError, match="m2det_soft_nms_cpu: the batch must be >= 1"):
        snk.call_checked(lib, "m2det_soft_nms_cpu", boxes.ctypes.data, scores.ctypes.data, 0, 0,
                         20, 2, ctypes.byref(c), 1, 1, 1, 1)


def test_workspace_size_of_an_absurd_batch_is_an_error(plugin_build: Build) -> None:
    params = NMSParams(keep_per_class=10, max_detections=10)
    with pytest.raises(M2DetError, match="workspace for this batch does not fit in size_t"):
        snk.workspace_size(2**62, 100, 3, params)
    with pytest.raises(M2DetError, match="m2det_soft_nms_workspace_size: the batch must be >= 1"):
        snk.workspace_size(0, 100, 3, params)


def test_cuda_c_abi_reports_errors(plugin_build: Build) -> None:
    """m2det_soft_nms_cuda checks its arguments before touching CUDA, so its failures (status:
    cudaErrorInvalidValue = 1) and their reasons are checked here, GPU or not; the pointers are
    placeholders that a rejected call never dereferences."""
    lib = snk.load_library(snk.CUDA_LIBRARY)
    c = snk.c_params(NMSParams(max_detections=5), 10, 2, for_cuda=True, lib=lib)

    def call(workspace_bytes: int) -> None:
        snk.call_checked(lib, "m2det_soft_nms_cuda", 16, 16, 0, 1, 10, 2, ctypes.byref(c), 16,
                         workspace_bytes, 16, 16, 16, 16, None)

    with pytest.raises(M2DetError, match=r"status 1\): m2det_soft_nms_cuda: the workspace needs "
                                         r"\d+ bytes, got 1$"):
        call(1)
    c.max_candidates = contract.MAX_CANDIDATES + 1
    with pytest.raises(M2DetError, match=f"status 1\\): m2det_soft_nms_cuda: max_candidates must "
                                         f"be <= {contract.MAX_CANDIDATES}"):
        call(1 << 20)


_OUT_OF_MEMORY = textwrap.dedent("""
    import ctypes, resource, sys
    from m2det.engines import soft_nms_kernel as snk
    from m2det.errors import M2DetError

    lib = snk.load_library(build=False)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    # 256 MiB of address space left; the reference's per-image score buffer needs 4 GiB.
    resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
    p = snk.SoftNmsParams(0.1, 0.3, 0.5, 0.001, 1, 100, 50, 10)
    f32, i32 = ctypes.c_float, ctypes.c_int32
    tiny = [(t * n)() for t, n in ((f32, 4), (f32, 4), (i32, 1), (f32, 40), (f32, 10), (i32, 10))]
    b, s, num, ob, os_, oc = (ctypes.addressof(t) for t in tiny)
    try:
        snk.call_checked(lib, "m2det_soft_nms_cpu", b, s, 0, 1, 32768, 32767, ctypes.byref(p),
                         num, ob, os_, oc)
    except M2DetError as e:
        print(e)
        sys.exit(0)
    print("no error")
    sys.exit(1)
""")


def test_c_abi_turns_a_cpp_exception_into_an_error(plugin_build: Build) -> None:
    """std::bad_alloc inside m2det_soft_nms_cpu (address space limited in a child process) comes
    back as status 2 and its what(), not as a crash through ctypes."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status to size the address-space limit")
    run = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY], capture_output=True, text=True,
                         check=False, timeout=120)
    assert run.returncode == 0, f"rc {run.returncode}: {run.stdout}{run.stderr}"
    assert "(status 2): m2det_soft_nms_cpu: std::bad_alloc" in run.stdout, run.stdout


def test_soft_nms_cuda_needs_a_device() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: tests/test_plugin_gpu.py covers the kernel")
    with pytest.raises(M2DetError, match="needs a CUDA device"):
        snk.soft_nms_cuda(np.zeros((1, 5, 4), np.float32), np.zeros((1, 5, 2), np.float32),
                          NMSParams(max_detections=10))


def test_pip_built_cuda_library_is_found_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where nvcc was on PATH at install time, pip put libm2det_softnms.so beside the extension
    (m2det/lib/); load_library finds it there without building anything and it loads without a
    GPU (static CUDA runtime)."""
    installed = snk.installed_library_dir()
    if installed is None or not (installed / snk.CUDA_LIBRARY).is_file():
        pytest.skip("no pip-built CUDA library (nvcc was not on PATH at install time)")
    monkeypatch.delenv("M2DET_SOFTNMS_LIB_DIR", raising=False)
    snk.load_library.cache_clear()
    try:
        lib = snk.load_library(snk.CUDA_LIBRARY, build=False)
        assert Path(lib._name) == installed / snk.CUDA_LIBRARY
        assert hasattr(lib, "m2det_soft_nms_cuda")
    finally:
        snk.load_library.cache_clear()
