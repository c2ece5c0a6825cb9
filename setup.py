# The C core is built by cffi; the read path is a CPython extension built
# beside it (cffi cannot define Python types).  Everything else lives in
# pyproject.toml.
import platform

from setuptools import Extension, setup

if platform.python_implementation() != "CPython":
    raise SystemExit(
        f"aiorcu needs CPython 3.10-3.13 on Linux; this is {platform.python_implementation()}. "
        "Its read path is a CPython extension type, which other implementations cannot load."
    )

HEADERS = ["csrc/aiorcu.h", "csrc/reader.h"]

setup(
    cffi_modules=["csrc/build_cffi.py:ffibuilder"],
    ext_modules=[
        Extension(
            "aiorcu._hotpath",
            sources=["csrc/hotpath.c"],
            include_dirs=["csrc"],
            depends=HEADERS,
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
        )
    ],
)
