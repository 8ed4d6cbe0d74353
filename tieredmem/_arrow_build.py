"""Build the Arrow memory pool extension (tieredmem._arrow_pool) on demand.

Arrow's C++ ABI is that of one pyarrow version, and pip's build isolation
may build a package against another pyarrow than the one that runs it. So
the extension is not built at install time: it is compiled against the
pyarrow that is imported, on first use, into a cache keyed on that pyarrow,
this Python and the sources, under a file lock (two processes starting at
once build it once). `make build` warms the cache right after installing
(`python -m tieredmem._arrow_build`).

The cache is in the environment (<sys.prefix>/share/tieredmem/arrow), where
pyarrow itself lives, so removing the environment removes it; when that is
not writable, in the user's cache directory."""
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import pathlib
import subprocess
import sys
import sysconfig
import tempfile

PACKAGE = pathlib.Path(__file__).resolve().parent
CSRC = PACKAGE.parent / "csrc"
PYX = PACKAGE / "_arrow_pool.pyx"
SOURCES = (PYX, CSRC / "arrow" / "arrow_pool.cc", CSRC / "arrow" / "arrow_pool.h", CSRC / "tieredmem.h")
MODULE = "tieredmem._arrow_pool"
CXXFLAGS = ["-O2", "-std=c++20", "-fPIC", "-shared", "-Wall", "-Wno-unused-function"]
INSTALL_HINT = "pip install 'tieredmem[arrow]' (pyarrow and Cython) and a C++ compiler (g++)"


def _cache_root() -> pathlib.Path:
    env_dir = pathlib.Path(sys.prefix) / "share" / "tieredmem" / "arrow"
    try:
        env_dir.mkdir(parents=True, exist_ok=True)
        if os.access(env_dir, os.W_OK):
            return env_dir
    except OSError:
        pass
    user = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(user) / "tieredmem-arrow"


def _libraries(pa):
    """Linker arguments for pyarrow's libraries, by file name: no symlinks
    need to be made in pyarrow's directory (pa.create_library_symlinks)."""
    args = []
    so_version = pa.cpp_build_info.so_version
    for name in pa.get_libraries():
        found = [(d, f) for d in pa.get_library_dirs() for f in (f"lib{name}.so", f"lib{name}.so.{so_version}")
                 if os.path.exists(os.path.join(d, f))]
        if not found:
            raise ImportError(f"tieredmem: pyarrow's library {name} not found in {pa.get_library_dirs()}")
        d, f = found[0]
        args += [f"-L{d}", f"-l:{f}", f"-Wl,-rpath,{d}"]
    return args


def _key(pa, cython_version: str) -> str:
    h = hashlib.sha256()
    for part in (pa.__version__, pa.__file__, cython_version, sys.version, sysconfig.get_config_var("EXT_SUFFIX"),
                 " ".join(CXXFLAGS)):
        h.update(part.encode() + b"\0")
    for src in SOURCES:
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def _compile(pa, out: pathlib.Path, work: pathlib.Path):
    import numpy
    cpp = work / "_arrow_pool.cpp"
    steps = [
        [sys.executable, "-m", "cython", "--cplus", "-3", "--module-name", MODULE, str(PYX), "-o", str(cpp)],
        [os.environ.get("CXX", "g++"), *CXXFLAGS, f"-I{sysconfig.get_paths()['include']}", f"-I{pa.get_include()}",
         f"-I{numpy.get_include()}", f"-I{CSRC / 'arrow'}", f"-I{CSRC}", str(cpp), str(SOURCES[1]),
         *_libraries(pa), "-o", str(out)],
    ]
    for cmd in steps:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise ImportError(f"tieredmem: cannot build the Arrow pool: {cmd[0]} not found; install {INSTALL_HINT}") \
                from None
        if res.returncode != 0:
            raise ImportError(f"tieredmem: building the Arrow pool failed ({' '.join(cmd[:3])} ...):\n"
                              f"{res.stderr[-3000:]}")


def extension_path() -> pathlib.Path:
    """The extension built against the imported pyarrow, built if missing."""
    import pyarrow as pa
    missing = [str(s) for s in SOURCES if not s.exists()]
    if missing:
        raise ImportError("tieredmem: the Arrow pool is built from a source checkout (pip install -e); "
                          f"missing: {', '.join(missing)}")
    try:
        import Cython
    except ImportError:
        raise ImportError(f"tieredmem: building the Arrow pool needs Cython; install {INSTALL_HINT}") from None
    directory = _cache_root() / _key(pa, Cython.__version__)
    path = directory / ("_arrow_pool" + sysconfig.get_config_var("EXT_SUFFIX"))
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():  # another process may have built it while we waited
            with tempfile.TemporaryDirectory(dir=directory) as work:
                built = pathlib.Path(work) / path.name
                _compile(pa, built, pathlib.Path(work))
                os.replace(built, path)  # atomic: a reader never sees half a file
    return path


def load():
    """Import tieredmem._arrow_pool, building it first if needed."""
    module = sys.modules.get(MODULE)
    if module is None:
        path = extension_path()
        loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
        spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        from . import _engine
        module.bind(_engine.__file__)
        sys.modules[MODULE] = module
    return module


if __name__ == "__main__":
    if importlib.util.find_spec("pyarrow") is None:
        print("tieredmem: pyarrow is not installed; the Arrow pool is not built")
    else:
        print(extension_path())
