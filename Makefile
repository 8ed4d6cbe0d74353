# Every target works from a fresh clone: the venv is created when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: build test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the build inputs change; the editable install rebuilds csrc/.
$(STAMP): $(PY) pyproject.toml setup.py tieredmem/_build.py $(wildcard csrc/*.c csrc/*.h csrc/preload/*.c)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The Arrow pool is compiled against the pyarrow installed (tieredmem/_arrow_build.py
# says why not at install time); this builds it now, or finds it cached in $(VENV).
build: $(STAMP)
	$(PY) -m tieredmem._arrow_build

test: build
	$(PY) -m pytest -q

demo: build
	$(PY) -m tieredmem demo

bench: build
	$(PY) -m benchmarks.bench_engine
	$(PY) -m benchmarks.bench_allocator
	$(PY) -m benchmarks.bench_arrow
	$(PY) -m benchmarks.bench_policy_sim
	$(PY) -m benchmarks.bench_policies
	$(PY) -m benchmarks.bench_malloc
	$(PY) -m benchmarks.bench_publish
	$(PY) -m benchmarks.bench_dask
	$(PY) -m pytest -q -p no:cacheprovider benchmarks/micro -o addopts='' --benchmark-only
	$(PY) -m tieredmem bench --out benchmarks/results/suite

clean:
	rm -rf $(VENV) build *.egg-info tieredmem/_engine*.so tieredmem/_malloc_interpose*.so tieredmem/*.o
