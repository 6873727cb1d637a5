# Kubernetes drives plinth (issue 19): the control plane, a node (containerd 2 with plinth
# as the runc v2 shim's runtime, kubelet, CNI) and cri-tools, built from the Go module
# proxy, and the images the tests run. Every version is pinned here and nowhere else.
K8S_VERSION ?= v1.37.2
# The k8s.io staging modules published with K8S_VERSION.
K8S_STAGING_VERSION ?= v0.37.2
CONTAINERD_VERSION ?= v2.4.2
CNI_PLUGINS_VERSION ?= v1.10.0
ETCD_VERSION ?= v3.7.3
CRI_TOOLS_VERSION ?= v1.37.0
# The registry critest pulls the project's images from (github.com/distribution/distribution/v3).
DISTRIBUTION_VERSION ?= v3.1.2
# Outside the clone: CI clones afresh on this machine, and a cold build is 20 minutes.
# Go's own caches (GOMODCACHE, GOCACHE) are its defaults under $HOME, outside it too;
# build-k8s.sh refuses any of the three inside the clone.
K8S_CACHE ?= $(HOME)/.cache/plinth/k8s
# The images are seconds to build and follow the clone's tests/images.
K8S_IMAGES := $(CURDIR)/target/k8s-images
# What kubelet, containerd and the CNI plugins exec on a node, what the tests set the
# node's network up with, and what the images are built from.
K8S_PACKAGES := iptables iproute2 curl util-linux mount openssl busybox-static gcc libc6-dev runc

# Given to the build script and the e2e tests (for their baselines' headers), never
# exported: etcd reads every ETCD_* variable of its environment as a flag, and one named
# ETCD_VERSION stops it starting (the tests start etcd without them).
K8S_PINS = K8S_VERSION=$(K8S_VERSION) K8S_STAGING_VERSION=$(K8S_STAGING_VERSION) \
	CONTAINERD_VERSION=$(CONTAINERD_VERSION) CNI_PLUGINS_VERSION=$(CNI_PLUGINS_VERSION) \
	ETCD_VERSION=$(ETCD_VERSION) CRI_TOOLS_VERSION=$(CRI_TOOLS_VERSION) \
	DISTRIBUTION_VERSION=$(DISTRIBUTION_VERSION)
# Where the tests find the binaries (bin/) and the images.
export PLINTH_K8S_DIR := $(K8S_CACHE)
export PLINTH_K8S_IMAGES := $(K8S_IMAGES)

.PHONY: k8s k8s-deps k8s-bin k8s-images k8s-extension k8s-demo e2e

k8s: k8s-bin k8s-images

k8s-deps:
	tests/scripts/apt-install.sh $(K8S_PACKAGES)

k8s-bin: k8s-deps
	$(K8S_PINS) tests/scripts/build-k8s.sh "$(K8S_CACHE)"

k8s-images: $(K8S_IMAGES)/.built
$(K8S_IMAGES)/.built: tests/scripts/build-images.sh tests/images/pause.c | k8s-deps
	tests/scripts/build-images.sh "$(K8S_IMAGES)"
	touch $@

# The slow end-to-end tests (a whole cluster each): `.ci/run` runs them after `make test`.
# The node's Kubernetes as one extension (docs/config.md): containerd, its runc v2 shim,
# kubelet and the CNI plugins from the build above, and what they exec on a node (Debian's
# iptables with its xtables modules, util-linux mount/umount) with their libraries.
K8S_EXTENSION := $(CURDIR)/target/extensions/kubernetes-$(K8S_VERSION).tar.zst
K8S_EXTENSION_FILES := \
	$(foreach b,kubelet containerd containerd-shim-runc-v2,$(K8S_CACHE)/bin/$(b):/usr/bin/$(b)) \
	$(foreach b,bridge host-local loopback portmap,$(K8S_CACHE)/bin/$(b):/opt/cni/bin/$(b)) \
	$(foreach b,iptables iptables-save iptables-restore ip6tables,/usr/sbin/$(b):/usr/sbin/$(b)) \
	/usr/lib/x86_64-linux-gnu/xtables:/usr/lib/x86_64-linux-gnu/xtables \
	/usr/bin/mount:/usr/bin/mount /usr/bin/umount:/usr/bin/umount

k8s-extension: build k8s-bin
	mkdir -p $(dir $(K8S_EXTENSION))
	target/release/plinth-boot extension -o $(K8S_EXTENSION) $(addprefix --add ,$(K8S_EXTENSION_FILES))

e2e: build k8s kernel lab-deps
	$(K8S_PINS) $(CARGO) test --release --no-fail-fast -p plinth-tests --test kubernetes --test critest -- --ignored --test-threads=1 --nocapture
	$(K8S_PINS) $(CARGO) test --release -p plinth-tests --test lab -- --ignored --exact a_pxe_booted_machine_with_a_wrong_ca_pin_or_an_expired_token_does_not_join --nocapture
	$(MAKE) --no-print-directory k8s-demo

# A machine PXE-boots in the lab and joins a control plane by itself, runs a pod, is
# rebooted and joins again as the same Node; prints its timeline and kubectl's view, and
# tears everything down. It is the lab's join test (ignored by make test: the lab's other
# ignored test is a helper another test runs, hence --exact).
k8s-demo: build k8s kernel lab-deps
	$(K8S_PINS) $(CARGO) test --release -p plinth-tests --test lab -- --ignored --exact a_pxe_booted_machine_joins_kubernetes_by_itself --nocapture
