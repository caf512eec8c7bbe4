"""m2det.nms: worked examples, a literal pure-Python reading of the spec compared bit for bit with
the vectorized implementation on generated cases, invariants, presets and parameter checks."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import m2det.nms as nms
from m2det.errors import M2DetError
from m2det.nms import (
    NMS_PRESETS,
    Method,
    NMSParams,
    batched_nms,
    get_nms_params,
    soft_nms,
)

f32 = np.float32


@pytest.fixture(autouse=True, scope="module")
def numpy_spec() -> Iterator[None]:
    """These tests check the spec itself, m2det.nms's numpy code (the compiled default is checked
    against it in test_postprocess.py). Module scope: hypothesis refuses function scope."""
    old = os.environ.get("M2DET_NMS_BACKEND")
    os.environ["M2DET_NMS_BACKEND"] = "numpy"
    yield
    if old is None:
        del os.environ["M2DET_NMS_BACKEND"]
    else:
        os.environ["M2DET_NMS_BACKEND"] = old


# ---------------------------------------------------------------------------------------------
# A deliberately simple second reading of the spec: scalar float32 loops, no vectorization.

def ref_iou(a: np.ndarray, b: np.ndarray) -> np.float32:
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih if (iw > 0 and ih > 0) else f32(0)
    union = (area_a + area_b) - inter
    return inter / union if union > 0 else f32(0)


def ref_weight(iou: np.float32, p: NMSParams) -> np.float32:
    nt = f32(p.iou_threshold)
    if p.method == Method.HARD:
        return f32(0) if iou > nt else f32(1)
    if p.method == Method.LINEAR:
        return f32(1) - iou if iou > nt else f32(1)
    return np.exp(-(iou * iou) / f32(p.sigma))


def ref_soft_nms(boxes: np.ndarray, scores: np.ndarray,
                 p: NMSParams) -> list[tuple[int, np.float32]]:
    cand = [i for i in range(len(scores)) if scores[i] > f32(p.score_threshold)]
    cand = sorted(cand, key=lambda i: (-scores[i], i))[:p.max_candidates]
    current = {i: scores[i] for i in cand}
    out: list[tuple[int, np.float32]] = []
    while current and (p.keep_per_class <= 0 or len(out) < p.keep_per_class):
        best = min(current, key=lambda i: (-current[i], i))
        out.append((best, current.pop(best)))
        for i in list(current):
            new = current[i] * ref_weight(ref_iou(boxes[best], boxes[i]), p)
            if new < f32(p.min_score):
                del current[i]
            else:
                current[i] = new
    return out


def ref_batched(boxes: np.ndarray, scores: np.ndarray,
                p: NMSParams) -> list[list[tuple[np.float32, int, int]]]:
    """Per image: [(score, class, anchor)] in merged order."""
    images = []
    for b in range(boxes.shape[0]):
        dets = [(s, c, i) for c in range(scores.shape[2])
                for i, s in ref_soft_nms(boxes[b], scores[b, :, c], p)]
        dets.sort(key=lambda d: (-d[0], d[1], d[2]))
        images.append(dets[:p.max_detections] if p.max_detections else dets)
    return images


@contextlib.contextmanager
def code_path(name: str) -> Iterator[None]:
    """'block': precomputed weight blocks (small inputs); 'lazy': weights per step, discarded
    candidates squeezed out at every opportunity, classes split into many groups, single
    classes split into connected components."""
    if name == "block":
        yield
        return
    with mock.patch.object(nms, "_ROW_BLOCK", 0), mock.patch.object(nms, "_BLOCK_ELEMENTS", 0), \
            mock.patch.object(nms, "_SQUEEZE_EVERY", 1), \
            mock.patch.object(nms, "_GROUP_WIDTHS", (1, 3, 6)), \
            mock.patch.object(nms, "_SPLIT_PARTS", 1):
        yield


PATHS = ["block", "lazy"]


def run(boxes: Sequence[Sequence[float]], scores: Sequence[float],
        **kw: Any) -> tuple[list[int], list[float]]:
    idx, sc = soft_nms(np.array(boxes, f32).reshape(-1, 4), np.array(scores, f32),
                       NMSParams(**kw))
    assert idx.dtype == np.int64 and sc.dtype == np.float32
    return idx.tolist(), sc.tolist()


# A: [0,0,4,4] (area 16); B inside A: [0,0,4,2] (area 8, IoU(A,B) = 8/16 = 0.5); C far away.
A, B, C = [0, 0, 4, 4], [0, 0, 4, 2], [10, 10, 12, 12]


# ---------------------------------------------------------------------------------------------
# Worked examples

@pytest.mark.parametrize("path", PATHS)
def test_linear_decays_overlap_by_one_minus_iou(path: str) -> None:
    with code_path(path):
        idx, sc = run([A, B, C], [0.9, 0.8, 0.7], method=Method.LINEAR, iou_threshold=0.3)
    assert idx == [0, 2, 1]
    assert sc == [f32(0.9), f32(0.7), f32(0.8) * f32(0.5)]  # 0.4: B after A
    tiny = [[v * 2.0**-12 for v in box] for box in (A, B, C)]  # areas below 1e-6: still exact
    with code_path(path):
        assert run(tiny, [0.9, 0.8, 0.7]) == (idx, sc)


def test_hard_suppresses_only_above_nt_strictly() -> None:
    assert run([A, B, C], [0.9, 0.8, 0.7], method=Method.HARD, iou_threshold=0.45)[0] == [0, 2]
    idx, sc = run([A, B, C], [0.9, 0.8, 0.7], method=Method.HARD, iou_threshold=0.5)
    assert idx == [0, 1, 2] and sc == [f32(0.9), f32(0.8), f32(0.7)]  # IoU 0.5 is not > 0.5


def test_gaussian_multiplies_every_overlap() -> None:
    idx, sc = run([A, B, C], [0.9, 0.8, 0.7], method=Method.GAUSSIAN, sigma=0.5)
    assert idx == [0, 2, 1]
    assert sc[2] == f32(0.8) * np.exp(f32(-0.25) / f32(0.5))
    assert sc[2] == pytest.approx(0.8 * np.exp(-0.5), rel=1e-6)
    assert sc[1] == f32(0.7)  # no overlap: weight exp(-0) == 1 exactly


def test_score_ties_go_to_the_lowest_anchor_index() -> None:
    far = [[0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11], [20, 20, 21, 21]]
    assert run(far, [0.5, 0.6, 0.5, 0.6])[0] == [1, 3, 0, 2]
    # a tie created by decay: B (index 2) falls to 0.4 == C's score; C has index 0
    idx, sc = run([C, A, B], [0.4, 0.9, 0.8])
    assert idx == [1, 0, 2] and sc[1] == sc[2] == f32(0.4)
    assert run([A, B, [10, 10, 12, 12]], [0.9, 0.8, 0.4])[0] == [0, 1, 2]


@pytest.mark.parametrize("path", PATHS)
def test_min_score_cut_is_strict(path: str) -> None:
    with code_path(path):
        assert run([A, B, C], [0.9, 0.8, 0.7], min_score=0.5)[0] == [0, 2]
        assert run([A, B, C], [0.9, 0.8, 0.7], min_score=0.4)[0] == [0, 2, 1]  # not < 0.4
        # every remaining candidate is checked after each emission, overlapping or not; the
        # first emission needs no check
        far = [[0, 0, 1, 1], [5, 5, 6, 6]]
        assert run(far, [0.3, 0.2], score_threshold=0.0, min_score=0.5) == ([0], [f32(0.3)])
        assert run([C, A, B], [0.9, 0.3, 0.2], score_threshold=0.0, min_score=0.5)[0] == [0]
    det = batched_nms(np.array([far], f32), np.array([[[0.3, 0.1], [0.2, 0.4]]], f32),
                      NMSParams(score_threshold=0.0, min_score=0.5))
    assert det.scores[0].tolist() == [f32(0.4), f32(0.3)] and det.classes[0].tolist() == [1, 0]


def test_identical_boxes_decay_to_zero() -> None:
    # linear: weight 1 - 1 = 0 -> discarded with the default min_score
    assert run([A, A, C], [0.9, 0.8, 0.7])[0] == [0, 2]
    # hard with min_score 0: a suppressed box keeps score 0 and is emitted last
    idx, sc = run([A, A, C], [0.9, 0.8, 0.7], method=Method.HARD, min_score=0.0)
    assert idx == [0, 2, 1] and sc == [f32(0.9), f32(0.7), 0.0]


@pytest.mark.parametrize("path", PATHS)
def test_keep_per_class_stops_emission(path: str) -> None:
    far = [[10 * i, 0, 10 * i + 1, 1] for i in range(6)]
    scores = [0.2, 0.7, 0.5, 0.9, 0.3, 0.6]
    with code_path(path):
        assert run(far, scores, keep_per_class=3)[0] == [3, 1, 5]
        assert run(far, scores, keep_per_class=0)[0] == [3, 1, 5, 2, 4, 0]


def test_score_threshold_is_strict_in_float32() -> None:
    far = [[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]]
    scores = [0.1, np.nextafter(f32(0.1), f32(1)), 0.05]
    assert run(far, scores, score_threshold=0.1)[0] == [1]
    assert run(far, scores, score_threshold=0.0)[0] == [1, 0, 2]


def test_max_candidates_is_a_stable_top_k() -> None:
    far = [[10 * i, 0, 10 * i + 1, 1] for i in range(5)]
    assert run(far, [0.5, 0.9, 0.5, 0.5, 0.2], max_candidates=2)[0] == [1, 0]
    assert run(far, [0.5, 0.9, 0.5, 0.5, 0.2], max_candidates=3)[0] == [1, 0, 2]


@pytest.mark.parametrize("path", PATHS)
def test_degenerate_boxes_overlap_nothing(path: str) -> None:
    zero_w, line, flipped = [2, 0, 2, 4], [0, 0, 4, 0], [4, 4, 0, 0]  # areas 0, 0, 16
    with code_path(path):
        idx, sc = run([zero_w, zero_w, line, flipped, A], [0.9, 0.8, 0.7, 0.6, 0.5],
                      method=Method.HARD, iou_threshold=0.0)
    assert idx == [0, 1, 2, 3, 4] and sc == [f32(s) for s in (0.9, 0.8, 0.7, 0.6, 0.5)]


def test_empty_inputs() -> None:
    assert run([], []) == ([], [])
    assert run([A, B], [0.05, 0.01]) == ([], [])
    det = batched_nms(np.zeros((2, 0, 4), f32), np.zeros((2, 0, 3), f32), NMSParams())
    assert det.num.tolist() == [0, 0] and det.boxes.shape == (2, 0, 4)
    det = batched_nms(np.zeros((1, 3, 4), f32), np.zeros((1, 3, 3), f32),
                      NMSParams(max_detections=5))
    assert det.num.tolist() == [0] and det.scores.shape == (1, 5)


def test_accepts_torch_tensors() -> None:
    idx, sc = soft_nms(torch.tensor([A, B, C], dtype=torch.float32),
                       torch.tensor([0.9, 0.8, 0.7]), NMSParams())
    assert idx.tolist() == [0, 2, 1]
    det = batched_nms(torch.tensor([[A, B, C]], dtype=torch.float32),
                      torch.tensor([[[0.9], [0.8], [0.7]]]), NMSParams())
    assert det.num.tolist() == [3] and det.scores[0].tolist() == sc.tolist()


def test_bad_shapes_raise() -> None:
    with pytest.raises(M2DetError, match="boxes \\[N,4\\]"):
        soft_nms(np.zeros((3, 5), f32), np.zeros(3, f32), NMSParams())
    with pytest.raises(M2DetError, match="boxes \\[B,A,4\\]"):
        batched_nms(np.zeros((1, 3, 4), f32), np.zeros((1, 2, 2), f32), NMSParams())


@pytest.mark.parametrize("path", PATHS)
def test_batched_merges_by_score_then_class_then_anchor(path: str) -> None:
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]]], f32)
    scores = np.array([[[0.5, 0.9], [0.9, 0.5], [0.0, 0.5]]], f32)  # [1, A=3, C=2]
    with code_path(path):
        det = batched_nms(boxes, scores, NMSParams())
        assert det.num.tolist() == [5]
        assert det.scores[0].tolist() == [f32(0.9)] * 2 + [f32(0.5)] * 3
        assert det.classes[0].tolist() == [0, 1, 0, 1, 1]
        assert det.boxes[0].tolist() == boxes[0, [1, 0, 0, 1, 2]].tolist()
        capped = batched_nms(np.repeat(boxes, 2, 0), np.repeat(scores, 2, 0),
                             NMSParams(max_detections=3))
    assert capped.num.tolist() == [3, 3] and capped.scores.shape == (2, 3)
    assert capped.classes.dtype == np.int32
    assert capped.classes[1].tolist() == [0, 1, 0]


# ---------------------------------------------------------------------------------------------
# Generated cases against the reference (quantized coordinates and scores make many ties)

coords = st.one_of(st.integers(0, 8).map(lambda v: v / 4),
                   st.floats(0, 1, width=32, allow_subnormal=False))
box_st = st.tuples(coords, coords, st.integers(-1, 6).map(lambda v: v / 4), coords).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3] * 0.75])  # occasional negative width
score_st = st.one_of(st.integers(0, 10).map(lambda v: v / 10), st.floats(0, 1, width=32))

def draw_batch(data: st.DataObject, n_images: int, n_anchors: int,
               n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Generated raw outputs: boxes [n_images, n_anchors, 4], scores [.., n_classes] (float32)."""
    boxes = data.draw(st.lists(box_st, min_size=n_images * n_anchors,
                               max_size=n_images * n_anchors))  # fmt: skip
    size = n_images * n_anchors * n_classes
    scores = data.draw(st.lists(score_st, min_size=size, max_size=size))
    return (np.array(boxes, np.float32).reshape(n_images, n_anchors, 4),
            np.array(scores, np.float32).reshape(n_images, n_anchors, n_classes))


