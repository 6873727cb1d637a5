# make bench (issue 5): plinth side by side with crun, runc and youki. The Makefile's
# `bench: deps build` builds release and installs crun/runc; this adds what only the
# benchmark needs: containers-common's default seccomp profile (the seccomp config) and
# GNU time (peak RSS). apt only runs when one is missing, and a failed install only
# drops that column or config: a benchmark never fails for want of a tool.
BENCH_PACKAGES := golang-github-containers-common time

.PHONY: bench-deps bench-size

bench: bench-deps

bench-deps:
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  { apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; } || echo "bench-deps: could not install$$missing; going on without"; \
	fi

# What takes the space in the plinth binary (cargo-bloat, from crates.io, when installed).
bench-size: build
	@ls -l $(PLINTH); file $(PLINTH)
	@if command -v cargo-bloat >/dev/null; then $(CARGO) bloat --release -p plinth-runtime --bin plinth --crates -n 25; \
	else echo "cargo install cargo-bloat for the per-crate breakdown"; fi
