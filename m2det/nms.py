"""Soft-NMS / NMS CPU reference: the one implementation every other NMS (CUDA kernel, its C++
reference, the compiled CPU path, the ONNX NMS graph) is compared against. ``soft_nms`` and
``batched_nms`` run the compiled path (``m2det.postprocess``, same detections) by default; this
module's numpy code, the executable spec, runs with ``backend="numpy"``.

Semantics (docs/design.md §2, "Soft-NMS semantics"; all arithmetic float32 in the stated order):

1. Per image and class, candidates are the anchors with score > ``score_threshold``; if more than
   ``max_candidates``, the highest are kept (ties: lower anchor index).
2. Until none remain or ``keep_per_class`` were emitted: emit the remaining candidate with the
   highest current score (ties: lowest anchor index) with that score, multiply every remaining
   candidate's score by w(IoU with the emitted box) and discard those whose new score is
   < ``min_score``. w: hard ``IoU > Nt ? 0 : 1``; linear ``IoU > Nt ? 1 - IoU : 1``; gaussian
   ``exp(-(IoU * IoU) / sigma)``. IoU: ``iw = min(a.x2, b.x2) - max(a.x1, b.x1)`` (ih alike),
   ``inter = iw > 0 && ih > 0 ? iw * ih : 0``, ``union = (area_a + area_b) - inter``,
   ``IoU = union > 0 ? inter / union : 0``, ``area = (x2 - x1) * (y2 - y1)`` as computed.
3. Classes are merged by score descending (ties: class, then anchor index) and cut to
   ``max_detections`` (0: no cap).

Thresholds are compared as float32 (the plugin's attributes are float32). Inputs are assumed
finite. Because every weight is <= 1 and scores are >= 0, emitted scores never increase from one
emission to the next, so the emission order of a class is also its (score desc, index asc) order.

Implementation: candidates live in a padded [R, W] matrix, one row per class, ascending anchor
index within a row (so a row-wise ``argmax`` picks the lowest index among ties). All classes of
an image run at once (in a few groups of similar candidate counts, so one crowded class does not
pad the rest); each emission step is a row-wise argmax and one multiply by the emitted boxes'
weight rows, which are precomputed as a [R, W, W] block when that is small and otherwise computed
per step, with discarded candidates squeezed out every few steps. A long, sparse class that has
to emit most of its candidates runs its connected components (pairs with weight != 1) as separate
rows. No masked numpy operations on the hot path: they are an order of magnitude slower than plain
ones.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from m2det.contract import MAX_CANDIDATES, PLUGIN_INT_ATTRIBUTES
from m2det.detections import Detections
from m2det.errors import M2DetError

__all__ = ["BACKENDS", "Method", "NMSParams", "NMS_PRESETS", "get_nms_params", "soft_nms",
           "batched_nms"]


class Method(enum.IntEnum):
    """Score decay applied to candidates overlapping an emitted box (ONNX attribute ``method``)."""

    HARD = 0
    LINEAR = 1
    GAUSSIAN = 2


@dataclass(frozen=True)
class NMSParams:
    """NMS / soft-NMS parameters; field names are the ONNX node's and the plugin's attributes
    (``iou_threshold`` is Nt).

    ``keep_per_class <= 0``: no per-class limit. ``max_detections == 0``: no per-image cap (the
    Python API only; graphs and the plugin always have a fixed K).
    """

    method: Method = Method.LINEAR
    score_threshold: float = 0.1
    iou_threshold: float = 0.3
    sigma: float = 0.5
    min_score: float = 0.001
    max_candidates: int = MAX_CANDIDATES
    keep_per_class: int = 50
    max_detections: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", Method(int(self.method)))
        except ValueError:
            raise M2DetError(f"NMS method must be 0 (hard), 1 (linear) or 2 (gaussian), "
                             f"got {self.method!r}") from None
        checks = [
            (0.0 <= self.score_threshold < np.inf, "score_threshold must be finite and >= 0"),
            (0.0 <= self.iou_threshold < np.inf, "iou_threshold must be finite and >= 0"),
            (0.0 < self.sigma < np.inf, "sigma must be finite and > 0"),
            (0.0 <= self.min_score < np.inf, "min_score must be finite and >= 0"),
            (self.max_candidates >= 1, "max_candidates must be >= 1"),
            (self.max_detections >= 0, "max_detections must be >= 0 (0: no cap)"),
        ]
        for ok, message in checks:
            if not ok:
                raise M2DetError(f"invalid NMS parameters: {message}")

    def attributes(self) -> dict[str, float | int]:
        """The 8 ONNX node / plugin attributes: name -> value (ints for method and counts)."""
        return {f.name: (int if f.name in PLUGIN_INT_ATTRIBUTES else float)(getattr(self, f.name))
                for f in fields(self)}


NMS_PRESETS: dict[str, NMSParams] = {
    # What the released M2Det code runs: cpu_soft_nms(dets, 0.45, method=1) puts the config's
    # iou 0.45 into sigma (unused by linear) and keeps the default Nt 0.3 and threshold 0.001.
    "official": NMSParams(Method.LINEAR, score_threshold=0.1, iou_threshold=0.3, sigma=0.45,
                          min_score=0.001, keep_per_class=50, max_detections=0),
    # The paper's text: soft-NMS (linear) with score threshold 0.05.
    "paper": NMSParams(Method.LINEAR, score_threshold=0.05, iou_threshold=0.3, sigma=0.45,
                       min_score=0.001, keep_per_class=50, max_detections=0),
    # Plain NMS at the official test IoU (what the paper's 20 FPS M2Det-800 figure used).
    "hard": NMSParams(Method.HARD, score_threshold=0.1, iou_threshold=0.45, sigma=0.5,
                      min_score=0.001, keep_per_class=50, max_detections=0),
}
_ALIASES = {"soft": "official"}


def get_nms_params(name: str, **overrides: Any) -> NMSParams:
    """Preset ``name`` ("official" (alias "soft"), "paper", "hard") with non-None ``overrides``
    of NMSParams fields applied."""
    key = _ALIASES.get(name, name)
    if key not in NMS_PRESETS:
        valid = ", ".join(sorted([*NMS_PRESETS, *_ALIASES]))
        raise M2DetError(f"unknown NMS preset {name!r} (valid: {valid})")
    names = {f.name for f in fields(NMSParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise M2DetError(f"unknown NMS parameter(s) {', '.join(unknown)} "
                         f"(valid: {', '.join(sorted(names))})")
    params = NMS_PRESETS[key]
    changes = {k: v for k, v in overrides.items() if v is not None}
    return NMSParams(**{**{f.name: getattr(params, f.name) for f in fields(params)}, **changes})


# --------------------------------------------------------------------------------------------
# The emission loop over a padded [R, W] candidate matrix.

_NEG_INF = np.float32(-np.inf)
_ONE = np.float32(1)
_ZERO = np.float32(0)
_TINY = np.finfo(np.float32).smallest_subnormal
_BLOCK_ELEMENTS = 1 << 16  # precompute all [R,W,W] weights up to this size
_ROW_BLOCK = 320  # a single row precomputes all [W,W] weights up to this width
_GROUP_WIDTHS = (32, 256, 2048)  # classes are run in groups of similar candidate counts
_SPLIT_PAIRS = 32  # per candidate: most x-overlapping pairs weighed to split a row in components
_SPLIT_PARTS = 8  # ... and only used when its largest component is at most 1/8 of the row
_SQUEEZE_EVERY = 8  # steps between checks whether to squeeze discarded candidates out


# Float32 overflow to inf (and inf - inf = NaN) on huge boxes is the spec's IEEE arithmetic, the
# same as in the C++ and CUDA implementations: not worth a RuntimeWarning per call.
def _ieee() -> np.errstate:
    return np.errstate(over="ignore", invalid="ignore")


BACKENDS = ("auto", "compiled", "numpy")


def _compiled(backend: str | None) -> bool:
    """Whether ``backend`` (None: ``$M2DET_NMS_BACKEND``, else "auto") runs the compiled path."""
    name = backend or os.environ.get("M2DET_NMS_BACKEND") or "auto"
    if name not in BACKENDS:
        raise M2DetError(f"unknown NMS backend {name!r} (valid: {', '.join(BACKENDS)})")
    if name == "numpy":
        return False
    from m2det import postprocess

    return name == "compiled" or postprocess.available()


def _as_f32(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


@dataclass
class _Candidates:
    """Padded per-row candidates. ``box`` [5,R,W] x1,y1,x2,y2,area; ``score`` [R,W] (-inf
    padding); ``index`` [R,W] int64 anchor index (ascending within a row); ``row_id`` [R] the
    caller's id of each row (its class); ``emitted`` [R] emissions so far."""

    box: np.ndarray
    score: np.ndarray
    index: np.ndarray
    row_id: np.ndarray
    emitted: np.ndarray


