"""Serving throughput, side by side on one machine: the Triton server bundled in nvidia-pytriton
(``m2det-triton serve``) against the same ONNX file run in process by ``OnnxRunner``.

``python -m m2det.benchmarks.triton_serving [--onnx F] [--json OUT]`` writes a repository for the
file (default: the bundled checkpoint, exported), starts the bundled server on free ports and
measures, for ``--duration`` seconds each, in ``--rounds`` alternating rounds:

* ``in-process b1`` / ``b8``: decode the JPEGs, ``m2det.preprocess``, ``OnnxRunner`` at batch 1 /
  8, boxes scaled to the image: what a service embedding the runner does, one thread;
* ``server <proto> c<C>``: C client threads sending the JPEG bytes to the ``m2det`` model (decode,
  resize, network, NMS on the server; dynamic batching) over HTTP or gRPC;
* ``server net c<C>``: C ``TritonRunner`` clients sending preprocessed batch-1 tensors to
  ``m2det_net`` over gRPC (preprocessing on the client, like ``m2det-bench --triton``).

Images/s is the median over rounds; latency percentiles are per request (per call in process)
over all rounds; "server batch" is the mean batch ``m2det_net`` executed (statistics extension).
Client and server share the machine's cores, as they would on one host.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2det.benchmarks.environment import environment
from m2det.benchmarks.image_pool import synthetic_pool
from m2det.benchmarks.timing import latency_stats
from m2det.cli import Console, make_parser, run_cli
from m2det.errors import M2DetError

PROG = "triton_serving"


def _jpegs(count: int, seed: int) -> list[bytes]:
    return [cv2.imencode(".jpg", img)[1].tobytes() for img in synthetic_pool(count, seed)]


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None  # our own JPEGs
    return image


def _run_for(duration: float, clients: int, call: Callable[[int, int], int],
             finish: Callable[[int], None]) -> dict[str, Any]:
    """``clients`` threads calling ``call(client, i)`` (returns images done) until ``duration``
    seconds have passed, then ``finish(client)`` in the same thread; images/s and per-call
    latencies (ms)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    done = [0] * clients
    errors: list[BaseException] = []
    stop = time.perf_counter() + duration

    def worker(k: int) -> None:
        i = 0
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                done[k] += call(k, i)
                latencies[k].append((time.perf_counter() - t0) * 1e3)
                i += 1
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            errors.append(e)
        finally:
            finish(k)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"images_per_s": sum(done) / wall, "latencies": [x for per in latencies for x in per]}


class _Setups:
    """The measured set-ups, each a (clients, call) pair built on first use."""

    def __init__(self, onnx: Path, server: Any, jpegs: list[bytes], concurrency: Sequence[int],
                 threads: int | None) -> None:
        from m2det.engines.onnx_runner import OnnxRunner
        from m2det.nms import get_nms_params

        self.server, self.jpegs = server, jpegs
        self.local = OnnxRunner(onnx, get_nms_params("official"), threads=threads).__enter__()
        self.size = self.local.input_size
        self.names: list[str] = ["in-process b1", "in-process b8"]
        for proto in ("grpc", "http"):
            self.names += [f"server {proto} c{c}" for c in concurrency]
        self.names += [f"server net c{c}" for c in concurrency]
        self.concurrency = concurrency

    def setup(self, name: str) -> tuple[int, Callable[[int, int], int], Callable[[int], None]]:
        """(clients, call, finish) of set-up ``name``: connections are made and closed in the
        client's thread (tritonclient's HTTP client only works in the thread that made it)."""
        from m2det.preprocess import preprocess

        n = len(self.jpegs)
        if name.startswith("in-process"):
            batch = int(name.rsplit("b", 1)[1])

            def local(k: int, i: int) -> int:
                data = [self.jpegs[(i * batch + j) % n] for j in range(batch)]
                images = [_decode(d) for d in data]
                self.local(preprocess(images, self.size)).scaled(
                    [(im.shape[1], im.shape[0]) for im in images])
                return batch

            return 1, local, lambda k: None
        clients = int(name.rsplit("c", 1)[1])
        if name.startswith("server net"):
            from m2det.engines.triton.runner import TritonRunner

            runners: list[Any] = [None] * clients
            tensors = [preprocess(_decode(d), self.size) for d in self.jpegs]

            def net(k: int, i: int) -> int:
                if runners[k] is None:
                    runners[k] = TritonRunner("grpc://" + self.server.grpc_url)
                runners[k](tensors[(k * 7 + i) % n])
                return 1

            def close_runner(k: int) -> None:
                if runners[k] is not None:
                    runners[k].__exit__(None, None, None)
                    runners[k] = None

            return clients, net, close_runner
        proto = name.split()[1]
        if proto == "grpc":
            import tritonclient.grpc as module
            url = self.server.grpc_url
        else:
            import tritonclient.http as module  # type: ignore[no-redef]
            url = self.server.http_url
        conns: list[Any] = [None] * clients
        arrays = [np.frombuffer(d, np.uint8)[None] for d in self.jpegs]

        def remote(k: int, i: int) -> int:
            if conns[k] is None:
                conns[k] = module.InferenceServerClient(url)
            arr = arrays[(k * 7 + i) % n]
            inp = module.InferInput("image", list(arr.shape), "UINT8")
            inp.set_data_from_numpy(arr)
            conns[k].infer("m2det", [inp]).as_numpy("detection_boxes")
            return 1

        def close_connection(k: int) -> None:
            if conns[k] is not None:
                conns[k].close()
                conns[k] = None

        return clients, remote, close_connection


