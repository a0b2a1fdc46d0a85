"""The dump device's own I/O state, explained byte by byte with named evidence.

While a kernel writes a crash dump to a virtio-blk disk, the pages holding that disk driver's own state
(the rings, the indirect descriptor table, the request header and status byte, the driver's `struct
virtqueue`, softc and scatter/gather list) change with every request. Each dumped copy of such a page shows
the driver with the request that writes the very page in flight: a value that neither the live image
before the dump nor the one after shows. This package names those bytes and decides, field by field,
whether the dumped value is a legitimate in-flight value:

- `facts`: what the hypervisor (QEMU) says about the virtio devices (`DumpDeviceState`, saved as
  ``dump-device-state.json`` so an offline verification can re-run);
- `images`: the three images a byte is judged in (before, dump, after);
- `rings`: following the rings QEMU reports into indirect tables, request headers and status bytes;
- `layouts`: struct layouts from the kernel's DWARF (`kernel.debug`), never hard-coded;
- `driver`: the driver's objects reached through kernel symbols and DWARF (devclass -> softc -> ...);
- `explain`: the byte-level decision per page (`DumpDeviceExplainer`).
"""

from harness.verify.dumpdevice.explain import DumpDeviceExplainer, PageExplanation
from harness.verify.dumpdevice.facts import DumpDeviceState, QueueFacts, VirtioDeviceFacts
from harness.verify.dumpdevice.layouts import KernelDebugError, Layouts, StructLayout

__all__ = [
    "DumpDeviceExplainer",
    "DumpDeviceState",
    "KernelDebugError",
    "Layouts",
    "PageExplanation",
    "QueueFacts",
    "StructLayout",
    "VirtioDeviceFacts",
]
