"""The optimization profile's batch range of a TensorRT plan (``MIN:OPT:MAX``)."""

from __future__ import annotations

from dataclasses import dataclass

from m2det.errors import M2DetError


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile's batch range: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise M2DetError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                             f"{self.min}:{self.opt}:{self.max}")  # fmt: skip

    @classmethod
    def parse(cls, spec: BatchProfile | str | int | tuple[int, ...] | list[int]) -> BatchProfile:
        """``"1:8:32"``, ``"8"`` (fixed), ``8``, ``(1, 8, 32)`` or ``(1, 32)`` (opt = max)."""
        if isinstance(spec, BatchProfile):
            return spec
        if isinstance(spec, str):
            try:
                values = [int(v) for v in spec.split(":")]
            except ValueError:
                raise M2DetError(f"bad batch profile {spec!r}; use MIN:OPT:MAX, e.g. 1:8:32"
                                 ) from None
        elif isinstance(spec, int):
            values = [spec]
        else:
            values = [int(v) for v in spec]
        if len(values) == 1:
            values *= 3
        elif len(values) == 2:
            values = [values[0], values[1], values[1]]
        if len(values) != 3:
            raise M2DetError(f"bad batch profile {spec!r}; use MIN:OPT:MAX, e.g. 1:8:32")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"
