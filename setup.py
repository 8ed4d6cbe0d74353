from setuptools import Extension, setup

# Metadata lives in pyproject.toml; this builds csrc/ into tieredmem._engine,
# and the malloc interposer that `tieredmem run` preloads (docs/malloc.md): a
# plain shared library, built as an extension only to be compiled and installed
# with the package; nothing imports it.
malloc_interpose = Extension("tieredmem._malloc_interpose", ["csrc/preload/malloc_interpose.c"],
                             extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"],
                             libraries=["dl", "pthread"])
setup(cffi_modules=["tieredmem/_build.py:ffibuilder"], ext_modules=[malloc_interpose])
