"""One convention for the eight console scripts (m2det-train, -shapes, -detect, -eval, -export,
-build, -bench, -demo).

- Options every script has (:func:`make_parser` adds them): ``--version``; ``--quiet`` (no
  progress bars or status lines; results, warnings and errors still print); ``--debug`` (the
  traceback of any error); ``--json FILE`` (the result as JSON, ``-`` for stdout).
- Output: results on stdout; warnings (``prog: warning: ...``), notes (``prog: note: ...``)
  and errors (``prog: error: ...``, one line) on stderr. Progress bars and status lines
  (``[prog] step ... done (1.2 s)``) go to stderr only when it is a terminal: a refused run
  in a pipe or a log prints its one error line and nothing else.
- Exit codes (:func:`run_cli`): :data:`EXIT_OK` 0, :data:`EXIT_PARTIAL` 1 (the run finished but
  skipped some inputs, each named on stderr and in the JSON), :data:`EXIT_USAGE` 2 (bad
  arguments or input: nothing was done or left behind), :data:`EXIT_INTERNAL` 3 (a bug),
  :data:`EXIT_INTERRUPTED` 130 (Ctrl-C).
- Arguments are validated before any work; a failed run leaves nothing that looks like a result
  (:func:`remove_on_failure`, atomic writes in :mod:`m2det.io`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from m2det.errors import M2DetError

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130

NMS_CHOICES = ("official", "paper", "soft", "hard")


class _HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped; every option's default shown once, after its help sentence
    (unless the sentence already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (text is argparse.SUPPRESS or not action.option_strings or action.nargs == 0
                or default is None or default is argparse.SUPPRESS or default is False
                or "default" in text.lower()):
            return text
        if isinstance(default, (tuple, list)):
            default = ",".join(str(v) for v in default)
        return f"{text} Default: {str(default).replace('%', '%%')}."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise M2DetError(f"{message} (see {self.prog} --help)")

    def format_help(self) -> str:
        """The common options (:func:`make_parser`) listed last, after the script's own."""
        common = [g for g in self._action_groups if g.title == _COMMON]
        self._action_groups = [g for g in self._action_groups if g.title != _COMMON] + common
        return super().format_help()


_COMMON = "common options"


