# siglip-serve — public entry points: run, test, parity.
#
# Everything generated (venv, model exports, reference values, test images) lands in ignored
# paths; override VENV / CARGO_TARGET_DIR to keep them outside the clone (CI does).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

VENV ?= .venv
PY := $(abspath $(VENV))/bin/python
BUILD ?= build
CARGO_TARGET_DIR ?= target
BIN := $(CARGO_TARGET_DIR)/release/siglip-serve
# tch links the libtorch that ships inside the venv's torch wheel (torch==2.11.0).
CARGO_ENV := PATH="$(abspath $(VENV))/bin:$$PATH" LIBTORCH_USE_PYTORCH=1 CARGO_TARGET_DIR="$(CARGO_TARGET_DIR)"
# The export tool (python/siglip_export), installed into the venv by `make venv`.
EXPORT := $(abspath $(VENV))/bin/siglip-export
SUITE := $(BUILD)/parity/suite.json

.PHONY: run test parity bench soak fuzz venv build lint clean system-deps image image-test
.DELETE_ON_ERROR:

# The stamp names this clone: the editable install points the venv at one clone's python/, so a
# venv shared by clones (CI's cache) is pointed back at this one before this one uses it (each
# install removes the other clones' stamps).
INSTALLED := $(VENV)/.installed-$(shell printf %s '$(CURDIR)' | cksum | cut -d' ' -f1)
venv: $(INSTALLED)
REQUIREMENTS := python/requirements.txt python/requirements-client.txt deploy/requirements.txt
# The pinned requirements, then the export tool as an editable package (python/pyproject.toml,
# the `siglip-export` command): its dependencies are those requirements (--no-deps) and it builds
# with their setuptools (--no-build-isolation), so that last step needs no network. (The warning
# silenced is setuptools' notice that a siglip_export folder in the working directory would shadow
# the package: the only one is the package itself.)
$(INSTALLED): $(REQUIREMENTS) python/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(addprefix -r ,$(REQUIREMENTS))
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q --no-deps --no-build-isolation -e python/
	rm -f $(VENV)/.installed*
	touch $@

build: venv
	$(CARGO_ENV) cargo build --release --locked

# ruff's settings are in python/pyproject.toml; --config applies them to the folders outside python/.
lint: venv
	$(PY) -m ruff check --config python/pyproject.toml python bench examples gpu tests/python fuzz
	cargo fmt --check
	$(CARGO_ENV) cargo clippy --release --locked --all-targets -- -D warnings
	PY=$(PY) bash deploy/check.sh