params_st = st.builds(
    NMSParams,
    method=st.sampled_from(list(Method)),
    score_threshold=st.sampled_from([0.0, 0.05, 0.3]),
    iou_threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7]),
    sigma=st.sampled_from([0.5, 0.1]),
    min_score=st.sampled_from([0.0, 0.001, 0.2]),
    max_candidates=st.sampled_from([1, 3, 4096]),
    keep_per_class=st.sampled_from([0, 1, 5, 50]),
    max_detections=st.sampled_from([0, 2, 7]),
)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("path", PATHS)
@FAST
@given(boxes=st.lists(box_st, max_size=24), data=st.data(), p=params_st)
def test_soft_nms_matches_reference(path: str, boxes: list, data: st.DataObject,
                                    p: NMSParams) -> None:
    b = np.array(boxes, f32).reshape(-1, 4)
    s = np.array(data.draw(st.lists(score_st, min_size=len(b), max_size=len(b))), f32)
    with code_path(path):
        idx, sc = soft_nms(b, s, p)
    expected = ref_soft_nms(b, s, p)
    assert idx.tolist() == [i for i, _ in expected]
    assert sc.view(np.int32).tolist() == np.array([v for _, v in expected], f32).view(
        np.int32).tolist()  # bit-identical


@pytest.mark.parametrize("path", PATHS)
@settings(FAST, max_examples=60)
@given(n_anchors=st.integers(0, 12), n_classes=st.integers(1, 4), n_images=st.integers(1, 2),
       data=st.data(), p=params_st)
