# The lab (issue 16): a site network in a network namespace of its own. Debian's
# dnsmasq is the site's DHCP server (dnsmasq-base: the program alone, without the
# package's system service, which would answer DNS on the host); Debian's ipxe gives the
# iPXE binaries plinth-server hands PXE ROMs over TFTP (undionly.kpxe for BIOS, ipxe.efi
# for UEFI); Debian's ovmf is the UEFI machines' firmware. iproute2 builds the lab as a
# person would; util-linux has unshare and nsenter. Debian's chromium, headless, is the
# browser the web page's tests drive (tests/src/browser.rs).
LAB_PACKAGES := dnsmasq-base ipxe ovmf iproute2 util-linux chromium

.PHONY: lab-deps

test: lab-deps

lab-deps: boot-deps
	tests/scripts/apt-install.sh $(LAB_PACKAGES)

# What `make boot-demo` and the boot tests need besides the node image.
boot-demo: lab-deps

# For a person: the lab's BIOS and UEFI machines booting together through dnsmasq,
# proxyDHCP and the server's TFTP to `applied`, and a third, unknown machine discovered;
# prints the three timelines (the test `tests/tests/lab.rs` runs, with its output shown).
.PHONY: lab
lab: lab-deps build kernel
	$(CARGO) test --release -p plinth-tests --test lab -- --exact --nocapture \
	  a_bios_and_a_uefi_machine_boot_together_and_a_third_is_discovered
