"""Randomised differential check of a soft-NMS implementation against the C++ reference
(``m2det.engines.soft_nms_kernel.soft_nms_cpu_reference``, the C ABI's CPU path).

Every case is a pure function of ``(seed, index)`` (``make_case``), so a mismatch is replayed
with ``make_case(seed, index)``. Cases span hard/linear/gaussian, float32 and float16 scores,
1-80 classes, batch 1-32, 50-4,096 candidates per class (and more anchors than ``max_candidates``
so the top-k path runs), exact score ties with duplicated boxes, zero-size and inverted boxes,
and empty images. The work of a case (B*A*C) is bounded so that the CPU reference stays fast,
except for a few full-size cases (B=32, A=4096, C=80).

Agreement is the spec's (``plugins/soft_nms/README.md``): hard and linear are bit-identical
(count, boxes, scores, classes, in order, and zero padding); gaussian may differ only by the exp
implementation: shared entries within ``GAUSSIAN_RTOL``, an entry present in one result only if it
sits at a cut (min_score, the K-th score of a full result, the last score of a class that
reached keep_per_class), both sorted descending.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m2det import contract
from m2det.detections import Detections
from m2det.engines import soft_nms_kernel as snk
from m2det.errors import M2DetError
from m2det.nms import Method, NMSParams

#: Relative score tolerance for gaussian (CUDA ``expf`` is within 2 ulp of the host's; over the
#: decays of one score this stays far below 2e-5). The same bound tests/test_plugin.py uses.
GAUSSIAN_RTOL = 2e-5

#: An implementation under test: boxes [B,A,4] float32, scores [B,A,C] float32|float16 (numpy),
#: params -> Detections.
Candidate = Callable[[np.ndarray, np.ndarray, NMSParams], Detections]


@dataclass(frozen=True)
class Case:
    """One random problem: boxes [B,A,4] float32, scores [B,A,C] float32 or float16."""

    index: int
    boxes: np.ndarray
    scores: np.ndarray
    params: NMSParams
    ties: bool
    degenerate: bool

    def label(self) -> str:
        b, a, c = self.scores.shape
        return (f"case {self.index}: B={b} A={a} C={c} {self.scores.dtype} ties={self.ties} "
                f"degenerate={self.degenerate} {self.params}")


def _boxes(rng: np.random.Generator, batch: int, anchors: int) -> np.ndarray:
    """[B,A,4] float32 in about [0,1], clustered around A/8 centres so that boxes overlap."""
    centers = rng.random((batch, max(1, anchors // 8), 2), dtype=np.float32)
    pick = rng.integers(0, centers.shape[1], (batch, anchors))
    xy = np.take_along_axis(centers, pick[..., None], 1)
    xy = xy + rng.normal(0, 0.02, (batch, anchors, 2)).astype(np.float32)
    wh = rng.uniform(0.01, 0.3, (batch, anchors, 2)).astype(np.float32)
    return np.concatenate([xy - wh / 2, xy + wh / 2], -1).astype(np.float32)


def _scores(rng: np.random.Generator, batch: int, anchors: int, classes: int) -> np.ndarray:
    """[B,A,C] float32 in [0,1), skewed low like softmax outputs; some images all zero."""
    scores = (rng.random((batch, anchors, classes), dtype=np.float32) ** 3).astype(np.float32)
    if batch > 1 and rng.random() < 0.2:
        scores[rng.integers(0, batch)] = 0.0  # an image without any candidate
    return scores


def _choose(rng: np.random.Generator, edges: list[int], low: int, high: int) -> int:
    """An edge value 30% of the time, else uniform in [low, high]."""
    return int(rng.choice(edges)) if rng.random() < 0.3 else int(rng.integers(low, high + 1))


def case_work(batch: int, anchors: int, classes: int, max_candidates: int, keep: int) -> int:
    """Upper bound of the reference's steps: per (image, class) one pass over the anchors plus
    emissions x candidates."""
    cand = min(anchors, max_candidates)
    return batch * classes * (anchors + min(keep or cand, cand) * cand)


def make_case(seed: int, index: int, work: int = 5_000_000, full_every: int = 500) -> Case:
    """Case ``index`` of the stream ``seed``. ``work`` bounds ``case_work`` (anchors are halved
    until it fits, down to 50); every ``full_every``-th case (0: none) is full-size whatever
    ``work`` says: B=32, A=4096, C=80, score > 0.1, keep_per_class 50, K=100."""
    rng = np.random.default_rng([seed, index])
    method = Method(int(rng.integers(0, 3)))
    full = full_every > 0 and index % full_every == full_every - 1
    keep = 50 if full else int(rng.choice([0, 1, 10, 50, 100, 500]))
    top = contract.MAX_CANDIDATES
    max_cand = int(rng.choice([1, 7, 100, 1000, top, int(rng.integers(1, top + 1))]))
    if full:
        batch, classes, anchors, max_cand = 32, 80, top, top
    else:
        batch = _choose(rng, [1, 32], 1, 32)
        classes = _choose(rng, [1, 80], 1, 80)
        if rng.random() < 0.3:  # the edges, and more anchors than max_candidates can take
            anchors = int(rng.choice([50, top, top + 1, 12_000]))
        else:
            anchors = int(np.exp(rng.uniform(np.log(50), np.log(top))))
        while anchors > 50 and case_work(batch, anchors, classes, max_cand, keep) > work:
            anchors = max(50, anchors // 2)
    boxes = _boxes(rng, batch, anchors)
    scores = _scores(rng, batch, anchors, classes)
    ties, degenerate = bool(rng.random() < 0.3), bool(rng.random() < 0.3)
    if ties:  # scores on a coarse grid and duplicated boxes: ties everywhere
        scores = (np.round(scores * 16) / 16).astype(np.float32)
        dup = rng.random((batch, anchors)) < 0.2
        boxes[dup] = boxes[:, :1].repeat(anchors, 1)[dup]
    if degenerate:  # zero-width and inverted boxes
        flat = rng.random((batch, anchors)) < 0.1
        boxes[flat, 2] = boxes[flat, 0]
        inv = rng.random((batch, anchors)) < 0.05
        boxes[inv] = boxes[inv][:, [2, 3, 0, 1]]
    if rng.random() < 0.5:
        scores = scores.astype(np.float16)
    k = int(rng.choice([0, 1, 20, 100, 300, contract.MAX_DETECTIONS]))
    keep_cap = min(max_cand, anchors, keep or anchors)
    if k == 0 and classes * keep_cap > contract.MAX_DETECTIONS:
        k = contract.MAX_DETECTIONS  # "no cap" means K = C*keep_cap, which the kernel caps
    params = NMSParams(
        method=method,
        score_threshold=0.1 if full else float(rng.choice([0.0, 0.05, 0.1, 0.3])),
        iou_threshold=float(rng.choice([0.3, 0.45, 0.5, 0.7])),
        sigma=float(rng.choice([0.3, 0.5, 1.0])),
        min_score=float(rng.choice([0.0, 0.001, 0.01, 0.05])),
        max_candidates=max_cand,
        keep_per_class=keep,
        max_detections=100 if full else k,
    )
    return Case(index, boxes, scores, params, ties, degenerate)


# ---------------------------------------------------------------------------------- comparison
def exact_difference(got: Detections, ref: Detections) -> str | None:
    """None when ``got`` equals ``ref`` bit for bit (per image: count, boxes, scores, classes in
    order; ``got``'s padding zero), else what differs first."""
    if len(got) != len(ref):
        return f"batch {len(got)} vs {len(ref)}"
    for b in range(len(ref)):
        g, r = got.image(b), ref.image(b)
        if len(g[1]) != len(r[1]):
            return f"image {b}: {len(g[1])} vs {len(r[1])} detections"
        for name, x, y in zip(("boxes", "scores", "classes"), g, r, strict=True):
            if x.tobytes() != y.tobytes():
                i = int(np.flatnonzero((x != y).reshape(len(x), -1).any(1))[0])
                return f"image {b}: {name} differ first at rank {i}: {x[i]} vs {y[i]}"
        n = int(got.num[b])
        for name, pad in (("boxes", got.boxes[b, n:]), ("scores", got.scores[b, n:]),
                          ("classes", got.classes[b, n:])):
            if pad.any():
                return f"image {b}: {name} padding past {n} is not zero"
    return None


def gaussian_difference(got: Detections, ref: Detections, params: NMSParams) -> str | None:
    """None when gaussian results agree up to the exp implementation (module docstring): an
    entry found in one result only must sit at a cut of the other within ``GAUSSIAN_RTOL``:
    ``min_score``; the K-th score when the other result is full; the lowest score of its class
    when the other result emitted ``keep_per_class`` of that class."""
    if len(got) != len(ref):
        return f"batch {len(got)} vs {len(ref)}"
    for b in range(len(ref)):
        entries = []
        for name, det in (("got", got), ("ref", ref)):
            boxes, scores, classes = det.image(b)
            if np.any(np.diff(scores) > 0):
                return f"image {b}: {name} not sorted by score"
            entries.append({(int(c), *bx.tolist()): float(s)
                            for bx, s, c in zip(boxes, scores, classes, strict=True)})
        g, r = entries
        for key in g.keys() & r.keys():
            if abs(g[key] - r[key]) > GAUSSIAN_RTOL * abs(r[key]):
                return f"image {b}: {key} score {g[key]} vs {r[key]}"
        for only, other in ((g.keys() - r.keys(), r), (r.keys() - g.keys(), g)):
            full = params.max_detections > 0 and len(other) == params.max_detections
            for key in only:
                cuts = [params.min_score] + ([min(other.values())] if full else [])
                in_class = [v for k, v in other.items() if k[0] == key[0]]
                if params.keep_per_class > 0 and len(in_class) == params.keep_per_class:
                    cuts.append(min(in_class))
                s = g.get(key, r.get(key))
                if s is None or s > max(cuts) * (1 + GAUSSIAN_RTOL):
                    return (f"image {b}: {key} score {s} in one result only, above the cuts "
                            f"{max(cuts)}")
    return None


def difference(got: Detections, ref: Detections, params: NMSParams) -> str | None:
    """The spec's agreement rule for ``params.method`` (None = agree)."""
    if params.method == Method.GAUSSIAN:
        return gaussian_difference(got, ref, params)
    return exact_difference(got, ref)


# ---------------------------------------------------------------------------------- the run
@dataclass
class FuzzResult:
    """Counts of a fuzz run; ``mismatches`` lists the first ``MAX_LISTED`` with their labels."""

    seed: int
    work: int
    full_every: int
    cases: int = 0
    mismatches: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    float16_cases: int = 0
    full_size_cases: int = 0
    gaussian_bit_identical: int = 0
    listed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False

    MAX_LISTED = 20

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "cases": self.cases, "mismatches": self.mismatches,
                "cases_by_method": self.by_method, "float16_cases": self.float16_cases,
                "full_size_cases": self.full_size_cases,
                "gaussian_bit_identical": self.gaussian_bit_identical,
                "stopped_early": self.stopped_early, "seconds": round(self.seconds, 2),
                "first_mismatches": self.listed,
                "work": self.work, "full_every": self.full_every,
                "replay": "m2det.benchmarks.gpu.fuzz.make_case(seed, index, work, full_every)"}