def test_batched_nms_matches_reference(path: str, n_anchors: int, n_classes: int,
                                       n_images: int, data: st.DataObject,
                                       p: NMSParams) -> None:
    b, s = draw_batch(data, n_images, n_anchors, n_classes)
    with code_path(path):
        det = batched_nms(b, s, p)
    expected = ref_batched(b, s, p)
    if p.max_detections:
        assert det.scores.shape == (n_images, p.max_detections)
    for i, dets in enumerate(expected):
        boxes, scores, classes = det.image(i)
        assert classes.tolist() == [c for _, c, _ in dets]
        assert scores.view(np.int32).tolist() == np.array([v for v, _, _ in dets], f32).view(
            np.int32).tolist()
        assert boxes.tolist() == b[i, [a for _, _, a in dets]].reshape(-1, 4).tolist()


# ---------------------------------------------------------------------------------------------
# Invariants on larger random cases (clustered boxes: many overlaps)

def clustered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.2, 0.8, (4, 2))[rng.integers(0, 4, n)]
    wh = rng.uniform(0.05, 0.3, (n, 2))
    boxes = np.concatenate([centers - wh / 2, centers + wh / 2], 1) + rng.normal(0, 0.02, (n, 4))
    return boxes.astype(f32), rng.uniform(0.0, 1.0, n).astype(f32)