def _net_stats(server: Any) -> tuple[int, int]:
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    s = client.get_inference_statistics("m2det_net")["model_stats"][0]
    client.close()
    return int(s["inference_count"]), int(s["execution_count"])


def measure(onnx: Path, repo: Path, concurrency: Sequence[int], duration: float, rounds: int,
            threads: int | None, model_env: Path | None, log: Callable[[str], None] = print,
            ) -> dict[str, Any]:
    """Run every set-up ``rounds`` times (order reversed every other round); the rows."""
    from m2det.engines.triton.server import BundledServer

    jpegs = _jpegs(32, seed=3)
    per: dict[str, list[dict[str, Any]]] = {}
    with BundledServer(repo, ["m2det", "m2det_net"], http_port=0, grpc_port=0, host="127.0.0.1",
                       model_env=model_env) as server:  # fmt: skip
        log(f"[serving] bundled server ready in {server.ready_seconds:.1f} s")
        setups = _Setups(onnx, server, jpegs, concurrency, threads)
        for r in range(rounds):
            order = setups.names if r % 2 == 0 else setups.names[::-1]
            for name in order:
                clients, call, finish = setups.setup(name)
                _run_for(0.3, clients, call, finish)  # warm up sessions and the batcher
                before = _net_stats(server)
                result = _run_for(duration, clients, call, finish)
                after = _net_stats(server)
                executions = after[1] - before[1]
                result["server_batch"] = (after[0] - before[0]) / executions if executions and \
                    not name.startswith("in-process") else None
                per.setdefault(name, []).append(result)
                log(f"[serving] round {r + 1} {name}: {result['images_per_s']:.1f} img/s")
    rows = []
    for name in setups.names:
        runs = per[name]
        batch = [r["server_batch"] for r in runs if r["server_batch"] is not None]
        rows.append({"setup": name, "clients": 1 if name.startswith("in-process")
                     else int(name.rsplit("c", 1)[1]),
                     "images_per_s": round(float(np.median([r["images_per_s"] for r in runs])), 2),
                     "images_per_s_rounds": [round(r["images_per_s"], 2) for r in runs],
                     "latency_ms": latency_stats([x for r in runs for x in r["latencies"]]),
                     "server_batch": round(float(np.mean(batch)), 2) if batch else None})
    return {"rows": rows}


def _table(rows: list[dict[str, Any]], base: float) -> str:
    lines = ["| set-up | clients | images/s | vs in-process b1 | p50 ms | p99 ms | server batch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        lines.append(f"| {r['setup']} | {r['clients']} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s'] / base:.2f}x | {lat['p50']:.1f} | {lat['p99']:.1f} | "
                     f"{'-' if r['server_batch'] is None else r['server_batch']} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = make_parser(f"python -m m2det.benchmarks.{PROG}", __doc__.split("\n\n")[0])
    p.add_argument("--onnx", type=Path,
                   help="ONNX file (default: the bundled checkpoint, exported)")
    p.add_argument("--concurrency", default="1,4,8", help="client threads of the server set-ups")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads, in process and in the server (default: ORT's)")
    p.add_argument("--model-env", type=Path, help="the models' Python environment (see "
                   "m2det-triton serve --model-env)")
    return p


def _main(argv: Sequence[str] | None) -> int:
    from m2det.engines.triton.repository import RepositoryOptions, write_repository

    args = _parser().parse_args(argv)
    console = Console.from_args(PROG, args)
    try:
        concurrency = tuple(sorted({int(c) for c in args.concurrency.split(",") if c.strip()}))
    except ValueError:
        raise M2DetError(f"--concurrency: expected integers a,b,c; got {args.concurrency!r}") \
            from None
    if not concurrency or min(concurrency) < 1 or args.duration <= 0 or args.rounds < 1:
        raise M2DetError("need --concurrency values >= 1, --duration > 0 and --rounds >= 1")
    if args.onnx is not None and not args.onnx.is_file():
        raise M2DetError(f"ONNX file not found: {args.onnx}")
    command = [f"python -m m2det.benchmarks.{PROG}", *(sys.argv[1:] if argv is None else argv)]
    with tempfile.TemporaryDirectory(prefix="m2det-serving-") as tmp:
        onnx = args.onnx or _export(Path(tmp))
        repo = Path(tmp) / "repo"
        write_repository(onnx, repo, RepositoryOptions(threads=args.threads))
        result = measure(onnx, repo, concurrency, args.duration, args.rounds, args.threads,
                         args.model_env)  # fmt: skip
    base = result["rows"][0]["images_per_s"]
    doc = {"schema": "m2det-triton-serving/1", **environment(command, "cpu", args.threads),
           "settings": {"onnx": str(args.onnx or "bundled checkpoint, exported FP32"),
                        "concurrency": list(concurrency), "duration_s": args.duration,
                        "rounds": args.rounds, "images": "32 synthetic shapes JPEGs",
                        "threads": args.threads},
           "rows": result["rows"],
           "notes": ["images/s: median over rounds; server and clients share this machine"]}
    console.result(_table(result["rows"], base))
    console.write_json(doc)
    return 0


def _export(folder: Path) -> Path:
    from m2det.engines.registry import default_checkpoint
    from m2det.export.pipeline import ExportOptions, export_model

    result = export_model(ExportOptions(checkpoint=default_checkpoint(), out=folder, quiet=True),
                          log=None)  # fmt: skip
    return result.path("fp32")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
