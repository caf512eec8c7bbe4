"""The Triton server bundled in the ``nvidia-pytriton`` wheel (``tritonserver`` 2.51 with the
Python backend), run directly on a model repository, with what it needs to be reliable:

* **the stub**: the Python backend starts one ``triton_python_backend_stub`` per model instance;
  the wheel has one per Python version and finds its libraries through its rpath
  (``$ORIGIN/../..``), so the backend folder given to the server *links* to it (a copy cannot
  start, and the server then waits for it);
* **the models' Python**: the stub embeds the ``libpython`` it finds on ``LD_LIBRARY_PATH``
  (another ``libpython3.X`` of the system would otherwise be picked up) and runs it isolated
  (``PYTHON*`` variables ignored), taking its packages from the environment of the first
  ``python3`` on ``PATH``. Both are set to the models' environment: this interpreter's, or
  ``model_env`` (a venv). Its numpy must be < 2: Triton's Python backend before 24.11 returns empty
  or wrong tensors with numpy 2, without an error. The environment is probed (isolated, as the
  stub runs it) before the server starts;
* **readiness**: a deadline on ``/v2/health/ready`` (a model that never comes up keeps the server
  waiting), ``--exit-on-error`` for models that fail to load, the server log's errors in the
  exception;
* **no leftovers**: the Python backend's shared-memory regions get a unique prefix and are removed
  after the server exits (it leaves them when stopped by a signal or a timeout), as are the empty
  ``/tmp/python_env_*`` folders it leaves when not stopped cleanly and the ``__pycache__`` folders
  its stubs write into the repository; the backend folder and log live in a temporary folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from m2det.errors import M2DetError

SERVE_EXTRA = "pip install 'm2det-deploy[serve]'"
#: Environment variable naming the default ``model_env``.
MODEL_ENV_VARIABLE = "M2DET_TRITON_MODEL_ENV"
#: Seconds Triton waits for in-flight requests and open connections when stopped.
EXIT_TIMEOUT_S = 5
SHM_DIR = Path("/dev/shm")
#: The Python backend's ``mkdtemp("/tmp/python_env_XXXXXX")`` (TMPDIR is not consulted).
PYTHON_ENV_DIRS = (Path("/tmp"), "python_env_*")


# ----------------------------------------------------------------------------- the bundle
@dataclass(frozen=True)
class Bundle:
    """The server files of the installed ``nvidia-pytriton`` wheel."""

    root: Path
    version: str

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def stub(self, python_version: str) -> Path:
        """The Python-backend stub built for ``python_version`` ("3.11")."""
        stubs = self.root / "python_backend_stubs"
        stub = stubs / python_version / "triton_python_backend_stub"
        if not stub.is_file():
            have = ", ".join(sorted(p.name for p in stubs.iterdir())) if stubs.is_dir() else "none"
            raise M2DetError(f"nvidia-pytriton {self.version} has no Python-backend stub for "
                             f"Python {python_version} (has {have})")  # fmt: skip
        return stub


def find_bundle() -> Bundle:
    """The bundled server; M2DetError (with the fix) when nvidia-pytriton is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise M2DetError(f"the bundled Triton server needs nvidia-pytriton: {SERVE_EXTRA}")
    try:
        bundle = Bundle(Path(next(iter(spec.submodule_search_locations))) / "tritonserver",
                        version("nvidia-pytriton"))
    except PackageNotFoundError:
        raise M2DetError(f"pytriton is importable but nvidia-pytriton is not installed: "
                         f"{SERVE_EXTRA}") from None
    if not bundle.binary.is_file():
        raise M2DetError(f"nvidia-pytriton {bundle.version} has no tritonserver at "
                         f"{bundle.binary}")
    return bundle


# ----------------------------------------------------------------------------- the models' Python
@dataclass(frozen=True)
class ModelEnvironment:
    """The Python the stub embeds: ``bin`` (holding ``python3``), its version, the folder of its
    ``libpython`` and its numpy version."""

    bin: Path
    version: str
    libdir: Path
    numpy: str


_PROBE = """
import json, sys, sysconfig
info = {{"version": "%d.%d" % sys.version_info[:2], "prefix": sys.prefix,
         "libdir": sysconfig.get_config_var("LIBDIR"),
         "soname": sysconfig.get_config_var("INSTSONAME")}}
try:
    import numpy
    info["numpy"] = numpy.__version__
    import cv2, m2det.nms, m2det.preprocess, m2det.detections
    if {onnxruntime}:
        import onnxruntime
except Exception as e:
    info["error"] = "%s: %s" % (type(e).__name__, (str(e).splitlines() or [""])[0])
print(json.dumps(info))
"""