def _nonzero_2d(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D mask (row-major order), via the much faster 1-D version."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _layout(rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For flat entries sorted by row: (row ids present [R], dense row of each entry, position
    of each entry within its row, padded width W)."""
    counts = np.bincount(rows, minlength=n_rows)
    present = counts > 0
    dense_row = (np.cumsum(present) - 1)[rows]
    pos = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    return np.flatnonzero(present), dense_row, pos, int(counts.max(initial=0))


def _pack(rows: np.ndarray, cols: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
          n_rows: int) -> _Candidates:
    """Candidates given flat, sorted by row then anchor index: ``rows``/``cols`` [L] row id and
    anchor index, ``boxes`` [L,4], ``scores`` [L]; row ids are < ``n_rows``."""
    row_id, rr, pos, w = _layout(rows, n_rows)
    r = len(row_id)
    box = np.zeros((5, r, w), np.float32)
    score = np.full((r, w), _NEG_INF, np.float32)
    index = np.zeros((r, w), np.int64)
    box[:4, rr, pos] = boxes.T
    with _ieee():  # boxes beyond ~1e19 (an untrained network's exp()) give inf areas
        box[4] = (box[2] - box[0]) * (box[3] - box[1])
    score[rr, pos] = scores
    index[rr, pos] = cols
    return _Candidates(box, score, index, row_id, np.zeros(r, np.int64))


def _select(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, max_candidates: int,
            n_rows: int) -> np.ndarray:
    """Mask over flat candidates (sorted by row) keeping the ``max_candidates`` highest scores
    of each row (ties: lower anchor index)."""
    counts = np.bincount(rows, minlength=n_rows)
    keep = np.ones(len(rows), bool)
    if counts.max(initial=0) <= max_candidates:
        return keep
    order = np.lexsort((cols, -scores, rows))
    rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows[order]]
    keep[order[rank >= max_candidates]] = False
    return keep


def _squeeze(c: _Candidates, live: np.ndarray) -> _Candidates:
    """Drop non-live entries and rows without live entries, keeping the order within rows."""
    r_idx, c_idx = _nonzero_2d(live)
    present, rr, pos, w = _layout(r_idx, live.shape[0])
    r = len(present)
    box = np.zeros((5, r, w), np.float32)
    score = np.full((r, w), _NEG_INF, np.float32)
    index = np.zeros((r, w), np.int64)
    box[:, rr, pos] = c.box[:, r_idx, c_idx]
    score[rr, pos] = c.score[r_idx, c_idx]
    index[rr, pos] = c.index[r_idx, c_idx]
    return _Candidates(box, score, index, c.row_id[present], c.emitted[present])


def _weights(emitter: np.ndarray, cand: np.ndarray, p: NMSParams) -> np.ndarray:
    """w(IoU(a, b)) for emitter boxes ``emitter`` [5,R,T,1] against candidates ``cand``
    [5,R,1,W] (x1,y1,x2,y2,area) -> [R,T,W] float32, with the spec's operations in its order."""
    with _ieee():
        return _weights_ieee(emitter, cand, p)