# Random-weight models of the real SigLIP architectures (no model hub is reachable here), each
# exported in the dtypes the tests and benchmarks use.
DTYPES_tiny := float32,bfloat16,float16
DTYPES_tiny-siglip2 := float32
DTYPES_base-224 := float32,bfloat16
DTYPES_so400m-384 := float32,bfloat16
# compile.py and faulty.py only concern tiny-aoti and tiny-faulty (below): changing them need not
# re-export every model.
$(BUILD)/models/%/manifest.json: $(INSTALLED) \
    $(filter-out $(addprefix python/siglip_export/,compile.py faulty.py),$(wildcard python/siglip_export/*.py))
	$(EXPORT) random --shape $* --dtype $(or $(DTYPES_$*),float32) --out $(BUILD)/models/$*

# The tiny model with its vision tower compiled by AOTInductor for the CPU (the `aoti` backend);
# at most 8 images per pass, so the limit is testable.
$(BUILD)/models/tiny-aoti/manifest.json: $(BUILD)/models/tiny/manifest.json python/siglip_export/compile.py
	rm -rf $(BUILD)/models/tiny-aoti && cp -r $(BUILD)/models/tiny $(BUILD)/models/tiny-aoti
	$(EXPORT) compile --model-dir $(BUILD)/models/tiny-aoti --device cpu --dtype float32 --max-batch 8 > /dev/null

# The tiny model with a vision tower that raises inside libtorch for inputs a test chooses
# (python/siglip_export/faulty.py): failure handling, health and out-of-memory retries are tested
# on the CPU with it.
$(BUILD)/models/tiny-faulty/manifest.json: $(BUILD)/models/tiny/manifest.json python/siglip_export/faulty.py
	$(EXPORT) faulty --model-dir $(BUILD)/models/tiny --out $(BUILD)/models/tiny-faulty > /dev/null

# Also writes the text corpora, which come from the export package (texts.py, random_models.py).
$(BUILD)/assets/images.json: $(INSTALLED) python/make_test_assets.py \
    python/siglip_export/texts.py python/siglip_export/random_models.py
	$(PY) python/make_test_assets.py --out $(BUILD)/assets

# Reference values, computed by transformers in this run.
PARITY_MODELS := tiny tiny-siglip2 tiny-naflex base-224
$(SUITE): $(BUILD)/assets/images.json $(PARITY_MODELS:%=$(BUILD)/models/%/manifest.json) \
    $(BUILD)/models/tiny-aoti/manifest.json python/make_parity_suite.py
	$(PY) python/make_parity_suite.py --build $(BUILD) --out $(dir $@)

# What the tests need from the system: Debian's prometheus package (promtool, and a real Prometheus
# that scrapes the server in tests/python/test_metrics.py). Installed when this machine can (root,
# or password-less sudo, and apt-get); otherwise make stops at once, saying what to install.
PROMETHEUS_MISSING := make test needs promtool and prometheus: install Debian's prometheus package (apt-get install prometheus)
system-deps:
	@if command -v promtool > /dev/null && command -v prometheus > /dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2> /dev/null; then sudo="sudo -n"; else echo "$(PROMETHEUS_MISSING)"; exit 1; fi; \
	command -v apt-get > /dev/null || { echo "$(PROMETHEUS_MISSING)"; exit 1; }; \
	echo "make test: installing Debian's prometheus package (promtool, prometheus)"; \
	{ $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq prometheus > /dev/null; } \
	  || { echo "$(PROMETHEUS_MISSING): apt-get failed"; exit 1; }

# Every test: unit, parity with transformers, bad input, the gRPC API from Rust and from Python.
# Every test binary runs even when one fails (tests/run.sh); last line:
# test: rust_passed=… rust_failed=… python_passed=… python_failed=… failed=…
# TEST_MODEL: the model most tests serve (tiny; build/models/base-224 runs the suite on a model
# many times slower, as a check that no test leans on the tiny model's speed).
TEST_MODEL ?= $(BUILD)/models/tiny
test: system-deps build $(SUITE) $(BUILD)/models/tiny-faulty/manifest.json
	SIGLIP_PARITY_SUITE=$(abspath $(SUITE)) SIGLIP_TEST_ASSETS=$(abspath $(BUILD)/assets) \
	  SIGLIP_TEST_MODEL_DIR=$(abspath $(TEST_MODEL)) \
	  SIGLIP_TEST_AOTI_MODEL_DIR=$(abspath $(BUILD)/models/tiny-aoti) \
	  SIGLIP_TEST_FAULTY_MODEL_DIR=$(abspath $(BUILD)/models/tiny-faulty) \
	  SIGLIP_TEST_SLOW_MODEL_DIR=$(abspath $(BUILD)/models/base-224) \
	  SIGLIP_TEST_SIGLIP2_MODEL_DIR=$(abspath $(BUILD)/models/tiny-siglip2) \
	  SIGLIP_TEST_NAFLEX_MODEL_DIR=$(abspath $(BUILD)/models/tiny-naflex) \
	  SIGLIP_SERVE_BIN=$(abspath $(BIN)) PY=$(PY) LOGS=$(BUILD)/test \
	  $(CARGO_ENV) bash tests/run.sh

# Parity table; last line: parity: pixels_max=… pixels_mean=… token_mismatches=…/… logits_max=… probs_max=… regions_pixels_max=… regions_probs_max=… naflex_pixels_max=… naflex_shape_mismatches=…/… naflex_logits_max=… naflex_probs_max=…
parity: build $(SUITE)
	$(BIN) parity --suite $(SUITE)

# Throughput on this machine: base-224, 10 labels, 8 callers, float32 and bfloat16, against the
# model alone and the Python way, the server's CPU per image by stage, and base-224 beside tiny in
# one server (each one's throughput, tiny's wait under base-224's flood), and a base NaFlex model at
# 256 and 1024 patches on the same photos; last line:
# bench: server_img_s=… model_only_img_s=… python_img_s=… vs_python=…x overhead=…% own_cpu_ms_per_img=… model_slowdown=…% client_cpu=…% oip_cost=…% trace_cost=…% naflex_overhead=…% naflex_model_slowdown=…% naflex_preprocess_ratio=…x
bench: build $(BUILD)/assets/images.json $(BUILD)/models/base-224/manifest.json $(BUILD)/models/tiny/manifest.json \
    $(BUILD)/models/base-naflex/manifest.json
	BIN=$(BIN) PY=$(PY) MODEL=$(BUILD)/models/base-224 CHECKPOINT=$(BUILD)/models/base-224-checkpoint \
	  SECOND_MODEL=$(BUILD)/models/tiny NAFLEX_MODEL=$(BUILD)/models/base-naflex \
	  ASSETS=$(BUILD)/assets OUT_DIR=$(BUILD)/bench bash bench/run.sh

# Legitimate traffic of every kind with abuse mixed in (bench/soak.sh), SOAK_MINUTES long; last line:
# soak: minutes=… requests=… errors_unexpected=… rss_start_mb=… rss_end_mb=… p99_ms=…
SOAK_MINUTES ?= 10
soak: build $(BUILD)/assets/images.json $(BUILD)/models/tiny/manifest.json
	BIN=$(BIN) MODEL=$(BUILD)/models/tiny ASSETS=$(BUILD)/assets OUT_DIR=$(BUILD)/soak \
	  SOAK_MINUTES=$(SOAK_MINUTES) bash bench/soak.sh

# cargo-fuzz targets (fuzz/: image decoding, chunk reassembly, request validation), each run for
# FUZZ_SECONDS on a scratch corpus in $(BUILD)/fuzz seeded from fuzz/seeds; a crash fails and
# names its input. Needs cargo-fuzz (CI installs it). No sanitizer, so any toolchain builds them:
# the C decoders are not instrumented; panics, aborts, hangs and memory blow-ups are what counts.
# 16 codegen units: the cold build (every dependency instrumented) takes half as long.
# Last line: fuzz: targets=… seconds_each=… runs=… crashes=…
FUZZ_SECONDS ?= 60
FUZZ_TOOLCHAIN ?= stable
FUZZ_TARGET_DIR ?= fuzz/target
fuzz: venv
	@cargo +$(FUZZ_TOOLCHAIN) fuzz --version > /dev/null 2>&1 || \
	  { echo "make fuzz needs cargo-fuzz: cargo install cargo-fuzz --locked"; exit 1; }
	PATH="$(abspath $(VENV))/bin:$$PATH" LIBTORCH_USE_PYTORCH=1 \
	  cargo +$(FUZZ_TOOLCHAIN) fuzz build --sanitizer none -O -a --codegen-units 16 \
	  --target-dir $(abspath $(FUZZ_TARGET_DIR))
	FUZZ_BIN=$(abspath $(FUZZ_TARGET_DIR))/x86_64-unknown-linux-gnu/release OUT_DIR=$(abspath $(BUILD)/fuzz) \
	  TORCH_LIB="$$($(PY) -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" \
	  FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh

# The container image (docs/container.md): the Dockerfile's CPU variant built with podman, with
# local stand-ins for base images no registry can give here (deploy/image/bases.sh). Installs
# podman, runc and debootstrap when missing (root). Last line:
# image_build: image=… size_mb=… seconds=…
image:
	bash deploy/image/build.sh

# That image run as an operator runs it (tests/python/image_check.py), beside the host's binary on
# the same model (IMAGE_TEST_MODEL: tiny; base-224 gives a start time nearer a real model's); last line:
# image: size_mb=… start_s=… classify_ok=… drain_ok=… tls_ok=… passed=… failed=…
IMAGE_TEST_MODEL ?= $(BUILD)/models/tiny
image-test: image build $(BUILD)/assets/images.json $(IMAGE_TEST_MODEL)/manifest.json \
  $(BUILD)/models/tiny-aoti/manifest.json
	SIGLIP_TEST_ASSETS=$(abspath $(BUILD)/assets) SIGLIP_TEST_MODEL_DIR=$(abspath $(IMAGE_TEST_MODEL)) \
	  SIGLIP_TEST_AOTI_MODEL_DIR=$(abspath $(BUILD)/models/tiny-aoti) \
	  SIGLIP_SERVE_BIN=$(abspath $(BIN)) PY=$(PY) bash deploy/image/test.sh

# A real photo classified end to end. Offline this uses a RANDOM-weight model (it says so).
# With network it exports google/siglip-so400m-patch14-384; offline it falls back to random
# weights of the base-224 architecture (so400m-384 takes ~6 min to export on 2 cores).
DEMO_CHECKPOINT ?= google/siglip-so400m-patch14-384
DEMO_LABELS := "a photo of a cat" "a photo of a dog" "a photo of an astronaut" "a cup of coffee" "a rocket"
run: build $(BUILD)/assets/images.json
	@if [ -f $(BUILD)/models/demo/manifest.json ] || \
	    $(EXPORT) export --checkpoint $(DEMO_CHECKPOINT) --out $(BUILD)/models/demo 2> $(BUILD)/demo-export.log; then \
	  model=$(BUILD)/models/demo; \
	else \
	  echo "*** $(DEMO_CHECKPOINT) could not be downloaded (see $(BUILD)/demo-export.log):"; \
	  echo "*** using RANDOM weights of the base-224 architecture - the probabilities are MEANINGLESS"; \
	  $(MAKE) --no-print-directory $(BUILD)/models/base-224/manifest.json; model=$(BUILD)/models/base-224; \
	fi; \
	$(BIN) classify --model-dir $$model $(BUILD)/assets/images/chelsea_progressive.jpg --labels $(DEMO_LABELS)

clean:
	rm -rf $(BUILD)
