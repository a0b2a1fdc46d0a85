"""A tiny Linux guest for the guest-layer tests: Debian's kernel + a busybox initramfs built at test time."""