def _weights_ieee(emitter: np.ndarray, cand: np.ndarray, p: NMSParams) -> np.ndarray:
    # x and y together: [iw, ih] = max(min(a.x2y2, b.x2y2) - max(a.x1y1, b.x1y1), 0)
    iwh = np.minimum(emitter[2:4], cand[2:4])
    iwh -= np.maximum(emitter[0:2], cand[0:2])
    np.maximum(iwh, _ZERO, out=iwh)  # iw > 0 && ih > 0 ? iw * ih : 0 == max(iw,0) * max(ih,0)
    iw, ih = iwh
    inter = np.multiply(iw, ih, out=iw)
    union = np.add(emitter[4], cand[4], out=ih)
    union -= inter
    # union > 0 ? inter / union : 0 -- inter is 0 wherever union <= 0, and a positive float32
    # is >= the smallest subnormal, so this divides by union exactly where union > 0.
    np.maximum(union, _TINY, out=union)
    iou = np.divide(inter, union, out=inter)
    # 0 <= IoU <= 1 in float32 too (inter <= min(areas) and union >= inter), so every w is in
    # [0, 1]. Masked numpy ops are slow; the weights below are exact arithmetic selects.
    if p.method == Method.GAUSSIAN:
        w = np.multiply(iou, iou, out=iou)
        w /= -np.float32(p.sigma)  # x / -sigma == -x / sigma exactly
        return np.exp(w, out=w)
    hit = iou > np.float32(p.iou_threshold)
    if p.method == Method.HARD:
        return np.logical_not(hit).astype(np.float32)
    iou *= hit  # 1 - (hit ? iou : 0) == (hit ? 1 - iou : 1)
    return np.subtract(_ONE, iou, out=iou)


