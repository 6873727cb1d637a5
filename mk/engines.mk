# The engines the tests drive plinth through (issue: engines): Debian's containerd
# (with containerd-shim-runc-v2 and its CRI plugin) and podman (with conmon), and
# crictl built from the Go module proxy (the proxy serves cri-tools v1.34.0 and later).
ENGINE_PACKAGES := containerd podman conmon bsdutils
CRICTL_VERSION ?= v1.34.0
CRICTL := $(CACHE)/bin/crictl

.PHONY: engines
engines: $(CRICTL)
	tests/scripts/apt-install.sh $(ENGINE_PACKAGES)

$(CRICTL):
	mkdir -p $(CACHE)/bin
	cd /tmp && GOBIN=$(CACHE)/bin GOFLAGS=-mod=mod go install sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION)

test: engines