@pytest.mark.parametrize("method", list(Method))
@pytest.mark.parametrize("n", [60, 700])  # 700 takes the lazy path
def test_invariants(method: Method, n: int) -> None:
    boxes, scores = clustered(n, seed=n + method)
    p = NMSParams(method, iou_threshold=0.4, keep_per_class=0)
    idx, sc = soft_nms(boxes, scores, p)
    assert len(set(idx.tolist())) == len(idx) > 0
    assert np.all(np.diff(sc) <= 0)  # weights are in [0, 1]: emissions never increase
    assert np.all(sc <= scores[idx]) and np.all(sc >= f32(p.min_score))
    first = ref_soft_nms(boxes, scores, NMSParams(method, iou_threshold=0.4, keep_per_class=8))
    assert idx[:8].tolist() == [i for i, _ in first]
    if method == Method.HARD:  # min_score > 0: suppressed boxes are gone
        kept = boxes[idx]
        for i in range(len(kept)):
            for k in range(i):
                assert ref_iou(kept[k], kept[i]) <= f32(p.iou_threshold)


@pytest.mark.parametrize("method", list(Method))
def test_matches_reference_on_a_crowded_class(method: Method) -> None:
    boxes, scores = clustered(400, seed=7)  # > _ROW_BLOCK: weights per step, squeezes
    p = NMSParams(method, score_threshold=0.05, iou_threshold=0.3, keep_per_class=0)
    idx, sc = soft_nms(boxes, scores, p)
    expected = ref_soft_nms(boxes, scores, p)
    assert idx.tolist() == [i for i, _ in expected]
    assert sc.tolist() == [s for _, s in expected]


