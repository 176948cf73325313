# FlexRel reproducibility workbook.
#   make reproduce [PROFILE=default|quick|paper]   set up, then run every notebook in order
#        [NPROC=n] [TORCHRUN_ARGS=...]             Figure 2's stages first under torchrun on n processes per node
#   make sharded PROFILE=... NPROC=n TORCHRUN_ARGS=...  that torchrun step alone (the other nodes of a multi-node run)
#   make test                                      set up, then ruff + the whole pytest suite
#   make compare REF=<git ref or folder>           this run's verdicts against another run's, claim by claim
#                                                  -> results/$(PROFILE)/COMPARISON.md
#   make bench                                     timing/memory ratios -> results/bench.json
#   make bench-sweep                               make bench's sweep section alone -> results/bench_sweep.json
#   make bench-precision                           make bench's precision section alone -> results/bench_precision.json
#   make bench-paper                               paper-profile stage times + estimated reproduce time
#   make lab                                       JupyterLab on the notebooks
#   make app [PROFILE=...]                         the explorer as a web page (Voila, 127.0.0.1, token)
#   make clean [MODELS=1]                          remove generated results (trained models kept unless MODELS=1;
#                                                  the committed results/default/ stays)
# Run without -j: the notebooks' sweeps already use every core (worker processes, flexrel_core/parallel.py).

.DELETE_ON_ERROR:
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON_BOOT ?= python3
VENV ?= .venv
PROFILE ?= default
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)

# Thread counts are explicit (2 cores); JUPYTER_PATH makes kernel `python3` this venv.
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export JUPYTER_PATH := $(abspath $(VENV))/share/jupyter
export JUPYTER_PLATFORM_DIRS := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export MPLBACKEND := Agg

# The method first, then paper order; a notebook joins `make reproduce` by existing under notebooks/.
NOTEBOOKS := $(foreach n,method fig1 fig2 baselines fig3 fig4 ablations robustness table1 explore,$(if $(wildcard notebooks/$(n).ipynb),$(n)))
RESULTS := results/$(PROFILE)

.PHONY: setup test test-browser screenshot lint chromium check-profile reproduce sharded compare bench bench-sweep bench-precision bench-paper lab app clean

# The project is installed in the venv in editable mode, so `import flexrel_core` works from any
# folder and any kernel. One venv may serve several checkouts (CI keeps it outside the clone): when
# the install points at another checkout, it is re-pointed here: offline with the venv's setuptools,
# else with one fetched from the package index.
# PYTHONWARNINGS=ignore: setuptools' 10-line notice on every editable install says nothing a user must act on.
# `-P` keeps the current folder off sys.path, so the check sees what other folders see.
INSTALLED := import importlib.util as u, os, sys; s = u.find_spec("flexrel_core"); \
	sys.exit(not s or os.path.realpath(s.origin) != os.path.realpath(sys.argv[1]))
setup: $(STAMP)
	@if ! $(PY) -P -c '$(INSTALLED)' "$(CURDIR)/flexrel_core/__init__.py"; then \
	  echo "installing flexrel_core from $(CURDIR) into $(VENV) (pip install -e .)"; \
	  export PYTHONWARNINGS=ignore; \
	  $(PY) -m pip install --quiet --no-deps --no-build-isolation --no-index -e . \
	    || $(PY) -m pip install --quiet --no-deps -e .; \
	fi

# The stamp is named by a hash of requirements.txt: a changed pin makes a new stamp, re-running this recipe.
$(STAMP):
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# `make test` is what CI runs: the browser test needs Debian's Chromium, installed here when it can
# be (root + apt-get); otherwise the target fails with the command to run (never a silent skip).
test: setup lint chromium
	$(VENV)/bin/pytest

test-browser: setup chromium
	$(VENV)/bin/pytest -m browser

# The README's screenshot of the explorer, taken by the browser test (make test leaves it alone).
screenshot: setup chromium
	FLEXREL_SCREENSHOT=$(CURDIR)/results/explorer.png $(VENV)/bin/pytest -m browser

chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "error: the browser test needs Debian's Chromium (/usr/bin/chromium); install it with:" >&2; \
	    echo "  sudo apt-get install chromium" >&2; \
	    exit 1; \
	  fi; \
	fi

# File targets: a notebook is rerun only when its source, the library or the profile changed (a
# rerun with nothing changed does nothing); the runner writes the executed copy under a temporary
# name and moves it into place only on success, so a failed cell leaves no notebook that looks done.
# The targets are run stamps under $(RESULTS)/.runs/ (never committed), not the executed notebooks:
# results/default/notebooks/ is committed, and a fresh clone must still run every notebook.
NB_OUT := $(patsubst %,$(RESULTS)/.runs/%.done,$(NOTEBOOKS))
LIBRARY := $(shell find flexrel_core -name "*.py")
reproduce: $(RESULTS)/REPORT.md