def probe_environment(env_dir: str | Path | None = None,
                      needs_onnxruntime: bool = True) -> ModelEnvironment:
    """Inspect the models' Python: ``env_dir`` (a venv or prefix with ``bin/python3``) or, by
    default, this interpreter's environment, run isolated (``-I``) as the stub runs it.
    M2DetError for a missing interpreter, shared libpython or package, or numpy >= 2."""
    bin_dir = Path(env_dir).absolute() / "bin" if env_dir else Path(sys.executable).parent
    python = bin_dir / "python3"
    where = f"the models' Python environment ({bin_dir.parent})"
    if not python.exists():
        raise M2DetError(f"{where} has no bin/python3: the Python backend stub takes its "
                         "packages from the python3 on PATH")  # fmt: skip
    code = _PROBE.format(onnxruntime=needs_onnxruntime)
    try:
        run = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True,
                             timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        info = json.loads(run.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        raise M2DetError(f"{where}: {python} does not run") from None
    numpy = info.get("numpy")
    if numpy is not None and int(numpy.split(".")[0]) >= 2:
        raise M2DetError(
            f"numpy {numpy} in {where}: the bundled Triton 2.51 Python backend returns empty "
            "tensors with numpy >= 2. Install numpy<2 there (the serve extra pins it), or keep "
            "numpy 2 here and pass --model-env ENV, a venv made with `python -m venv "
            "--system-site-packages ENV && ENV/bin/pip install 'numpy<2'`")  # fmt: skip
    if "error" in info:
        raise M2DetError(f"{where} cannot run the models: {info['error']}")
    libdir, soname = info.get("libdir"), info.get("soname")
    if not libdir or not soname or not (Path(libdir) / soname).is_file():
        raise M2DetError(f"{where}: Python {info['version']} has no shared libpython ({soname} "
                         f"in {libdir}); the Python backend stub needs one (a Python built with "
                         "--enable-shared, as distributions, pyenv and conda provide)")  # fmt: skip
    return ModelEnvironment(bin_dir, info["version"], Path(libdir), numpy)


# ----------------------------------------------------------------------------- ports
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port(port: int, what: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            raise M2DetError(f"{what} port {port} is in use: choose another (--{what}-port; "
                             "0 picks a free one)") from None


# ----------------------------------------------------------------------------- the server
@dataclass(frozen=True)
class StopReport:
    """How the server ended: its exit code, whether it had to be killed, what was cleaned up."""

    returncode: int | None
    killed: bool
    removed: tuple[str, ...]


class BundledServer:
    """Run the bundled ``tritonserver`` on the Python-backend ``models`` of ``repo`` (a context
    manager: ``with BundledServer(...) as server:`` starts it and stops it).

    Ports 0 pick free ones; ``metrics_port`` None turns metrics off; ``host``: the address it
    listens on; ``model_env``: the models' Python environment (default ``$M2DET_TRITON_MODEL_ENV``,
    else this interpreter's); ``ready_timeout``: seconds to wait for every model; ``log``: a file
    for the server's log (default: a temporary one whose errors end up in the exception).
    ``needs_onnxruntime``: whether a model runs ONNX Runtime (checked before starting).
    """

    def __init__(self, repo: str | Path, models: list[str], *, http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int | None = None, host: str = "0.0.0.0",
                 model_env: str | Path | None = None, ready_timeout: float = 120.0,
                 log: str | Path | None = None, needs_onnxruntime: bool = True) -> None:
        self.repo = Path(repo).resolve()
        if not models:
            raise M2DetError("no model to load")
        self.models = list(models)
        self.bundle = find_bundle()
        self.host = host
        self.ports: dict[str, int | None] = {"http": http_port, "grpc": grpc_port,
                                             "metrics": metrics_port}
        self.model_env = model_env or os.environ.get(MODEL_ENV_VARIABLE) or None
        self.ready_timeout = ready_timeout
        self.log_path = Path(log) if log else None
        self.needs_onnxruntime = needs_onnxruntime
        self.prefix = f"m2det_{uuid.uuid4().hex[:12]}_"
        self.ready_seconds: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._work: Path | None = None
        self._log: Path | None = None
        self._started = 0.0
        self._before: set[Path] = set()

    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self.client_host}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.client_host}:{self.ports['grpc']}"

    def _environment(self, py: ModelEnvironment) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(py.libdir), str(self.bundle.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        env["PATH"] = os.pathsep.join([str(py.bin), env.get("PATH", "")])
        return env

    def _command(self, backends: Path) -> list[str]:
        cmd = [str(self.bundle.binary), f"--model-repository={self.repo}",
               f"--backend-directory={backends}", f"--http-address={self.host}",
               f"--http-port={self.ports['http']}", f"--grpc-address={self.host}",
               f"--grpc-port={self.ports['grpc']}", "--exit-on-error=true",
               "--strict-readiness=true", "--disable-auto-complete-config",
               f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--model-control-mode=explicit",
               f"--backend-config=python,shm-region-prefix-name={self.prefix}",
               "--log-verbose=0", *(f"--load-model={m}" for m in self.models)]  # fmt: skip
        if self.ports["metrics"] is None:
            return [*cmd, "--allow-metrics=false"]
        return [*cmd, f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}"]

    def start(self) -> BundledServer:
        """Start and wait until every model is ready; M2DetError (with the server's errors) when
        it exits or misses the deadline, after stopping it and cleaning up."""
        for what, port in list(self.ports.items()):
            if port == 0:
                self.ports[what] = free_port()
            elif port is not None:
                _check_port(port, what)
        py = probe_environment(self.model_env, self.needs_onnxruntime)
        stub = self.bundle.stub(py.version)
        self._work = Path(tempfile.mkdtemp(prefix="m2det-triton-"))
        backend = self._work / "backends" / "python"
        backend.mkdir(parents=True)
        for src in (self.bundle.python_backend / "libtriton_python.so",
                    self.bundle.python_backend / "triton_python_backend_utils.py", stub):
            (backend / src.name).symlink_to(src)
        self._log = self.log_path or self._work / "server.log"
        self._before = _leftover_candidates(self.repo)
        self._started = time.time()
        t0 = time.perf_counter()
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(self._command(self._work / "backends"), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self._environment(py), cwd=self._work,
                                         start_new_session=True)  # fmt: skip
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        assert self.proc is not None
        url = f"http://{self.http_url}/v2/health/ready"
        while time.perf_counter() - t0 < self.ready_timeout:
            if self.proc.poll() is not None:
                raise M2DetError(f"tritonserver exited with code {self.proc.returncode} before "
                                 f"it was ready: {self.errors()}")  # fmt: skip
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise M2DetError(f"tritonserver was not ready within {self.ready_timeout:g} s "
                         f"(models {', '.join(self.models)}): {self.errors()}")  # fmt: skip

    def errors(self, lines: int = 6) -> str:
        """The last error lines of the server log: Triton's ``E...`` lines and exceptions."""
        try:
            text = self._log.read_text(errors="replace").splitlines() if self._log else []
        except OSError:
            text = []
        keep = [t.strip() for t in text
                if t[:1] == "E" and t[1:2].isdigit() or t.startswith("error:")
                or (":" in t and t.split(":")[0].endswith(("Error", "Exception")))]  # fmt: skip
        return " | ".join(keep[-lines:]) or "(no error in the server log)"

    def wait(self) -> int:
        """Block until the server exits on its own; returns its exit code."""
        assert self.proc is not None
        return self.proc.wait()

    def stop(self) -> StopReport:
        """SIGTERM (then SIGKILL after the exit timeout) to the server and its stubs; remove what
        it leaves behind (see the module doc)."""
        killed = False
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(EXIT_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                killed = True
        if self.proc is not None:  # stubs of a server that did not stop cleanly
            _signal_group(self.proc.pid, signal.SIGKILL)
        removed = [str(p) for p in SHM_DIR.glob(f"{self.prefix}*")]
        for name in removed:
            Path(name).unlink(missing_ok=True)
        clean = self.proc is not None and self.proc.returncode == 0 and not killed
        if self._started:
            for path in sorted(_leftover_candidates(self.repo) - self._before):
                if path.name == "__pycache__" or not clean and not any(path.iterdir()):
                    shutil.rmtree(path, ignore_errors=True)  # python_env_*: only empty ones
                    removed.append(str(path))
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
        self._started = 0.0
        code = None if self.proc is None else self.proc.returncode
        return StopReport(code, killed, tuple(removed))

    def __enter__(self) -> BundledServer:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _leftover_candidates(repo: Path) -> set[Path]:
    """Folders a server may leave: the Python backend's ``/tmp/python_env_*`` and the
    ``__pycache__`` its stubs write into the repository's model versions."""
    folder, pattern = PYTHON_ENV_DIRS
    return {p for p in folder.glob(pattern) if p.is_dir()} | set(repo.glob("*/*/__pycache__"))
