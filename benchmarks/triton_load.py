"""``m2det-bench --triton URL``: latency and throughput of a model served by Triton, in the same
JSON schema as the local backends (``benchmarks/schema.json``, backend ``triton``).

Rows at client concurrency 1 come from ``m2det.benchmarks.timing.time_batches`` through a
``TritonRunner``, exactly as for a local runner (preprocess on the client, network = the round
trip, NMS on the client only for models with raw outputs). At concurrency C > 1 (perf_analyzer's
"concurrency" mode), C client threads, each with its own connection, send batches back to back
for ``iters`` calls each; latency percentiles are per call over all clients and ``fps`` is
images/s over the wall time of the whole run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from m2det.benchmarks.environment import environment
from m2det.benchmarks.harness import BenchSettings, accuracy, make_pool
from m2det.benchmarks.memory import peak_memory
from m2det.benchmarks.timing import STAGES, latency_stats, time_batches
from m2det.engines.base import Runner, now_ms
from m2det.errors import M2DetError
from m2det.preprocess import preprocess


def time_concurrent(url: str, model: str, nms: Any, pool: Sequence[np.ndarray], batch: int,
                    clients: int, iters: int, warmup: int) -> dict[str, Any]:
    """``clients`` threads, each with its own ``TritonRunner``, ``warmup`` + ``iters`` calls of
    ``batch`` images each; per-call latency stats over all clients, images/s over the run."""
    from m2det.engines.triton.runner import TritonRunner

    runners = [TritonRunner(url, nms, model=model) for _ in range(clients)]
    samples: list[list[tuple[float, float, float, float]]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    done = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        try:
            runner = runners[k]
            for i in range(warmup):
                _call(runner, _batch(pool, (k * 7919 + i) * batch, batch))
            start.wait()
            for i in range(iters):
                samples[k].append(_call(runner, _batch(pool, (k * 7919 + i) * batch,
                                                             batch)))  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)
            start.abort()
        finally:
            try:
                done.wait()
            except threading.BrokenBarrierError:
                pass

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = now_ms()
    try:
        done.wait()
    except threading.BrokenBarrierError:
        pass
    wall = now_ms() - t0
    for t in threads:
        t.join()
    for r in runners:
        r.__exit__(None, None, None)
    if errors:
        raise errors[0]
    flat = [s for per in samples for s in per]
    stats = {stage: latency_stats([s[i] for s in flat]) for i, stage in enumerate(STAGES)}
    return {"latency_ms": stats, "fps": round(1e3 * batch * len(flat) / wall, 3),
            "fps_network_nms": None, "iters": iters, "warmup": warmup,
            "concurrency": clients}  # fmt: skip


def _batch(pool: Sequence[np.ndarray], start: int, batch: int) -> list[np.ndarray]:
    return [pool[(start + k) % len(pool)] for k in range(batch)]


def _call(runner: Runner, images: list[np.ndarray]) -> tuple[float, float, float, float]:
    """(preprocess, network, nms, total) ms of one call, as ``timing.time_batches`` splits it."""
    t0 = now_ms()
    x = preprocess(images, runner.input_size)
    t1 = now_ms()
    runner(x)
    t2 = now_ms()
    return t1 - t0, runner.last_timing.network, runner.last_timing.nms, t2 - t0


def run_triton_benchmark(url: str, settings: BenchSettings, concurrency: Sequence[int],
                         command: Sequence[str], model: str | None = None,
                         log: Any = print) -> dict[str, Any]:
    """Measure the Triton model at ``url`` at every batch size and client concurrency; the
    results document (``benchmarks/schema.json``)."""
    from m2det.engines.triton.runner import DEFAULT_MODEL, TritonRunner

    settings.check()
    if settings.protocol != "standard":
        raise M2DetError("--triton measures the standard protocol only")
    if not concurrency or min(concurrency) < 1:
        raise M2DetError(f"--concurrency values must be >= 1, got {list(concurrency)}")
    model = model or DEFAULT_MODEL
    nms = settings.nms_params()
    pool, pool_desc = make_pool(settings)
    runner = TritonRunner(url, nms, model=model)
    log(f"[bench] triton {url} model {model} ({runner.config.name}, {runner.precision})")
    rows: list[dict[str, Any]] = []
    with peak_memory("cpu") as mem, runner:
        metrics = None
        if settings.ann is not None:
            assert settings.images is not None
            metrics = accuracy(runner, settings.ann, settings.images, settings.limit,
                               settings.progress)  # fmt: skip
        for batch in settings.batches:
            for clients in sorted(set(concurrency)):
                if clients == 1:
                    timing = {**time_batches(runner, pool, batch, settings.iters,
                                             settings.warmup, f"triton b{batch}",
                                             settings.progress), "concurrency": 1}
                else:
                    timing = time_concurrent(url, model, nms, pool, batch, clients,
                                             settings.iters, settings.warmup)
                log(f"[bench] batch {batch}, {clients} client(s): {timing['fps']:.1f} img/s, "
                    f"p50 {timing['latency_ms']['total']['p50']:.1f} ms")
                rows.append({"batch": batch, **timing})
    source = str(runner.parameters.get("source", {}).get("file", model))
    base = {"backend": "triton", "precision": runner.precision, "config": runner.config.name,
            "input_size": runner.input_size, "device": f"triton {url}", "weights": "given",
            "artifact": f"{url}/{model}", "source": source, "protocol": "standard",
            "accuracy": metrics, **mem.to_dict()}  # fmt: skip
    env = environment(command, "cpu", settings.threads)
    return {
        "schema": "m2det-bench/1", **env,
        "settings": {"protocol": settings.protocol, "batches": list(settings.batches),
                     "iters": settings.iters, "warmup": settings.warmup, "nms": settings.nms,
                     "nms_params": runner.nms.attributes(), "pool": len(pool),
                     "pool_images": pool_desc,
                     "ann": None if settings.ann is None else str(settings.ann),
                     "images": None if settings.images is None else str(settings.images),
                     "limit": settings.limit, "eval_set": settings.eval_label},
        "notes": [f"Triton model {model!r} at {url}: network = round trip; the server's "
                  "hardware is not this record's unless it runs on this machine"],
        "skipped": [], "rows": [{**base, **row} for row in rows],
    }  # fmt: skip