# Every notebook's parameters are checked (types, documented ranges) before the first one runs.
check-profile: setup
	@$(PY) -m flexrel_core.workbook.profiles $(PROFILE)

# NPROC=n (or TORCHRUN_ARGS for several nodes): before the first notebook, torchrun runs Figure 2's sweep on n
# processes per node, its heavy stages sharded over them, and rank 0 caches every result
# (flexrel_core/paper/torchrun.py); the notebooks then run in one process and find it cached. NPROC unset or 1
# and no TORCHRUN_ARGS: no torchrun step, the notebooks run as they always did. Several nodes, e.g. two:
#   node 0: make reproduce PROFILE=paper NPROC=4 TORCHRUN_ARGS="--nnodes=2 --node-rank=0 --rdzv-endpoint=node0:29500"
#   node 1: make sharded   PROFILE=paper NPROC=4 TORCHRUN_ARGS="--nnodes=2 --node-rank=1 --rdzv-endpoint=node0:29500"
# with the repository's cache/ folder on a file system both nodes share.
NPROC ?= 1
TORCHRUN_ARGS ?=
SHARDED := $(if $(filter-out 1,$(NPROC))$(strip $(TORCHRUN_ARGS)),$(RESULTS)/.runs/torchrun.done)
sharded: $(RESULTS)/.runs/torchrun.done

$(RESULTS)/.runs/torchrun.done: $(LIBRARY) $(wildcard profiles/$(PROFILE)/*.yaml) | check-profile
	$(PY) -m torch.distributed.run --nproc-per-node=$(NPROC) $(TORCHRUN_ARGS) -m flexrel_core.paper.torchrun --profile $(PROFILE)
	@mkdir -p $(@D) && touch $@

$(RESULTS)/.runs/%.done: notebooks/%.ipynb $(LIBRARY) $(wildcard profiles/$(PROFILE)/*.yaml) | check-profile $(SHARDED)
	@$(PY) -m flexrel_core.workbook.runner $< --profile $(PROFILE)
	@mkdir -p $(@D) && touch $@

# Every verdict of the run (claims.csv, with whether a rerun can turn it) heads the report.
$(RESULTS)/REPORT.md: $(NB_OUT) | setup
	@$(PY) -m flexrel_core.paper.claims --profile $(PROFILE)
	@$(PY) -m flexrel_core.workbook.report --profile $(PROFILE)

# After `make reproduce`: does this machine give the committed verdicts? e.g. `make compare REF=HEAD`
# (the committed results/$(PROFILE)/), a commit, a branch, or the folder of another run.
compare: setup
	@if [ -z "$(REF)" ]; then echo "usage: make compare REF=<git ref or folder> [PROFILE=...], e.g. REF=HEAD" >&2; exit 2; fi
	$(PY) -m flexrel_core.paper.compare --profile $(PROFILE) --ref "$(REF)"

bench: setup
	$(PY) -m flexrel_core.paper.bench --out results/bench.json

# Evaluation on a channels-last copy, and a slice of Figure 2's sweep in one process against worker processes.
bench-sweep: setup
	$(PY) -m flexrel_core.paper.bench_sweep results/bench_sweep.json

# The dense model trained in float32 and in float64, each under this CPU's kernels and under narrower ones
# (ATEN_CPU_CAPABILITY): the time float64 costs, and how far apart the two runs' weights end.
bench-precision: setup
	$(PY) -m flexrel_core.paper.bench_precision --out results/bench_precision.json

# Each stage of the paper profile timed on VGG16 (random weights, a synthetic ImageNet-format folder in a
# temporary directory), and the wall time of `make reproduce PROFILE=paper` on 50,000 images estimated from
# those times. Small sizes on a CPU, the profile's on a GPU; e.g. BENCH_PAPER_ARGS="--image-size 224".
BENCH_PAPER_ARGS ?=
bench-paper: setup
	$(PY) -m flexrel_core.paper.bench_paper --out results/bench_paper.json $(BENCH_PAPER_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab --allow-root --notebook-dir=$(CURDIR)

# The explorer as a web page for students: Voila serves notebooks/explore.ipynb with the profile's
# parameters, controls and views only (no code), on 127.0.0.1 behind a token; the URL is printed.
APP_PORT ?= 8866
app: setup check-profile
	$(PY) -m flexrel_core.paper.app --profile $(PROFILE) --port $(APP_PORT)

clean:
	rm -rf results/*/.runs $(filter-out results/default/notebooks,$(wildcard results/*/notebooks)) results/*/*.log .pytest_cache
	find results cache -name '.*.tmp*' -type f -delete 2>/dev/null || true
	find cache -mindepth 1 -maxdepth 1 ! -name models -exec rm -rf {} + 2>/dev/null || true
	if [ "$(MODELS)" = "1" ]; then rm -rf cache; fi
