"""fbsd-hil harness: libvirt/QEMU guests, their serial console, ddb, dumps and verification."""
