"""m2det/contract.py (the source of truth) and its C/C++ mirror plugins/include/m2det/contract.h
say the same: every contract constant has its macro with the same value, the header defines
nothing else, the C parameter struct and the ctypes struct follow the attribute order, and no
C/C++ source re-spells a contract string or limit instead of using the header's macro.

Naming rule: a scalar constant ``NAME`` is ``M2DET_NAME`` (``INPUT`` is ``M2DET_INPUT_NAME``),
an attribute ``a`` is ``M2DET_ATTR_A`` and its default ``M2DET_DEFAULT_A``; tuples of tensor
names, graph kinds and precisions list their macros below. Pure text parsing: no compiler needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m2det import contract
from m2det.nms import Method

REPO = Path(__file__).resolve().parents[1]
HEADER = REPO / "plugins/include/m2det/contract.h"
PARAMS_HEADER = REPO / "plugins/soft_nms/softNmsParams.h"
#: C/C++ sources that must use the header's macros instead of spelling contract values.
CPP_SOURCES = ("plugins/soft_nms", "plugins/tests", "engines/cpp/src", "engines/cpp/include",
               "engines/cpp/examples", "engines/cpp/tests")  # fmt: skip
CPP_SUFFIXES = {".h", ".hpp", ".c", ".cpp", ".cu", ".cuh"}

#: Constants whose macro name does not follow the M2DET_<NAME> rule, and the tuples / dicts.
EXPLICIT: dict[str, Any] = {
    "INPUT": "M2DET_INPUT_NAME",
    "RAW_OUTPUTS": ("M2DET_RAW_OUTPUT_BOXES", "M2DET_RAW_OUTPUT_SCORES"),
    "NMS_OUTPUTS": ("M2DET_NMS_OUTPUT_NUM", "M2DET_NMS_OUTPUT_BOXES", "M2DET_NMS_OUTPUT_SCORES",
                    "M2DET_NMS_OUTPUT_CLASSES"),
    "GRAPH_KINDS": ("M2DET_GRAPH_RAW", "M2DET_GRAPH_NMS_PLUGIN", "M2DET_GRAPH_NMS_ONNX"),
    "PRECISIONS": ("M2DET_PRECISION_FP32", "M2DET_PRECISION_FP16", "M2DET_PRECISION_INT8"),
    "PLUGIN_FLOAT_ATTRIBUTES": tuple(f"M2DET_ATTR_{a.upper()}"
                                     for a in contract.PLUGIN_FLOAT_ATTRIBUTES),
    "PLUGIN_INT_ATTRIBUTES": tuple(f"M2DET_ATTR_{a.upper()}"
                                   for a in contract.PLUGIN_INT_ATTRIBUTES),
    "PLUGIN_DEFAULTS": {a: f"M2DET_DEFAULT_{a.upper()}" for a in contract.PLUGIN_DEFAULTS},
}  # fmt: skip
#: contract.py constants with no C/C++ counterpart, each with the reason.
PYTHON_ONLY: dict[str, str] = {
    "PLUGIN_DOMAIN": "ONNX node domain, written by the exporter; the C++ plugin never sees it",
    "PLUGIN_DOMAIN_VERSION": "ONNX opset_import version of PLUGIN_DOMAIN (exporter only)",
    "META_QDQ_PLACEMENT": "ONNX metadata key read by Python loaders only",
}
#: Header macros that mirror no contract.py constant, each with the reason.
HEADER_ONLY: dict[str, str] = {"M2DET_CONTRACT_H": "include guard"}

_DEFINE = re.compile(r"#define (M2DET_[A-Z0-9_]+)(?: (\S.*))?$")
_FUNCTION_LIKE = re.compile(r"#define M2DET_[A-Z0-9_]+\(")
_STRING = re.compile(r'"([^"\\]*)"')
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?F")
_MACRO = re.compile(r"M2DET_[A-Z0-9_]+")


def parse_header(text: str) -> dict[str, str | int | float | None]:
    """``#define M2DET_X value`` lines -> {name: value} (str, int, float32 as float, another
    macro resolved, None for an empty definition). Any other ``#define`` fails the test."""
    raw: dict[str, str | None] = {}
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped.startswith("#define") or _FUNCTION_LIKE.match(stripped):
            continue
        m = _DEFINE.fullmatch(stripped)
        assert m, f"contract.h:{n}: not '#define M2DET_<NAME> <value>': {line!r}"
        assert m.group(1) not in raw, f"contract.h:{n}: {m.group(1)} defined twice"
        raw[m.group(1)] = m.group(2)

    def value(name: str, seen: tuple[str, ...] = ()) -> str | int | float | None:
        text = raw[name]
        if text is None:
            return None
        if m := _STRING.fullmatch(text):
            return m.group(1)
        if _INT.fullmatch(text):
            return int(text)
        if _FLOAT.fullmatch(text):
            return float(np.float32(text[:-1]))
        if _MACRO.fullmatch(text) and text in raw and text not in seen:
            return value(text, (*seen, name))
        raise AssertionError(f"contract.h: {name} has an unparsable value {text!r}")

    return {name: value(name) for name in raw}


@pytest.fixture(scope="module")
def header() -> dict[str, str | int | float | None]:
    return parse_header(HEADER.read_text())


def contract_constants() -> dict[str, Any]:
    return {k: v for k, v in vars(contract).items() if k.isupper() and not k.startswith("_")}


def expected_macros(name: str, value: Any) -> Any:
    """The macro name(s) mirroring contract constant ``name`` (same shape as ``value``)."""
    if name in EXPLICIT:
        return EXPLICIT[name]
    assert isinstance(value, str | int | float), \
        f"contract.{name} is a {type(value).__name__}: list its macros in EXPLICIT"
    return f"M2DET_{name}"


