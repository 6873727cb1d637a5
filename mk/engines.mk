# The engines the tests drive plinth through (issue: engines): Debian's containerd
# (with containerd-shim-runc-v2 and its CRI plugin) and podman (with conmon), and
# crictl built from the Go module proxy (the proxy serves cri-tools v1.34.0 and later).
ENGINE_PACKAGES := containerd podman conmon bsdutils
CRICTL_VERSION ?= v1.34.0
CRICTL := $(CACHE)/bin/crictl

.PHONY: engines
engines: $(CRICTL)
	@missing=""; for p in $(ENGINE_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
	fi

$(CRICTL):
	mkdir -p $(CACHE)/bin
	cd /tmp && GOBIN=$(CACHE)/bin GOFLAGS=-mod=mod go install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)

test: engines
