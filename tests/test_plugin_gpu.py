"""The CUDA soft-NMS kernel (through its C ABI) against the C++ reference on random cases:
hard/linear bit for bit, gaussian within the exp tolerance; float32 and float16 scores, 1-80
classes, batch 1-32, 50-4096 candidates (and more anchors than that). Needs a CUDA GPU.

The kernel library is taken from $M2DET_SOFTNMS_LIB_DIR when that holds libm2det_softnms.so,
else built for this GPU's architecture into plugins/build/pytest-gpu-sm<XY>."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_plugin import (  # noqa: E402
    assert_gaussian_consistent,
    assert_identical,
    random_case,
)

from m2det import contract  # noqa: E402
from m2det.detections import Detections  # noqa: E402
from m2det.engines import soft_nms_kernel as snk  # noqa: E402
from m2det.errors import M2DetError  # noqa: E402
from m2det.nms import Method, NMSParams  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(scope="module", autouse=True)
def cuda_library() -> Iterator[Path]:
    """A libm2det_softnms.so for this GPU (see the module docstring)."""
    given = os.environ.get("M2DET_SOFTNMS_LIB_DIR")
    if given and Path(given, snk.CUDA_LIBRARY).is_file():
        lib_dir = Path(given)
    else:
        missing = [tool for tool in ("cmake", "nvcc") if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"{' and '.join(missing)} not on PATH and $M2DET_SOFTNMS_LIB_DIR has no "
                        f"{snk.CUDA_LIBRARY}")
        major, minor = torch.cuda.get_device_capability()
        lib_dir = snk.build_libraries(snk.PLUGINS_DIR / "build" / f"pytest-gpu-sm{major}{minor}",
                                      cuda_architectures=f"{major}{minor}")
    old = os.environ.get("M2DET_SOFTNMS_LIB_DIR")
    os.environ["M2DET_SOFTNMS_LIB_DIR"] = str(lib_dir)
    snk.load_library.cache_clear()
    print(f"soft-NMS libraries from {lib_dir} on {torch.cuda.get_device_name()}")
    yield lib_dir
    if old is None:
        del os.environ["M2DET_SOFTNMS_LIB_DIR"]
    else:
        os.environ["M2DET_SOFTNMS_LIB_DIR"] = old
    snk.load_library.cache_clear()


def gpu_cases(seed: int, n: int, method: Method, half: bool
              ) -> Iterator[tuple[str, np.ndarray, np.ndarray, NMSParams]]:
    """n random (label, boxes, scores, params); batch 1-32, 1-80 classes, 50-4096 anchors, with
    the per-case work bounded so the C++ reference stays fast."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        batch = int(rng.choice([1, 2, 3, 4, 8, 32]))
        classes = int(rng.choice([1, 2, 5, 20, 80]))
        keep = int(rng.choice([0, 1, 10, 50, 100]))
        budget = 100_000 if keep == 0 else 2_000_000
        anchors = min(int(rng.integers(50, 4097)), max(50, budget // (batch * classes)))
        boxes, scores = random_case(rng, batch, anchors, classes, ties=bool(rng.random() < 0.3),
                                    degenerate=bool(rng.random() < 0.3))
        if half:
            scores = scores.astype(np.float16)
        params = NMSParams(
            method=method,
            score_threshold=float(rng.choice([0.0, 0.05, 0.1, 0.3])),
            iou_threshold=float(rng.choice([0.3, 0.45, 0.5, 0.7])),
            sigma=float(rng.choice([0.3, 0.5, 1.0])),
            min_score=float(rng.choice([0.001, 0.01, 0.05])),
            max_candidates=int(rng.choice([1, 7, 100, 1000, contract.MAX_CANDIDATES])),
            keep_per_class=keep,
            max_detections=int(rng.choice([1, 20, 100, 300, contract.MAX_DETECTIONS])),
        )
        label = f"case {i} B={batch} A={anchors} C={classes} half={half} {params}"
        yield label, boxes, scores, params


def run_cuda(boxes: np.ndarray, scores: np.ndarray, params: NMSParams) -> Detections:
    return snk.soft_nms_cuda(torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(),
                             params)


@pytest.mark.parametrize("half", [False, True], ids=["f32", "f16"])
@pytest.mark.parametrize("method", [Method.HARD, Method.LINEAR])
def test_cuda_matches_reference_bit_for_bit(method: Method, half: bool) -> None:
    for label, boxes, scores, params in gpu_cases(10 + int(method) + 3 * half, 40, method, half):
        assert_identical(run_cuda(boxes, scores, params),
                         snk.soft_nms_cpu_reference(boxes, scores, params), label)


@pytest.mark.parametrize("half", [False, True], ids=["f32", "f16"])
def test_cuda_gaussian_within_tolerance(half: bool) -> None:
    for label, boxes, scores, params in gpu_cases(20 + half, 40, Method.GAUSSIAN, half):
        assert_gaussian_consistent(run_cuda(boxes, scores, params),
                                   snk.soft_nms_cpu_reference(boxes, scores, params), params, label)


@pytest.mark.parametrize("method", list(Method))
def test_cuda_top_k_over_many_anchors(method: Method) -> None:
    """M2Det-512's 32760 anchors with every score a candidate: the radix-select top-4096 path
    in every class, ties included (scores on a grid)."""
    rng = np.random.default_rng(30 + int(method))
    boxes, scores = random_case(rng, 2, 32760, 20, ties=True)
    params = NMSParams(method, score_threshold=0.0, max_candidates=contract.MAX_CANDIDATES,
                       keep_per_class=50, max_detections=1000)
    got, ref = run_cuda(boxes, scores, params), snk.soft_nms_cpu_reference(boxes, scores, params)
    if method == Method.GAUSSIAN:
        assert_gaussian_consistent(got, ref, params, "top-k gaussian")
    else:
        assert_identical(got, ref, f"top-k {method.name}")
    assert got.num.tolist() == [1000, 1000]


def test_cuda_merge_of_many_detections() -> None:
    """K = 4096 out of more detections: the merge kernel's 64-bit radix select and full-size
    bitonic sort."""
    rng = np.random.default_rng(40)
    boxes, scores = random_case(rng, 3, 2000, 80)
    params = NMSParams(Method.LINEAR, score_threshold=0.05, max_candidates=300,
                       keep_per_class=100, max_detections=contract.MAX_DETECTIONS)
    got = run_cuda(boxes, scores, params)
    assert_identical(got, snk.soft_nms_cpu_reference(boxes, scores, params), "merge")
    assert got.num.min() == contract.MAX_DETECTIONS


def test_cuda_empty_and_padding() -> None:
    boxes = np.tile(np.array([0.1, 0.1, 0.5, 0.5], np.float32), (2, 100, 1))
    scores = np.zeros((2, 100, 3), np.float32)
    scores[1, 7, 2] = 0.5
    got = run_cuda(boxes, scores, NMSParams(Method.HARD, max_detections=10))
    assert got.num.tolist() == [0, 1]
    assert got.classes[1, 0] == 2 and got.scores[1, 0] == np.float32(0.5)
    for padding in (got.scores[:, 1:], got.boxes[:, 1:], got.classes[:, 1:]):
        assert not padding.any()


def test_cuda_deterministic_on_a_side_stream_with_reused_workspace() -> None:
    rng = np.random.default_rng(50)
    boxes, scores = random_case(rng, 4, 3000, 20, ties=True)
    params = NMSParams(Method.LINEAR, score_threshold=0.05, max_candidates=1000,
                       keep_per_class=50, max_detections=300)
    b, s = torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda()
    workspace = torch.full((snk.workspace_size(4, 3000, 20, params),), 255, dtype=torch.uint8,
                           device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        first = [t.clone() for t in snk.soft_nms_cuda_tensors(b, s, params, workspace)]
        second = snk.soft_nms_cuda_tensors(b, s, params, workspace)
    stream.synchronize()
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)
    ref = snk.soft_nms_cpu_reference(boxes, scores, params)
    assert np.array_equal(first[0].cpu().numpy()[:, 0], ref.num)
    assert np.array_equal(first[2].cpu().numpy(), ref.scores)


def test_cuda_rejects_what_the_kernel_cannot_run() -> None:
    b, s = torch.zeros((1, 10, 4), device="cuda"), torch.zeros((1, 10, 2), device="cuda")
    limit = contract.MAX_CANDIDATES
    with pytest.raises(M2DetError, match=f"max_candidates must be <= {limit}"):
        snk.soft_nms_cuda(b, s, NMSParams(max_candidates=limit + 1, max_detections=10))
    with pytest.raises(M2DetError, match="float32 boxes"):
        snk.soft_nms_cuda(b.double(), s, NMSParams(max_detections=10))