def as_c(value: Any) -> Any:
    """A Python value as the header would hold it (floats rounded to float32)."""
    return float(np.float32(value)) if isinstance(value, float) else value


def test_every_contract_constant_has_its_macro_with_the_same_value(header: dict) -> None:
    checked = 0
    for name, value in contract_constants().items():
        if name in PYTHON_ONLY:
            continue
        macros = expected_macros(name, value)
        if isinstance(value, dict):
            assert set(macros) == set(value), f"contract.{name}: keys differ from EXPLICIT"
            pairs = [(macros[k], value[k]) for k in value]
        elif isinstance(value, tuple):
            assert len(macros) == len(value), f"contract.{name}: {len(value)} items"
            pairs = list(zip(macros, value, strict=True))
        else:
            pairs = [(macros, value)]
        for macro, v in pairs:
            assert macro in header, f"contract.{name} ({v!r}) has no {macro} in {HEADER.name}"
            assert header[macro] == as_c(v), \
                f"contract.{name}: {macro} is {header[macro]!r} in {HEADER.name}, {v!r} in Python"
            checked += 1
    assert checked >= 40  # the parse found the header's definitions


def test_header_defines_nothing_beyond_the_contract(header: dict) -> None:
    mirrored: set[str] = set()
    for name, value in contract_constants().items():
        if name in PYTHON_ONLY:
            continue
        macros = expected_macros(name, value)
        if isinstance(macros, dict):
            mirrored.update(macros.values())
        elif isinstance(macros, tuple):
            mirrored.update(macros)
        else:
            mirrored.add(macros)
    extra = set(header) - mirrored - set(HEADER_ONLY)
    assert not extra, f"{HEADER.name} defines {sorted(extra)}, which mirror no contract.py " \
                      "constant: add them to m2det/contract.py or to HEADER_ONLY with a reason"
    stale = set(PYTHON_ONLY) - set(contract_constants())
    assert not stale, f"PYTHON_ONLY names {sorted(stale)}, which contract.py no longer has"


def test_parser_rejects_irregular_definitions() -> None:
    assert parse_header('#define M2DET_A "x"\n#define M2DET_B M2DET_A\n#define M2DET_C 0.5F\n'
                        "#define M2DET_S(x) #x\n#define M2DET_G\n") == \
        {"M2DET_A": "x", "M2DET_B": "x", "M2DET_C": 0.5, "M2DET_G": None}  # fmt: skip
    for bad in ('#define M2DET_A "x" /* comment */', "#define M2DET_A 0.5",
                "#define  M2DET_A 1", "#define M2DET_A M2DET_UNDEFINED"):
        with pytest.raises(AssertionError):
            parse_header(bad)


def test_sigma_default_differs_from_the_official_preset_on_purpose() -> None:
    """The plugin's sigma default is the gaussian default (0.5), not the official preset's 0.45
    (the released code's IoU threshold passed into sigma; linear never reads it); both files say
    so next to the value."""
    from m2det.nms import NMS_PRESETS

    assert contract.PLUGIN_DEFAULTS["sigma"] == 0.5 != NMS_PRESETS["official"].sigma
    assert "0.45" in HEADER.read_text() and "Bodla" in HEADER.read_text()


def test_c_struct_and_method_codes_follow_the_contract() -> None:
    """M2DetSoftNmsParams lists the float attributes then the int ones, in contract order (the
    ctypes mirror is built from the contract); the method codes are m2det.nms.Method's."""
    from m2det.engines.soft_nms_kernel import SoftNmsParams

    text = PARAMS_HEADER.read_text()
    body = re.search(r"typedef struct M2DetSoftNmsParams\s*\{(.*?)\}", text, re.S)
    assert body, "M2DetSoftNmsParams not found"
    fields = re.findall(r"^\s*(float|int32_t) (\w+);", body.group(1), re.M)
    expected = [("float", a) for a in contract.PLUGIN_FLOAT_ATTRIBUTES] + \
               [("int32_t", a) for a in contract.PLUGIN_INT_ATTRIBUTES]  # fmt: skip
    assert fields == expected
    assert [f[0] for f in SoftNmsParams._fields_] == [a for _, a in expected]
    codes = dict(re.findall(r"M2DET_SOFT_NMS_(HARD|LINEAR|GAUSSIAN) = (\d+)", text))
    assert {k: int(v) for k, v in codes.items()} == {m.name: int(m) for m in Method}
    assert Method(int(contract.PLUGIN_DEFAULTS["method"])) is Method.LINEAR


def _code_without_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def test_cpp_sources_use_the_macros_not_the_values() -> None:
    """No C/C++ source spells a contract string as a literal or the candidate limit as a number;
    they use contract.h's macros."""
    strings = {v for v in contract_constants().values() if isinstance(v, str) and len(v) >= 3}
    strings |= {s for v in contract_constants().values() if isinstance(v, tuple) for s in v}
    strings |= {k for k in contract.PLUGIN_DEFAULTS}
    limit = re.compile(rf"\b{contract.MAX_CANDIDATES}\b")
    sources = [p for folder in CPP_SOURCES for p in sorted((REPO / folder).rglob("*"))
               if p.suffix in CPP_SUFFIXES]  # fmt: skip
    assert len(sources) >= 15, sources
    offenders = []
    for path in sources:
        code = _code_without_comments(path.read_text())
        for literal in _STRING.findall(code):
            if literal in strings:
                offenders.append(f'{path.relative_to(REPO)}: "{literal}"')
        if limit.search(code):
            offenders.append(f"{path.relative_to(REPO)}: {contract.MAX_CANDIDATES}")
    assert not offenders, f"use the macros of {HEADER.relative_to(REPO)}: {', '.join(offenders)}"
