# The C core is built by cffi; everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["csrc/build_cffi.py:ffibuilder"])