def make_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser for console script ``prog``: usage errors are one-line M2DetErrors, and
    ``--version``, ``--quiet``, ``--debug`` and ``--json FILE`` are already there."""
    from m2det import __version__

    p = _Parser(prog=prog, description=description, epilog=epilog,
                formatter_class=_HelpFormatter)  # fmt: skip
    g = p.add_argument_group(_COMMON)
    g.add_argument("--json", type=Path, metavar="FILE",
                   help="Also write the result as JSON to FILE ('-': to stdout, instead of the "
                        "text summary).")  # fmt: skip
    g.add_argument("--quiet", action="store_true",
                   help="No progress bars or status lines; results, warnings and errors still "
                        "print.")  # fmt: skip
    g.add_argument("--no-progress", dest="quiet", action="store_true",
                   help=argparse.SUPPRESS)  # the older spelling of --quiet
    g.add_argument("--debug", action="store_true",
                   help="Show the full traceback of an error.")
    g.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                   help="Print the version and exit.")
    return p


def run_cli(prog: str, fn: Callable[[Sequence[str] | None], int],
            argv: Sequence[str] | None) -> int:
    """Run a console script's body ``fn(argv) -> exit code`` under the convention: an
    :class:`M2DetError` prints one line ``<prog>: error: <message>`` and returns 2; Ctrl-C
    returns 130 (``<prog>: interrupted`` plus what the body said); any other exception is a bug:
    one line and 3. ``--debug`` anywhere in ``argv`` adds the traceback. A closed stdout pipe
    ends quietly with 141."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        return fn(argv)
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except M2DetError as e:
        _fail(prog, f"error: {one_line(str(e))}", debug)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        said = one_line(str(e))
        _fail(prog, "interrupted" + (f": {said}" if said else ""), debug)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - a bug: one line unless --debug
        _fail(prog, f"internal error: {type(e).__name__}: {one_line(str(e))} (run with --debug "
              "for the traceback)", debug)  # fmt: skip
        return EXIT_INTERNAL


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def _fail(prog: str, line: str, debug: bool) -> None:
    sys.stdout.flush()
    if debug:
        traceback.print_exc()
    print(f"{prog}: {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Output


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True,
                 **kwargs: Any) -> Any:
    """A tqdm bar on stderr, shown only when ``enabled`` and stderr is a terminal (never in
    logs or pipes)."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, disable=not enabled or not stderr_is_terminal(),
                dynamic_ncols=True, **kwargs)  # fmt: skip


class Console:
    """What a console script prints, by the convention: :meth:`status` lines and bars on
    stderr (silent with ``--quiet``), :meth:`warn` always, :meth:`result` text on stdout (not
    with ``--json -``), :meth:`write_json` the machine-readable result."""

    def __init__(self, prog: str, quiet: bool = False, json_path: Path | None = None) -> None:
        self.prog, self.quiet, self.json_path = prog, quiet, json_path
        self.tag = "[" + prog.removeprefix("m2det-") + "]"

    @classmethod
    def from_args(cls, prog: str, args: argparse.Namespace) -> Console:
        return cls(prog, bool(getattr(args, "quiet", False)), getattr(args, "json", None))

    @property
    def json_to_stdout(self) -> bool:
        return self.json_path is not None and str(self.json_path) == "-"

    @property
    def shows_status(self) -> bool:
        return not self.quiet and stderr_is_terminal()

    def info(self, text: str) -> None:
        """A status line ``[prog] text`` on stderr (a terminal only, not with --quiet)."""
        self.line(f"{self.tag} {text}")

    def line(self, text: str) -> None:
        """A status line as given (a terminal only, not with --quiet)."""
        if self.shows_status:
            print(text, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """Something the user should know that is not a problem: ``prog: note: text`` on stderr
        (not with --quiet)."""
        if not self.quiet:
            print(f"{self.prog}: note: {one_line(text)}", file=sys.stderr, flush=True)

    def warn(self, text: str) -> None:
        print(f"{self.prog}: warning: {one_line(text)}", file=sys.stderr, flush=True)

    def result(self, text: str) -> None:
        """Result text on stdout (suppressed when the JSON goes to stdout)."""
        if not self.json_to_stdout:
            print(text, flush=True)

    def write_json(self, data: Any) -> None:
        """The result as JSON to ``--json FILE`` (atomically) or stdout; nothing without it."""
        if self.json_path is None:
            return
        if self.json_to_stdout:
            print(json.dumps(jsonable(data), indent=2), flush=True)
            return
        from m2det.io import atomic_write_json

        atomic_write_json(self.json_path, jsonable(data))

    def progress(self, iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
        return progress_bar(iterable, enabled=not self.quiet, **kwargs)

    @contextlib.contextmanager
    def status(self, what: str) -> Iterator[None]:
        """``[prog] what ... done (1.2 s)`` around a slow step (a terminal only); the line is
        always finished (`` failed``) before an error is printed."""
        if not self.shows_status:
            yield
            return
        print(f"{self.tag} {what} ...", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            print(" failed", file=sys.stderr, flush=True)
            raise
        print(f" done ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Validation and cleanup


def parse_device(text: str) -> Any:
    """``--device`` -> ``torch.device``, checked before any work: ``cpu``, ``cuda`` or
    ``cuda:N`` where such a GPU exists."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise M2DetError(f"unknown device {text!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise M2DetError(f"unsupported device {text!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU found"
            raise M2DetError(f"--device {text}: {why}; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise M2DetError(f"--device {text}: there are {count} GPU(s) (cuda:0..{count - 1})")
    return device


def positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    """M2DetError unless ``value`` (when given) is > 0 (>= 0 with ``allow_zero``)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise M2DetError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@contextlib.contextmanager
def remove_on_failure(*paths: str | os.PathLike[str]) -> Iterator[None]:
    """Of ``paths``, those that do not exist yet are removed (file or whole folder) if the block
    raises (an error, Ctrl-C): a failed run leaves nothing behind that looks like a result."""
    new = [Path(p) for p in paths if not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        for p in reversed(new):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------
# Shared options


def add_nms_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("post-processing")
    group.add_argument(
        "--nms",
        choices=NMS_CHOICES,
        default="official",
        help="NMS preset: official (what the released code runs: linear soft-NMS, Nt 0.3, "
        "score > 0.1), paper (linear soft-NMS, score > 0.05), soft (the same as official) or "
        "hard.",
    )
    group.add_argument("--score-threshold", type=float, default=None, metavar="F",
                       help="Override the preset's score threshold.")  # fmt: skip


def nms_from_args(args: argparse.Namespace) -> Any:
    """The ``NMSParams`` the ``--nms``/``--score-threshold`` options select."""
    from m2det.nms import get_nms_params

    overrides = {} if args.score_threshold is None else {"score_threshold": args.score_threshold}
    return get_nms_params(args.nms, **overrides)


def jsonable(obj: Any) -> Any:
    """Dataclasses/enums/paths/numpy scalars -> plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.name.lower()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()
    return obj
