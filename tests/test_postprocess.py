"""The compiled post-processing (m2det.postprocess, extension m2det._postprocess) against the numpy
spec (m2det.nms with backend="numpy"): the same detections bit for bit for hard and linear (kept
boxes, scores, classes and their order), gaussian within the exp implementations' difference;
generated cases with ties, degenerate boxes, empty classes and more than 4096 candidates; box
decoding; threads; strided and torch inputs; errors; and the backend choice of m2det.nms."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_nms import box_st, draw_batch, params_st, score_st
from test_plugin import assert_gaussian_consistent, assert_identical, random_case, random_params

from m2det import nms, postprocess
from m2det.box_utils import decode
from m2det.detections import Detections
from m2det.errors import M2DetError
from m2det.nms import Method, NMSParams, batched_nms, get_nms_params, soft_nms

f32 = np.float32
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def spec(boxes: Any, scores: Any, params: NMSParams) -> Detections:
    return batched_nms(boxes, scores, params, backend="numpy")


def compiled(boxes: Any, scores: Any, params: NMSParams, threads: int = 2) -> Detections:
    return batched_nms(boxes, scores, params, backend="compiled", threads=threads)


def same(got: Detections, ref: Detections, params: NMSParams, what: str = "") -> None:
    if params.method == Method.GAUSSIAN:
        assert_gaussian_consistent(got, ref, params, what)
    else:
        assert_identical(got, ref, what)
    assert got.boxes.shape == ref.boxes.shape and got.num.dtype == np.int32


def test_the_extension_is_built() -> None:
    # pip builds it (CI installs with pip -e): without it every runner silently uses numpy
    assert postprocess.available()
    assert nms._compiled(None)


# ---------------------------------------------------------------------------------------------
# Generated cases against the spec

@SETTINGS
@given(boxes=st.lists(box_st, max_size=24), data=st.data(), p=params_st)
def test_soft_nms_matches_the_spec(boxes: list, data: st.DataObject, p: NMSParams) -> None:
    b = np.array(boxes, f32).reshape(-1, 4)
    s = np.array(data.draw(st.lists(score_st, min_size=len(b), max_size=len(b))), f32)
    idx, sc = soft_nms(b, s, p, backend="compiled")
    ref_idx, ref_sc = soft_nms(b, s, p, backend="numpy")
    assert idx.dtype == np.int64 and sc.dtype == np.float32
    if p.method == Method.GAUSSIAN:
        got, ref = (Detections.from_lists([(b[i], v, np.zeros(len(v), np.int32))])
                    for i, v in ((idx, sc), (ref_idx, ref_sc)))
        assert_gaussian_consistent(got, ref, p, "soft_nms")
    else:
        assert idx.tolist() == ref_idx.tolist()
        assert sc.tobytes() == ref_sc.tobytes()


@SETTINGS
@given(n_anchors=st.integers(0, 16), n_classes=st.integers(1, 4), n_images=st.integers(1, 3),
       data=st.data(), p=params_st, threads=st.integers(1, 4))
def test_batched_nms_matches_the_spec(n_anchors: int, n_classes: int, n_images: int,
                                      data: st.DataObject, p: NMSParams, threads: int) -> None:
    b, s = draw_batch(data, n_images, n_anchors, n_classes)
    same(compiled(b, s, p, threads), spec(b, s, p), p)


@pytest.mark.parametrize("method", list(Method))
def test_random_batches_match_the_spec(method: Method) -> None:
    rng = np.random.default_rng(int(method))
    for case in range(12):
        batch = int(rng.integers(1, 4))
        anchors = int(rng.integers(50, 1500))
        classes = int(rng.choice([1, 3, 20]))
        boxes, scores = random_case(rng, batch, anchors, classes, ties=case % 3 == 0,
                                    degenerate=case % 4 == 0)
        p = random_params(rng, method, anchors, classes)
        same(compiled(boxes, scores, p, threads=1 + case % 3), spec(boxes, scores, p), p,
             f"case {case}")


@pytest.mark.parametrize("method", [Method.HARD, Method.LINEAR])
def test_more_than_4096_candidates(method: Method) -> None:
    """A crowded class beyond the CUDA kernel's 4096: top-k to 4096 (ties at the cut by anchor),
    and no cap at all (max_candidates above the count)."""
    rng = np.random.default_rng(7)
    boxes, scores = random_case(rng, 1, 5000, 2, ties=True)
    scores[..., 0] = np.maximum(scores[..., 0], f32(0.25))  # every anchor a candidate of class 0
    for p in (NMSParams(method, max_candidates=4096, keep_per_class=0),
              NMSParams(method, max_candidates=6000, keep_per_class=0),
              NMSParams(method, max_candidates=4096, keep_per_class=50, max_detections=100)):
        same(compiled(boxes, scores, p), spec(boxes, scores, p), p, str(p))


def test_empty_classes_images_and_no_candidates() -> None:
    boxes = np.tile(np.array([0, 0, 1, 1], f32), (3, 10, 1))
    scores = np.zeros((3, 10, 4), f32)
    scores[1, :, 2] = np.linspace(0.2, 0.9, 10, dtype=f32)  # one image, one class
    for p in (NMSParams(), NMSParams(max_detections=5)):
        same(compiled(boxes, scores, p), spec(boxes, scores, p), p)
    none = compiled(boxes, np.zeros_like(scores), NMSParams())
    assert none.num.tolist() == [0, 0, 0] and none.boxes.shape == (3, 0, 4)
    empty = compiled(np.zeros((2, 0, 4), f32), np.zeros((2, 0, 3), f32),
                     NMSParams(max_detections=4))
    assert empty.num.tolist() == [0, 0] and empty.scores.shape == (2, 4)


def test_threads_do_not_change_results() -> None:
    rng = np.random.default_rng(3)
    boxes, scores = random_case(rng, 6, 3000, 20)
    p = get_nms_params("official")
    one = compiled(boxes, scores, p, threads=1)
    for threads in (2, 3, 8):
        assert_identical(compiled(boxes, scores, p, threads=threads), one, f"{threads} threads")


def test_calls_from_many_python_threads_at_once() -> None:
    """The GIL is released during a call; concurrent calls (the pool runs one at a time, the
    others in their caller) all give the single-threaded result."""
    rng = np.random.default_rng(4)
    boxes, scores = random_case(rng, 2, 2000, 20)
    p = get_nms_params("official")
    expected = compiled(boxes, scores, p, threads=1)
    results: list[Detections] = []
    workers = [threading.Thread(target=lambda: results.append(compiled(boxes, scores, p, 2)))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(results) == 4
    for r in results:
        assert_identical(r, expected, "concurrent call")


# ---------------------------------------------------------------------------------------------
# Inputs

def test_strided_views_and_torch_tensors() -> None:
    rng = np.random.default_rng(5)
    boxes, scores = random_case(rng, 2, 400, 6)
    with_background = np.concatenate([np.zeros_like(scores[..., :1]), scores], -1)
    view = with_background[..., 1:]  # what softmax(...)[..., 1:] gives: read in place
    assert not view.flags.c_contiguous
    p = get_nms_params("official")
    ref = spec(boxes, scores, p)
    assert_identical(compiled(boxes, view, p), ref, "strided view")
    assert_identical(compiled(torch.from_numpy(boxes), torch.from_numpy(with_background)[..., 1:],
                              p), ref, "torch")
    assert_identical(compiled(boxes.astype(np.float64), scores.astype(np.float16).astype(f32), p),
                     spec(boxes, scores.astype(np.float16).astype(f32), p), "float64 boxes")
    transposed = np.ascontiguousarray(scores.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert_identical(compiled(boxes, transposed, p), ref, "classes not contiguous")


def test_decode_nms_is_decode_then_batched_nms() -> None:
    """With exp arguments of 0 (loc sizes 0: exp is exactly 1 everywhere) decoding is exact
    arithmetic, so the result must equal batched_nms on torch's decoded boxes bit for bit; with
    random sizes the boxes agree to float32 rounding of exp."""
    rng = np.random.default_rng(6)
    a, c = 500, 5
    priors = torch.from_numpy(np.concatenate(
        [rng.uniform(0.1, 0.9, (a, 2)), rng.uniform(0.05, 0.4, (a, 2))], 1).astype(f32))
    loc = torch.from_numpy(rng.normal(0, 1, (2, a, 4)).astype(f32))
    loc[..., 2:] = 0
    scores = torch.from_numpy(rng.random((2, a, c), dtype=f32) ** 2)
    p = get_nms_params("official")
    variance = (0.1, 0.2)
    got = postprocess.decode_nms(loc, priors, variance, scores, p)
    assert_identical(got, spec(decode(loc, priors, variance), scores, p), "exact decode")
    loc = torch.from_numpy(rng.normal(0, 1, (2, a, 4)).astype(f32))
    got = postprocess.decode_nms(loc, priors, variance, scores, NMSParams(Method.HARD,
                                                                          iou_threshold=1.0))
    ref = spec(decode(loc, priors, variance), scores, NMSParams(Method.HARD, iou_threshold=1.0))
    assert got.num.tolist() == ref.num.tolist()
    np.testing.assert_allclose(got.boxes, ref.boxes, rtol=1e-6, atol=1e-7)


def test_errors_are_one_line_m2det_errors() -> None:
    p = NMSParams()
    b, s = np.zeros((1, 5, 4), f32), np.zeros((1, 5, 2), f32)
    with pytest.raises(M2DetError, match="boxes"):
        compiled(np.zeros((1, 6, 4), f32), s, p)
    with pytest.raises(M2DetError, match="dimensions"):
        compiled(np.zeros((5, 4), f32), s, p)
    with pytest.raises(M2DetError, match="threads"):
        compiled(b, s, p, threads=0)
    with pytest.raises(M2DetError, match="priors"):
        postprocess.decode_nms(b, np.zeros((4, 4), f32), (0.1, 0.2), s, p)
    with pytest.raises(M2DetError, match="soft_nms expects"):
        soft_nms(np.zeros((3, 4), f32), np.zeros(2, f32), p, backend="compiled")


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    b, s = np.zeros((1, 3, 4), f32), np.full((1, 3, 2), 0.5, f32)
    calls: list[str] = []
    real = postprocess.batched_nms
    def counted(*a: Any, **k: Any) -> Detections:
        calls.append("compiled")
        return real(*a, **k)

    monkeypatch.setattr(postprocess, "batched_nms", counted)
    batched_nms(b, s, NMSParams())
    assert calls == ["compiled"]  # the default
    monkeypatch.setenv("M2DET_NMS_BACKEND", "numpy")
    batched_nms(b, s, NMSParams())
    assert calls == ["compiled"]
    batched_nms(b, s, NMSParams(), backend="compiled")
    assert calls == ["compiled", "compiled"]
    with pytest.raises(M2DetError, match="unknown NMS backend 'fast'"):
        batched_nms(b, s, NMSParams(), backend="fast")
    monkeypatch.setattr(postprocess, "_ext", None)
    monkeypatch.setattr(postprocess, "_IMPORT_ERROR", "not built", raising=False)
    monkeypatch.delenv("M2DET_NMS_BACKEND")
    assert batched_nms(b, s, NMSParams()).num.tolist() == [6]  # auto: falls back to numpy
    with pytest.raises(M2DetError, match="not built"):
        batched_nms(b, s, NMSParams(), backend="compiled")
