"""cffi builder: compiles csrc/ into the extension module tieredmem._engine.

The C declarations come from csrc/tieredmem.h itself (the engine's one public
header), minus its preprocessor lines, so the binding cannot drift from it; its
integer constants (`#define TM_NAME value`), and the array lengths they give, are
read from the compiled header."""
import pathlib
import re

import numpy
from cffi import FFI

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def public_declarations() -> str:
    text = (CSRC / "tieredmem.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    keep = []
    for line in text.splitlines():
        s = line.strip()
        constant = re.match(r"#define (TM_\w+)\s+\S", s)
        if constant:
            keep.append(f"#define {constant.group(1)} ...")
        elif not (s.startswith("#") or s in ('extern "C" {', "}")):  # "}" alone closes extern "C"
            keep.append(re.sub(r"\[TM_\w+\]", "[...]", line))  # cffi takes a length from the compiler only so
    return "\n".join(keep) + "\n"


ffibuilder = FFI()
ffibuilder.cdef(public_declarations())
ffibuilder.set_source(
    "tieredmem._engine",
    '#include "tieredmem.h"',
    sources=sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.c")),
    include_dirs=[str(CSRC.relative_to(ROOT)), numpy.get_include()],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
