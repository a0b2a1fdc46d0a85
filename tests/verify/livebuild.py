"""Build live physical memory images from a real dump, for verifying that dump against them.

A live image made this way holds exactly the dump's pages at their physical addresses (a sparse raw file
indexed by PA), so an untouched image must verify clean and every perturbation a test makes is known.
For a minidump the upper page-table levels (PML4, PDP) are not in the dump: they are rebuilt above the
dump's RAM from the dump's own page-directory section, which holds the kernel's real PDEs; the PT
pages below them are the real ones among the dumped pages.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from harness.verify.live import PAGE_SIZE, LiveMemory

PG_V_RW = 0x3


def write_live_from_dump(vm, path: Path, extra_pages: int = 0) -> tuple[LiveMemory, int]:
    """Raw image of the dump's pages; returns (live, first free PA after RAM for extra tables)."""
    pas = list(vm.phys_pages())
    top = max(pas) + PAGE_SIZE
    size = top + extra_pages * PAGE_SIZE
    zero = bytes(PAGE_SIZE)
    with open(path, "xb") as f:
        f.truncate(size)
        for pa in pas:
            data = vm.read_phys(pa, PAGE_SIZE)
            if data != zero:
                f.seek(pa)
                f.write(data)
    return LiveMemory.from_raw_file(path), top


def write_live_from_minidump(vm, dump_file: Path, path: Path) -> tuple[LiveMemory, int]:
    """As above, plus PML4/PDP/PD pages rebuilt from the minidump's PDE section; returns (live, pml4 pa)."""
    hdr = vm.info["header"]
    sections = vm.info["sections"]
    npd = hdr["pmapsize"] // PAGE_SIZE  # one PD page per GiB of KVA from kernbase
    kernbase = hdr["kernbase"]
    n_pml4e = len({((kernbase + g * (1 << 30)) >> 39) & 511 for g in range(npd)})
    live, top = write_live_from_dump(vm, path, extra_pages=1 + n_pml4e + npd)
    live.close()
    raw = Path(dump_file).read_bytes()[sections["page_table"] : sections["page_table"] + hdr["pmapsize"]]
    pml4_pa = top
    pdp_pa: dict[int, int] = {}
    next_pa = top + PAGE_SIZE
    pml4 = bytearray(PAGE_SIZE)
    pdps: dict[int, bytearray] = {}
    with open(path, "r+b") as f:
        for g in range(npd):
            pd = raw[g * PAGE_SIZE : (g + 1) * PAGE_SIZE]
            if not any(pd):
                continue
            va = kernbase + g * (1 << 30)
            i4, i3 = (va >> 39) & 511, (va >> 30) & 511
            if i4 not in pdp_pa:
                pdp_pa[i4] = next_pa
                next_pa += PAGE_SIZE
                pdps[i4] = bytearray(PAGE_SIZE)
                struct.pack_into("<Q", pml4, i4 * 8, pdp_pa[i4] | PG_V_RW)
            pd_pa = next_pa
            next_pa += PAGE_SIZE
            struct.pack_into("<Q", pdps[i4], i3 * 8, pd_pa | PG_V_RW)
            f.seek(pd_pa)
            f.write(pd)
        for i4, page in pdps.items():
            f.seek(pdp_pa[i4])
            f.write(page)
        f.seek(pml4_pa)
        f.write(pml4)
    return LiveMemory.from_raw_file(path), pml4_pa


def poke(path: Path, pa: int, data: bytes) -> bytes:
    """Overwrite bytes of a raw live image at physical address ``pa``; returns the old bytes."""
    with open(path, "r+b") as f:
        f.seek(pa)
        old = f.read(len(data))
        f.seek(pa)
        f.write(data)
    return old


def nonzero_pages(vm, pas) -> list[int]:
    zero = bytes(PAGE_SIZE)
    return [pa for pa in pas if vm.read_phys(pa, PAGE_SIZE) != zero]


def as_u64(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint64)
