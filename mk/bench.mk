# make bench (issue 5): plinth side by side with crun, runc and youki. The Makefile's
# `bench: deps build` builds release and installs crun/runc; this adds what only the
# benchmark needs: containers-common's default seccomp profile (the seccomp config) and
# GNU time (peak RSS). apt only runs when one is missing, and a failed install only
# drops that column or config: a benchmark never fails for want of a tool.
BENCH_PACKAGES := golang-github-containers-common time

.PHONY: bench-deps bench-size bench-storm

bench: bench-deps

bench-deps:
	tests/scripts/apt-install.sh --optional $(BENCH_PACKAGES)

# What takes the space in the plinth binary (cargo-bloat, from crates.io, when installed).
# The breakdown is of the build the project ships: musl where build-plinth.sh has it.
bench-size: build
	@ls -l $(PLINTH_DIST); file $(PLINTH_DIST)
	@if ! command -v cargo-bloat >/dev/null; then echo "cargo install cargo-bloat for the per-crate breakdown"; \
	elif tests/scripts/build-plinth.sh --has-target; then \
	  $(CARGO) bloat --release -p plinth-runtime --bin plinth --crates -n 25 --target $(PLINTH_TARGET); \
	else $(CARGO) bloat --release -p plinth-runtime --bin plinth --crates -n 25; fi

# The boot storm (issue 21): STORM_MACHINES simulated machines over the real protocol,
# STORM_IN_FLIGHT at once, against one server on the embedded store, then two servers
# on one etcd. Each run fails when a machine does not complete.
STORM_MACHINES ?= 10000
STORM_IN_FLIGHT ?= 500
bench-storm: build
	@echo "== boot storm: $$(nproc) cores, $$(awk '/MemTotal/ {printf "%.0f GiB", $$2/1048576}' /proc/meminfo)"
	target/release/plinth-storm --machines $(STORM_MACHINES) --in-flight $(STORM_IN_FLIGHT) --servers 1
	target/release/plinth-storm --machines $(STORM_MACHINES) --in-flight $(STORM_IN_FLIGHT) --servers 2