def _emit(c: _Candidates, p: NMSParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2 on every row at once. Returns flat (row_id, anchor index, score), each row's
    entries in its emission order (rows interleaved).

    Each step is a row-wise argmax and one multiply by the emitted boxes' weight rows: taken
    from a precomputed [R,W,W] block when that is small, else computed for the step (and
    discarded candidates squeezed out every few steps). Emitted entries and padding hold -inf
    (kept there by ``fmax`` when -inf * 0 gives NaN); a discarded entry keeps a score below
    min_score, which weights in [0, 1] cannot raise, so after the first emission a row's argmax
    is a remaining candidate exactly when its score is >= min_score."""
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    min_score = np.float32(p.min_score)
    keep = p.keep_per_class if p.keep_per_class > 0 else np.iinfo(np.int64).max
    r, width = c.score.shape
    block = None
    if r * width * width <= _BLOCK_ELEMENTS:
        block = _weights(c.box[..., None], c.box[:, :, None, :], p)  # [R,W,W]
    step = 0
    with np.errstate(invalid="ignore"):  # -inf * 0
        while c.score.size:
            rows = np.arange(c.score.shape[0])
            j = c.score.argmax(axis=1)
            s = c.score[rows, j]
            ok = s > _NEG_INF if step == 0 else s >= min_score
            if not ok.any():
                break
            emit_rows = rows if ok.all() else rows[ok]
            out.append((c.row_id[emit_rows], c.index[emit_rows, j[emit_rows]], s[ok]))
            if block is not None:
                w = block[rows, j]
            else:
                w = _weights(c.box[:, rows, j][:, :, None, None], c.box[:, :, None, :], p)[:, 0]
            c.score[rows, j] = _NEG_INF
            c.score *= w
            np.fmax(c.score, _NEG_INF, out=c.score)
            c.emitted += ok
            done = c.emitted >= keep
            if done.any():
                c.score[done] = _NEG_INF
            step += 1
            if block is None and step % _SQUEEZE_EVERY == 0:
                live = c.score >= min_score
                if 4 * int(live.sum(1).max(initial=0)) < 3 * width or not live.any(1).all():
                    c = _squeeze(c, live)
                    width = c.score.shape[1]
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows_out, idx_out, score_out = (np.concatenate([o[k] for o in out]) for k in range(3))
    return rows_out, idx_out, score_out


def _components(box: np.ndarray, p: NMSParams, max_pairs: int) -> np.ndarray | None:
    """Connected components of "weight != 1" among boxes ``box`` [5,W]: a dense component id
    per box [W], or None when more than ``max_pairs`` pairs overlap in x (then finding them
    costs more than it saves). Emissions in one component never change another's scores.

    w != 1 needs inter > 0, so only pairs overlapping in x are weighed: sorted by x1, box i can
    only overlap the boxes after it whose x1 is < its x2."""
    width = box.shape[1]
    order = np.argsort(box[0], kind="stable")
    end = np.searchsorted(box[0, order], box[2, order], side="left")
    counts = np.maximum(end - np.arange(width) - 1, 0)
    n_pairs = int(counts.sum())
    if n_pairs > max_pairs:
        return None
    first = np.repeat(np.arange(width), counts)
    second = first + 1 + np.arange(n_pairs) - np.repeat(np.cumsum(counts) - counts, counts)
    a, b = order[first], order[second]
    hit = _weights(box[:, a], box[:, b], p) != _ONE
    a, b = a[hit], b[hit]
    label = np.arange(width)
    while True:  # min-label propagation with pointer jumping
        new = label.copy()
        np.minimum.at(new, a, label[b])
        np.minimum.at(new, b, label[a])
        new = new[new]
        if np.array_equal(new, label):
            return np.unique(label, return_inverse=True)[1]
        label = new


def _emit_row(c: _Candidates, p: NMSParams, split: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``_emit`` for a single row. Returns (anchor index [k], score [k]) in emission order.

    A long sparse row that must emit most of its candidates (``split``) runs its connected
    components as separate rows instead: each emits as if alone, and since emission order is
    (score desc, index asc) the results merge by sorting."""
    if not c.score.size:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    width = c.score.shape[1]
    keep = p.keep_per_class if p.keep_per_class > 0 else width
    if split and width > _ROW_BLOCK and 8 * keep >= width:
        comp = _components(c.box[:, 0], p, _SPLIT_PAIRS * width)
        if comp is not None and _SPLIT_PARTS * np.bincount(comp).max() <= width:
            score, index = c.score[0], c.index[0]
            remain = score >= np.float32(p.min_score)  # the rest go with the first emission
            remain[int(score.argmax())] = True
            order = np.argsort(comp, kind="stable")
            order = order[remain[order]]
            _, idx, out = _run_rows(comp[order], index[order], c.box[:4, 0, order].T,
                                    score[order], int(comp.max()) + 1, p, split=False)
            best = np.lexsort((idx, -out))[:keep]
            return idx[best], out[best]
    return _emit_row_steps(c, p)


def _emit_row_steps(c: _Candidates, p: NMSParams) -> tuple[np.ndarray, np.ndarray]:
    """The emission loop of ``_emit`` for a single row, with scalar indexing (much less overhead
    per step)."""
    idx: list[int] = []
    out: list[np.float32] = []
    min_score = np.float32(p.min_score)
    keep = p.keep_per_class if p.keep_per_class > 0 else np.iinfo(np.int64).max
    width = c.score.shape[1] if c.score.size else 0
    if not width:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    block = _weights(c.box[..., None], c.box[:, :, None, :], p)[0] if width <= _ROW_BLOCK else None
    score, index = c.score[0], c.index[0]
    with np.errstate(invalid="ignore"):  # -inf * 0
        while len(out) < keep and width:
            j = int(score.argmax())
            s = score[j]
            if not (s >= min_score if out else s > _NEG_INF):
                break
            idx.append(int(index[j]))
            out.append(s)
            w = block[j] if block is not None else _weights(c.box[:, 0, j, None], c.box[:, 0], p)
            score[j] = _NEG_INF
            score *= w
            np.fmax(score, _NEG_INF, out=score)
            if block is None and len(out) % _SQUEEZE_EVERY == 0:
                live = score >= min_score
                if 4 * int(np.count_nonzero(live)) < 3 * width:
                    c = _squeeze(c, live[None])
                    width = c.score.shape[1]
                    score, index = (c.score[0], c.index[0]) if width else (score, index)
    return np.array(idx, np.int64), np.array(out, np.float32)


def soft_nms(boxes: Any, scores: Any, params: NMSParams, *,
             backend: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-2 for one class: ``boxes`` [N,4] float32 x1,y1,x2,y2, ``scores`` [N] float32
    (numpy or torch) -> (kept indices into N, int64 [k], in emission order; their emitted scores,
    float32 [k]). ``backend``: see ``batched_nms``."""
    if _compiled(backend):
        from m2det import postprocess

        return postprocess.soft_nms(boxes, scores, params)
    b, s = _as_f32(boxes), _as_f32(scores)
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise M2DetError(f"soft_nms expects boxes [N,4] and scores [N], got {list(b.shape)} "
                         f"and {list(s.shape)}")
    cols = np.flatnonzero(s > np.float32(params.score_threshold))
    rows = np.zeros(len(cols), np.int64)
    keep = _select(rows, cols, s[cols], params.max_candidates, 1)
    rows, cols = rows[keep], cols[keep]
    return _emit_row(_pack(rows, cols, b[cols], s[cols], 1), params)


def _run_rows(rows: np.ndarray, cols: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
              n_rows: int, p: NMSParams,
              split: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2 for flat candidates sorted by row then anchor index (``rows``/``cols`` [L],
    ``boxes`` [L,4], ``scores`` [L]); rows of similar length run together, so a few crowded
    rows don't pad all the others. Returns flat (row id, anchor index, score)."""
    group = np.searchsorted(_GROUP_WIDTHS, np.bincount(rows, minlength=n_rows))[rows]
    parts = []
    for g in np.unique(group):
        m = group == g
        c = _pack(rows[m], cols[m], boxes[m], scores[m], n_rows)
        if len(c.row_id) == 1:
            idx, score = _emit_row(c, p, split)
            parts.append((np.full(len(idx), c.row_id[0]), idx, score))
        else:
            parts.append(_emit(c, p))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    row_id, idx, score = (np.concatenate([part[k] for part in parts]) for k in range(3))
    return row_id, idx, score


def _image_nms(boxes: np.ndarray, scores: np.ndarray,
               p: NMSParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-3 for one image: boxes [A,4], scores [A,C] -> (boxes [n,4], scores [n],
    classes [n] int32) in merged order; all classes run together."""
    n_classes = scores.shape[1]
    anchors, classes = _nonzero_2d(scores > np.float32(p.score_threshold))
    order = np.argsort(classes, kind="stable")  # class-major, anchor ascending within
    rows, cols = classes[order], anchors[order]
    cand = scores[cols, rows]
    keep = _select(rows, cols, cand, p.max_candidates, n_classes)
    rows, cols, cand = rows[keep], cols[keep], cand[keep]
    cls, idx, score = _run_rows(rows, cols, boxes[cols], cand, n_classes, p)
    order = np.lexsort((idx, cls, -score))
    if p.max_detections > 0:
        order = order[:p.max_detections]
    return boxes[idx[order]], score[order], cls[order].astype(np.int32)


def batched_nms(boxes: Any, scores: Any, params: NMSParams, *, threads: int | None = None,
                backend: str | None = None) -> Detections:
    """Steps 1-3 per image: ``boxes`` [B,A,4] float32 (shared by all classes), ``scores``
    [B,A,C] float32 without background (numpy or torch) -> Detections (classes are column
    indices of ``scores``; padded to ``max_detections`` if set, else to the largest image).

    ``backend``: "compiled" (``m2det.postprocess``: same detections, one GIL-free call on
    ``threads`` threads), "numpy" (this module's code, the spec; ``threads`` unused) or "auto"
    (default; ``$M2DET_NMS_BACKEND`` overrides it): compiled when the extension is built."""
    if _compiled(backend):
        from m2det import postprocess

        return postprocess.batched_nms(boxes, scores, params, threads=threads)
    b, s = _as_f32(boxes), _as_f32(scores)
    if b.ndim != 3 or b.shape[2] != 4 or s.ndim != 3 or s.shape[:2] != b.shape[:2]:
        raise M2DetError(f"batched_nms expects boxes [B,A,4] and scores [B,A,C], got "
                         f"{list(b.shape)} and {list(s.shape)}")
    per_image = [_image_nms(b[i], s[i], params) for i in range(b.shape[0])]
    return Detections.from_lists(per_image, params.max_detections or None)
