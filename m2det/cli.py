"""Plumbing shared by every console script (m2det-train/-shapes/-detect/-eval/-export/-build/
-bench): one-line user errors with exit 2, NMS options, JSON-safe settings."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from m2det.errors import M2DetError

NMS_CHOICES = ("official", "paper", "soft", "hard")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise M2DetError(f"{message} (see {self.prog} --help)")


def make_parser(
    prog: str,
    description: str,
    formatter_class: type[argparse.HelpFormatter] = argparse.ArgumentDefaultsHelpFormatter,
) -> argparse.ArgumentParser:
    """An ArgumentParser whose usage errors are M2DetErrors (one line under ``run_cli``)."""
    return _Parser(prog=prog, description=description, formatter_class=formatter_class)


def run_cli(
    prog: str, fn: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None
) -> int:
    """Run a CLI body: its return value is the exit code; an M2DetError prints one line
    ``<prog>: error: <message>`` to stderr and returns 2; Ctrl-C returns 130. Other exceptions are
    bugs and propagate with their traceback. A closed stdout pipe ends quietly with 141."""
    try:
        return fn(argv)
    except M2DetError as e:
        message = " ".join(str(e).split())  # one line, whatever the message contained
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse --help / --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def add_nms_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("post-processing")
    group.add_argument(
        "--nms",
        choices=NMS_CHOICES,
        default="official",
        help="NMS preset: official (released code: linear soft-NMS, Nt 0.3, score "
        ">0.1), paper (linear soft-NMS, score >0.05), soft (= official), hard",
    )
    group.add_argument("--score-threshold", type=float, default=None, metavar="F",
                       help="override the preset's score threshold")  # fmt: skip


def nms_from_args(args: argparse.Namespace) -> Any:
    """The ``NMSParams`` the ``--nms``/``--score-threshold`` options select."""
    from m2det.nms import get_nms_params

    overrides = {} if args.score_threshold is None else {"score_threshold": args.score_threshold}
    return get_nms_params(args.nms, **overrides)


def jsonable(obj: Any) -> Any:
    """Dataclasses/enums/paths -> plain JSON values (for settings recorded beside results)."""
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
    return obj
