from setuptools import setup

# Metadata lives in pyproject.toml; this only builds csrc/ into tieredmem._engine.
setup(cffi_modules=["tieredmem/_build.py:ffibuilder"])