def test_batched_equals_per_class_soft_nms() -> None:
    boxes, _ = clustered(300, seed=1)
    rng = np.random.default_rng(2)
    scores = rng.dirichlet(np.full(6, 0.3), 300).astype(f32)
    p = get_nms_params("official", keep_per_class=20)
    det = batched_nms(boxes[None], scores[None], p)
    got_boxes, got_scores, got_classes = det.image(0)
    for c in range(6):
        idx, sc = soft_nms(boxes, scores[:, c], p)
        mine = got_classes == c
        assert got_scores[mine].tolist() == sc.tolist()
        assert got_boxes[mine].tolist() == boxes[idx].tolist()


# ---------------------------------------------------------------------------------------------
# Parameters and presets

def test_presets() -> None:
    official = NMS_PRESETS["official"]
    assert (official.method, official.iou_threshold, official.sigma, official.min_score,
            official.score_threshold, official.keep_per_class, official.max_detections) == (
        Method.LINEAR, 0.3, 0.45, 0.001, 0.1, 50, 0)
    assert get_nms_params("soft") == official
    assert get_nms_params("paper") == dataclasses.replace(official, score_threshold=0.05)
    hard = get_nms_params("hard")
    assert (hard.method, hard.iou_threshold, hard.score_threshold, hard.keep_per_class) == (
        Method.HARD, 0.45, 0.1, 50)


def test_get_nms_params_overrides_and_errors() -> None:
    p = get_nms_params("official", iou_threshold=0.5, keep_per_class=None, method=2)
    assert p.iou_threshold == 0.5 and p.keep_per_class == 50 and p.method is Method.GAUSSIAN
    with pytest.raises(M2DetError, match="unknown NMS preset 'fast'.*hard, official, paper, soft"):
        get_nms_params("fast")
    with pytest.raises(M2DetError, match="unknown NMS parameter"):
        get_nms_params("hard", nt=0.5)


@pytest.mark.parametrize("bad", [dict(method=3), dict(sigma=0.0), dict(min_score=-0.1),
                                 dict(score_threshold=float("nan")), dict(max_candidates=0),
                                 dict(max_detections=-1), dict(iou_threshold=-0.5)])
def test_invalid_params_raise(bad: dict[str, Any]) -> None:
    with pytest.raises(M2DetError, match="NMS"):
        NMSParams(**bad)


def test_attributes_are_the_eight_plugin_attributes() -> None:
    attrs = NMSParams(method=Method.HARD, max_detections=100).attributes()
    assert list(attrs) == ["method", "score_threshold", "iou_threshold", "sigma", "min_score",
                           "max_candidates", "keep_per_class", "max_detections"]
    assert attrs["method"] == 0 and type(attrs["method"]) is int
    assert type(attrs["max_detections"]) is int and type(attrs["sigma"]) is float
