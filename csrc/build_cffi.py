"""cffi (API mode) build of the aiorcu C core into ``aiorcu._aiorcu_cffi``."""

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = [
    "membarrier.c",
    "thread.c",
    "domain.c",
    "shared.c",
    "grace.c",
    "reader.c",
    "bitmap.c",
    "buffer.c",
]

# What Python reaches of the core.  The declarations themselves are read
# from aiorcu.h (see cdef_from_header), so the header is the one place they
# are written; this list only says which ones cffi exposes.
STRUCTS = ("aiorcu_stats", "aiorcu_bitmap_op", "aiorcu_buffer_view")
TYPEDEFS = ("aiorcu_stall_fn",)
# Functions for C programs only (the C readers, a debug hook variable).
C_ONLY = frozenset(
    {
        "aiorcu_reader_init",
        "aiorcu_reader_fini",
        "aiorcu_section_enter",
        "aiorcu_section_leave",
    }
)
# Called back from the writer with the GIL re-taken (see _lowlevel.py).
EXTERN_PYTHON = 'extern "Python" void aiorcu_py_stall(void *, uint64_t, int, int);'

_DEFINE = re.compile(r"^#define (AIORCU_[A-Z0-9_]+)[ \t]+\S", re.MULTILINE)
_PROTOTYPE = re.compile(
    r"^(?!static|typedef|extern|#)[A-Za-z_][\w \t\*]*?\b(aiorcu_\w+)\s*\(([^;{]*?)\);",
    re.MULTILINE | re.DOTALL,
)


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", " ", text)


def cdef_from_header(header: str) -> str:
    """The cffi declarations for aiorcu.h: its integer macros (values computed
    by the compiler, ``...``), the structs and typedefs Python uses, and every
    ``aiorcu_*`` function but the C-only ones."""
    text = _strip_comments(header)
    lines = [f"#define {name} ..." for name in _DEFINE.findall(text)]
    lines.append("struct aiorcu_domain;")
    for name in STRUCTS:
        m = re.search(rf"struct {name} \{{.*?\}};", text, re.DOTALL)
        if m is None:
            raise SystemExit(f"build_cffi: struct {name} not found in aiorcu.h")
        # A member array sized by a macro: cffi lets the compiler size it.
        struct = re.sub(r"\[[A-Z_][A-Z0-9_]*\]", "[...]", m.group(0))
        lines.append(re.sub(r"\s+", " ", struct))
    for name in TYPEDEFS:
        m = re.search(rf"typedef [^;]*\b{name}\b[^;]*;", text, re.DOTALL)
        if m is None:
            raise SystemExit(f"build_cffi: typedef {name} not found in aiorcu.h")
        lines.append(re.sub(r"\s+", " ", m.group(0)))
    for m in _PROTOTYPE.finditer(text):
        if m.group(1) not in C_ONLY:
            # An array parameter's size is only documentation (it decays to a
            # pointer), and cffi cannot evaluate a macro there.
            proto = re.sub(r"\[[A-Z_][A-Z0-9_]*\]", "[]", m.group(0))
            lines.append(re.sub(r"\s+", " ", proto))
    lines.append(EXTERN_PYTHON)
    return "\n".join(lines) + "\n"


CDEF = cdef_from_header((HERE / "aiorcu.h").read_text())

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "aiorcu._aiorcu_cffi",
    '#include "aiorcu.h"',
    # setuptools wants paths relative to the project root for sdists.
    sources=[os.path.relpath(HERE / name) for name in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    depends=[os.path.relpath(HERE / name) for name in ("aiorcu.h", "internal.h", "reader.h")],
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
