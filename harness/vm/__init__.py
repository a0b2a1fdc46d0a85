"""The VM plumbing: one libvirt/QEMU guest (domain XML, connection, accelerator probe), its serial
console, physical memory, saved state, SSH, the reaper of killed runs and the host's readiness
(`doctor`). Knows nothing about FreeBSD."""
