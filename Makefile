# bigembed: `make demo` runs the built-in demo end to end, `make test` runs the tests.
# Both build their own virtual environment in .venv and install everything first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch is installed first and pinned: letting another package pull it in downloads a CUDA build.
TORCH  ?= torch==2.13.0
EXTRAS ?= layout,test,text,cluster

.PHONY: install demo test test-fast browser bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	# what installing bigembed's wheel does, and an editable install skips (data files): enable
	# bigembed's Jupyter server extension (kernel websockets without Nagle's 40 ms stalls)
	install -D -m 644 jupyter-config/jupyter_server_config.d/bigembed.json \
	  $(VENV)/etc/jupyter/jupyter_server_config.d/bigembed.json
	# compile bigembed's UMAP optimiser into the numba cache now, not in front of the first user
	$(PY) -c "from bigembed.reduce.backends import warm_sgd_cache; warm_sgd_cache()" \
	  || echo "note: could not warm the UMAP optimiser's cache; the first UMAP compiles it"
	# ... and the group contrast's kernel: a server start then compiles nothing for it
	$(PY) -c "from bigembed.analysis.units import warm_contrast_cache; warm_contrast_cache()" \
	  || echo "note: could not warm the contrast kernel's cache; the first contrast compiles it"
	# ... and the map's on-disk index kernels: a first frame of a big map compiles nothing
	$(PY) -c "from bigembed.view.warm import warm_map_cache; warm_map_cache()" \
	  || echo "note: could not warm the map's kernels; the first big map compiles them"
	touch $(STAMP)

demo: install
	$(VENV)/bin/bigembed demo --out demo-data

# Headless Chromium for the browser tests (Debian packages; never a downloaded browser).
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "note: chromium not installed and not root; browser tests will be skipped"; fi; \
	fi

# Two workers (pytest-xdist), one test file each: most tests wait on subprocesses, servers,
# browsers and disk, so two files at once use the 2 cores far better than one.
test: install browser
	BIGEMBED_NO_PROGRESS=1 $(PY) -m pytest -q -n 2 --dist loadfile tests

test-fast: install
	BIGEMBED_NO_PROGRESS=1 $(PY) -m pytest -q -m "not slow and not browser" tests

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) demo-data build dist *.egg-info .pytest_cache
