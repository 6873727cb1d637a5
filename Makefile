# Plinth: the two README commands are `make demo` and `make test`.
# Everything the tests need is installed here, idempotently.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
CARGO ?= cargo
# The `plinth` and `plinth-init` the project ships: static musl where rustup has the
# target, else the glibc builds (tests/scripts/build-plinth.sh says why). `make build`
# writes them into PLINTH_DIST_DIR, where plinth-boot looks first. The tests, the demo
# and the benchmark use PLINTH, which is the runtime there unless given (`make test
# PLINTH=/path/to/plinth`). target/release holds cargo's own builds (the runtime glibc
# static-pie). PLINTH_TARGET=none ships the glibc builds.
PLINTH_DIST_DIR := $(CURDIR)/target/dist
PLINTH_DIST := $(PLINTH_DIST_DIR)/plinth
PLINTH ?= $(PLINTH_DIST)
PLINTH_TARGET ?= x86_64-unknown-linux-musl
# opencontainers/runtime-tools, the commit the runc baseline in ../shared/baselines was measured with.
RUNTIME_TOOLS_VERSION ?= v0.9.1-0.20251205004911-5e639034dcdc
RUNTIME_TOOLS := $(CACHE)/runtime-tools
# musl-tools: musl-gcc, for ring's C and assembly in the static musl plinth-init.
# protobuf-compiler: protoc, which etcd-client's build needs for etcd's .proto files;
# etcd-server: the real etcd the shared-store tests start on loopback.
# docker-registry, skopeo: the real OCI registry images are pulled from, and the tool
# that pushes the demo image's OCI layout into it.
DEB_PACKAGES := busybox-static runc crun uidmap strace gcc libc6-dev musl-tools \
  protobuf-compiler etcd-server docker-registry skopeo

export PLINTH_CACHE := $(CACHE)
export PLINTH PLINTH_TARGET

.PHONY: all build deps demo demo-runtime test unit integration validation bench lint clean

all: build

build: deps
	$(CARGO) build --release --workspace
	CARGO="$(CARGO)" tests/scripts/build-plinth.sh "$(PLINTH_DIST_DIR)"

# Debian packages the tests and benchmark drive; apt only runs when one is missing.
deps:
	tests/scripts/apt-install.sh $(DEB_PACKAGES)

# The runtime-tools validation suite, built from the Go module proxy into the cache.
validation: $(RUNTIME_TOOLS)/.built
$(RUNTIME_TOOLS)/.built:
	tests/scripts/build-runtime-tools.sh "$(RUNTIME_TOOLS_VERSION)" "$(RUNTIME_TOOLS)"
	touch $@

# The whole chain: image, lab, registry, server, a PXE boot, a rootless container's
# page fetched from outside the node (tests/src/demo.rs).
demo: deps build kernel lab-deps
	$(CARGO) run --release -q -p plinth-tests --bin plinth-demo -- --plinth-dir $(PLINTH_DIST_DIR)

# The runtime alone: a busybox container with `plinth run`.
demo-runtime: deps build
	tests/scripts/demo.sh "$(PLINTH)"

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# The runtime's musl-only code paths (the shipped build).
	@if tests/scripts/build-plinth.sh --has-target; then \
	  echo "$(CARGO) clippy -p plinth-runtime --all-targets --target $(PLINTH_TARGET) -- -D warnings"; \
	  $(CARGO) clippy -p plinth-runtime --all-targets --target $(PLINTH_TARGET) -- -D warnings; \
	fi

test: deps build validation
	$(CARGO) test --release --workspace -- --test-threads=1
	@# The shipped runtime is the musl build: its unit tests run against musl too.
	@if tests/scripts/build-plinth.sh --has-target; then \
	  echo "$(CARGO) test --release -p plinth-runtime --lib --target $(PLINTH_TARGET)"; \
	  $(CARGO) test --release -p plinth-runtime --lib --target $(PLINTH_TARGET) -- --test-threads=1; \
	else \
	  echo "SKIP runtime unit tests on musl: no $(PLINTH_TARGET) target (the shipped plinth is the glibc build)"; \
	fi

bench: deps build
	tests/scripts/bench.sh "$(PLINTH)"
	BENCH_PURE_V2=1 tests/scripts/bench.sh "$(PLINTH)"
	$(MAKE) --no-print-directory bench-storm

# Each part's own targets and test prerequisites (the node image, the benchmark, the
# engines) live in mk/*.mk; a rule there may add prerequisites to `test`.
include $(wildcard mk/*.mk)

clean:
	$(CARGO) clean
	rm -rf $(CACHE)
