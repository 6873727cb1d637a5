# The node image (issue 6): qemu + iPXE ROM from bookworm-backports, a Debian kernel
# extracted into the cache (never installed into the host's /boot), and the hook that
# makes `make test` get both. Every step is idempotent: apt only runs when a package
# is missing, downloads only when the cache lacks the file.

BOOT_CACHE := $(CACHE)/kernel
BOOT_PACKAGES_BPO := qemu-system-x86 ipxe-qemu
# depmod (kmod) for modules.dep; readelf (binutils), gzip and curl (its TFTP client) are
# the tests' independent checkers.
BOOT_PACKAGES := kmod binutils gzip curl

.PHONY: boot-deps boot-tools kernel boot-image boot-demo

test: boot-deps kernel

# qemu-system-x86 and the iPXE ROMs come from backports: the preinstalled qemu-utils is
# from there and the plain bookworm qemu-system-x86 conflicts with it.
boot-deps: boot-tools
	tests/scripts/apt-install.sh --backports $(BOOT_PACKAGES_BPO)

# What building the image uses (depmod, for the kernel's modules.dep) and what the boot
# tests check it with; each target below that uses them depends on this one.
boot-tools:
	tests/scripts/apt-install.sh $(BOOT_PACKAGES)

# Debian's kernel: linux-image-amd64 is a metapackage; fetch the real image package it
# depends on and unpack it with dpkg-deb (no root needed, nothing touches /boot), then
# depmod it.
# boot-deps first: it adds bookworm-backports, whose kernel is the one the node needs
# (bookworm's own 6.1 has no idmapped mounts of a tmpfs).
kernel: boot-deps $(BOOT_CACHE)/.extracted
$(BOOT_CACHE)/.extracted: tests/scripts/boot-kernel.sh | boot-deps
	tests/scripts/boot-kernel.sh "$(BOOT_CACHE)"
	touch $@

# Build the node image with the default inputs into $(CACHE)/boot.
boot-image: build kernel boot-tools
	target/release/plinth-boot build -o $(CACHE)/boot --plinth-dir $(PLINTH_DIST_DIR) --runtime $(PLINTH)

# plinth-init linked statically against glibc (static-pie), for comparison with the musl
# build `make build` ships in target/dist. A separate target dir keeps the workspace's
# dynamic release build untouched.
BOOT_STATIC_INIT := $(CURDIR)/target/static/x86_64-unknown-linux-gnu/release/plinth-init
.PHONY: plinth-init-static boot-image-static
plinth-init-static:
	RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$(CURDIR)/target/static \
	  $(CARGO) build --release -p plinth-provisioner --bin plinth-init --target x86_64-unknown-linux-gnu

boot-image-static: build kernel plinth-init-static
	target/release/plinth-boot build -o $(CACHE)/boot --runtime $(PLINTH) --init $(BOOT_STATIC_INIT)

# One PXE boot end to end, with the serial console on the terminal.
boot-demo: boot-deps boot-image
	tests/scripts/boot-demo.sh "$(CACHE)/boot"