def check_case(case: Case, candidate: Candidate) -> tuple[str | None, bool]:
    """(difference or None, bit-identical) of ``candidate`` against the C++ reference."""
    ref = snk.soft_nms_cpu_reference(case.boxes, case.scores, case.params)
    got = candidate(case.boxes, case.scores, case.params)
    return difference(got, ref, case.params), exact_difference(got, ref) is None


def run_fuzz(candidate: Candidate, cases: int, seed: int = 0, *, work: int = 5_000_000,
             full_every: int = 500, workers: int | None = None,
             deadline: float | None = None) -> FuzzResult:
    """Check ``cases`` cases on ``workers`` threads (the C ABI releases the GIL); stops
    submitting at ``deadline`` (a ``time.monotonic()`` value) and says so in the result."""
    result = FuzzResult(seed, work, full_every)
    t0 = time.monotonic()
    workers = workers or os.cpu_count() or 1
    full_size = (32, contract.MAX_CANDIDATES, 80)

    def job(i: int) -> tuple[Case, str | None, bool]:
        case = make_case(seed, i, work, full_every)
        diff, identical = check_case(case, candidate)
        return case, diff, identical

    with ThreadPoolExecutor(workers) as pool:
        pending: set[Future[tuple[Case, str | None, bool]]] = set()
        nxt = 0
        while nxt < cases or pending:
            while nxt < cases and len(pending) < 2 * workers:
                if deadline is not None and time.monotonic() > deadline:
                    result.stopped_early = True
                    cases = nxt
                    break
                pending.add(pool.submit(job, nxt))
                nxt += 1
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                case, diff, identical = fut.result()
                method = case.params.method.name.lower()
                result.cases += 1
                result.by_method[method] = result.by_method.get(method, 0) + 1
                result.float16_cases += case.scores.dtype == np.float16
                result.full_size_cases += case.scores.shape == full_size
                result.gaussian_bit_identical += identical and method == "gaussian"
                if diff is not None:
                    result.mismatches += 1
                    if len(result.listed) < FuzzResult.MAX_LISTED:
                        result.listed.append({"index": case.index, "case": case.label(),
                                              "difference": diff})
    result.seconds = time.monotonic() - t0
    return result


def cuda_candidate() -> Candidate:
    """The CUDA kernel through the C ABI (``soft_nms_cuda``: host arrays in, host out). Loads
    the library here, once, before worker threads call it."""
    snk.load_library(snk.CUDA_LIBRARY)

    def run(boxes: np.ndarray, scores: np.ndarray, params: NMSParams) -> Detections:
        return snk.soft_nms_cuda(boxes, scores, params)
    return run


def numpy_candidate() -> Candidate:
    """Dry-run stand-in: the numpy specification ``m2det.nms.batched_nms`` (CPU)."""
    from m2det.nms import batched_nms

    def run(boxes: np.ndarray, scores: np.ndarray, params: NMSParams) -> Detections:
        return batched_nms(boxes, scores, params)
    return run


def require_reference() -> None:
    """Load the C++ reference library (building it if needed) or raise M2DetError."""
    try:
        snk.load_library()
    except M2DetError as e:
        raise M2DetError(f"the fuzzer needs the C++ reference: {e}") from None
