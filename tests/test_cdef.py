"""The cffi declarations are generated from csrc/aiorcu.h, and none goes missing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import aiorcu._aiorcu_cffi as cffi_module

ROOT = Path(__file__).resolve().parent.parent


def _build_module() -> object:
    spec = importlib.util.spec_from_file_location("_build_cffi", ROOT / "csrc" / "build_cffi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_function_of_the_header_reaches_python_or_is_c_only() -> None:
    build = _build_module()
    header = (ROOT / "csrc" / "aiorcu.h").read_text()
    text = re.sub(r"/\*.*?\*/", " ", header, flags=re.DOTALL)
    declared = set(re.findall(r"\b(aiorcu_[a-z0-9_]+)\s*\(", text))
    declared -= {"aiorcu_stall_fn"}  # a typedef, also emitted
    in_cdef = set(re.findall(r"\b(aiorcu_[a-z0-9_]+)\s*\(", build.CDEF))  # type: ignore[attr-defined]
    c_only: frozenset[str] = build.C_ONLY  # type: ignore[attr-defined]
    assert declared - c_only <= in_cdef, sorted(declared - c_only - in_cdef)
    assert len(in_cdef) >= 30  # the generator found the prototypes at all
    for name in in_cdef - {"aiorcu_py_stall"}:
        assert hasattr(cffi_module.lib, name), name


def test_a_changed_prototype_changes_the_declarations() -> None:
    """The declarations follow the header: there is no second copy to forget."""
    build = _build_module()
    header = (ROOT / "csrc" / "aiorcu.h").read_text()
    changed = header.replace(
        "uint64_t aiorcu_snapshot(struct aiorcu_domain *d);",
        "uint64_t aiorcu_snapshot(struct aiorcu_domain *d, int extra);",
    )
    assert changed != header
    cdef = build.cdef_from_header(changed)  # type: ignore[attr-defined]
    assert "uint64_t aiorcu_snapshot(struct aiorcu_domain *d, int extra);" in cdef
