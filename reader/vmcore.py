"""`Vmcore`: one opened kernel dump, its physical memory, kernel VA translation and symbols."""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import elfdump, minidump
from .errors import AddressError, FormatError, KernelMismatchError, ReaderError, SymbolError, TruncatedError
from .info import build_info
from .infofile import read_info_file
from .kernel import Kernel
from .kernelcheck import KernelMatch, check_kernel
from .msgbuf import read_msgbuf
from .paging import AMD64_LEVELS, MapBudget, RadixWalk
from .physmem import PAGE_SHIFT, PAGE_SIZE, PhysIndex
from .source import open_payload
from .threads import Thread, list_threads

_TCACHE_MAX = 1 << 17


@dataclass
class PageMap:
    """Every present kernel page as parallel arrays: VA, PA and payload offset (ascending VA)."""

    va: np.ndarray
    pa: np.ndarray
    offset: np.ndarray

    def __len__(self) -> int:
        return len(self.va)


class Vmcore:
    """A FreeBSD kernel dump: minidump or full ELF dump, amd64 / i386 / arm64.

    Reads are checked: an address that is not mapped or whose page is not in the dump raises
    `AddressError`; a page the dump promises but the (cut short) file lacks raises
    `TruncatedError`, or reads as zeros when opened with `zero_fill=True`.
    """

    page_size = PAGE_SIZE

    def __init__(self, path: str | os.PathLike, kernel: str | os.PathLike | Kernel | None = None, *,
                 zero_fill: bool = False, private_key: Any = None, force: bool = False):
        self.path = Path(path)
        self.zero_fill = zero_fill
        self._payload = open_payload(self.path, private_key=private_key)
        try:
            self._setup(kernel)
            self.kernel_match: KernelMatch = self.check_kernel()
            if self.kernel_match.mismatch and not force:
                raise KernelMismatchError(
                    f"the dump and the kernel {self.kernel.path} do not belong together: "
                    f"{self.kernel_match.evidence}", path=self.path, field="kernel",
                    expected="the kernel that wrote this dump (force=True / --force reads anyway)")
        except BaseException:
            self.close()
            raise

    def check_kernel(self) -> KernelMatch:
        """Compare the kernel file with the dump (version string, build-id): see `reader.kernelcheck`."""
        header_version = (self._kheader or read_info_file(self.path) or {}).get("versionstring")
        return check_kernel(self, header_version=header_version if isinstance(header_version, str) else None)

    # ---- opening ---------------------------------------------------------------------------
    def _setup(self, kernel: Any) -> None:
        buf = self._payload.buffer
        self._buf = buf
        self._size = len(buf)
        self._mv = memoryview(buf)
        self._u64 = None
        self._tcache: dict[int, int] = {}
        self._vcache: dict[int, int] = {}
        self._unpack_q = struct.Struct("<Q").unpack_from    # va page -> payload offset of its (present) page
        # Slicing an mmap gives bytes in one step; find the mmap behind a memoryview payload when
        # the view starts at its first byte (plain files), else slice the view and copy.
        self._raw = _underlying_mmap(buf, self._mv)
        raw = self._raw
        self._slice = (lambda a, b: raw[a:b]) if raw is not None else (lambda a, b: self._mv[a:b].tobytes())
        self._kheader = getattr(self._payload, "header", None)
        if minidump.is_minidump(buf):
            md = minidump.parse(buf, self.path)
            self.format, self.kind = "minidump", "mini"
            self.arch = md.arch
            self._phys: PhysIndex = md.phys
            self._expected = md.expected_size
            self._md = md
            self._translator = md.arch.minidump_translator(md.header, md.page_table, self._phys_u64,
                                                           self._phys_pages_u64)
            self._dmap = md.arch.dmap(md.header)
        elif elfdump.is_elf(buf):
            ed = elfdump.parse(buf, self.path)
            self.format, self.kind = "elf", "full"
            self.arch = ed.arch
            self._phys = ed.phys
            self._expected = ed.expected_size
            self._ed = ed
            self._translator = None
            self._dmap = None
        else:
            head = bytes(buf[:8])
            raise FormatError(f"unrecognised payload magic {head!r}", path=self.path, offset=0,
                              field="magic", expected="'minidump' or '\\x7fELF' (a vmcore payload)")
        self.kernel: Kernel | None = None
        if kernel is not None:
            self.kernel = kernel if isinstance(kernel, Kernel) else Kernel(kernel)
            if _machine_number(self.kernel.elf_machine) != self.arch.elf_machine:
                raise FormatError(f"kernel is for e_machine {self.kernel.elf_machine}, the dump is "
                                  f"{self.arch.name}",
                                  path=self.kernel.path, offset=18, field="e_machine",
                                  expected=f"{self.arch.elf_machine} ({self.arch.name})")
        self.load_offset = 0

    @property
    def truncated(self) -> bool:
        return self._size < self._expected

    @property
    def payload_container(self) -> str:
        """What was undone to reach the payload: "plain", "gzip", "zstd", "device+gzip", ..."""
        return str(getattr(self._payload, "container", "plain"))

    @property
    def payload_size(self) -> int:
        """Bytes of the decoded payload: for a compressed dump the uncompressed size, which is what the
        kernel reserved on the dump device (`dumpextent`), not the file's size."""
        return len(self._payload)

    def close(self) -> None:
        for name in ("_translator", "_phys", "_md", "_ed", "_u64", "_raw", "_slice"):
            if hasattr(self, name):
                setattr(self, name, None)
        if hasattr(self, "_mv"):
            self._mv.release()
        self._buf = None
        self._payload.close()

    def __enter__(self) -> Vmcore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- physical memory -------------------------------------------------------------------
    def _page_offset(self, pa: int, va: int | None = None) -> int:
        off = self._phys.offset_of(pa >> PAGE_SHIFT)
        if off is None:
            where = f"physical address {pa:#x}" + (f" (for virtual {va:#x})" if va is not None else "")
            raise AddressError(f"{where} is not in the dump", path=self.path,
                               address=pa if va is None else va)
        return off

    def _file_bytes(self, off: int, n: int, pa: int, va: int | None) -> bytes:
        end = off + n
        if end <= self._size:
            return self._slice(off, end)
        if self.zero_fill:
            have = max(0, self._size - off)
            return self._mv[off : off + have].tobytes() + bytes(n - have)
        where = f"physical address {pa:#x}" + (f" (virtual {va:#x})" if va is not None else "")
        raise TruncatedError(f"{where} lies at payload offset {off:#x}, past the end of the cut-short "
                             f"file ({self._size:#x} of {self._expected:#x} bytes)", path=self.path,
                             offset=off, field="page data", expected="use zero_fill=True to read "
                             "missing tail pages as zeros")

    def read_phys(self, pa: int, size: int) -> bytes:
        """`size` bytes of physical memory at `pa` (every page must be in the dump)."""
        if size < 0 or pa < 0:
            raise AddressError(f"bad physical read {pa:#x}+{size}", address=pa, path=self.path)
        po = pa & 0xFFF
        if po + size <= PAGE_SIZE:
            return self._file_bytes(self._page_offset(pa) + po, size, pa, None)
        out = bytearray()
        while size > 0:
            n = min(size, PAGE_SIZE - (pa & 0xFFF))
            out += self._file_bytes(self._page_offset(pa) + (pa & 0xFFF), n, pa, None)
            pa += n
            size -= n
        return bytes(out)

    def _phys_u64(self, pa: int) -> int:
        off = self._phys.offset_of(pa >> PAGE_SHIFT)
        if off is None:
            off = self._page_offset(pa)   # raises AddressError
        off += pa & 0xFFF
        if off + 8 <= self._size:
            return self._unpack_q(self._buf, off)[0]
        return int.from_bytes(self._file_bytes(off, 8, pa, None), "little")

    def _all_u64(self) -> np.ndarray:
        if self._u64 is None:
            self._u64 = np.frombuffer(self._buf, dtype="<u8", count=self._size // 8)
        return self._u64

    def _phys_pages_u64(self, pas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Page-table pages at `pas` as (n, 512) u64; `ok` is False where the page is absent."""
        pas = np.asarray(pas, dtype=np.uint64)
        offs = self._phys.offsets_of((pas >> np.uint64(PAGE_SHIFT)).astype(np.int64))
        ok = offs >= 0
        inside = ok & (offs + PAGE_SIZE <= self._size)
        if (ok & ~inside).any() and not self.zero_fill:
            bad = int(pas[ok & ~inside][0])
            raise TruncatedError(f"page-table page at physical {bad:#x} lies past the end of the cut-short "
                                 f"file", path=self.path, offset=int(offs[ok & ~inside][0]),
                                 field="page data", expected="zero_fill=True to treat it as empty")
        if int(inside.sum()) > self._phys.page_count + 1:
            raise FormatError("more page-table pages than the dump holds", path=self.path,
                              field="page tables", expected="each table page present once")
        out = np.zeros((len(pas), 512), dtype=np.uint64)
        if inside.any():
            rows = (offs[inside] >> 3)[:, None] + np.arange(512)[None, :]
            out[inside] = self._all_u64()[rows]
        return out, ok

    def phys_view(self, pa: int, size: int) -> memoryview | None:
        """Zero-copy view of physical [pa, pa+size) when those pages sit contiguously in the file.

        None when they do not (absent page, run split across sections, cut-short file): use
        `read_phys`, which raises the precise error.
        """
        if size <= 0 or pa < 0:
            return None
        first, last = pa >> PAGE_SHIFT, (pa + size - 1) >> PAGE_SHIFT
        offs = self._phys.offsets_of(np.array([first, last], dtype=np.int64))
        start, end = int(offs[0]), int(offs[1])
        if start < 0 or end != start + ((last - first) << PAGE_SHIFT):
            return None
        start += pa & 0xFFF
        if start + size > self._size:
            return None
        if last > first:
            # contiguous ends do not prove a contiguous middle for bitmaps with gaps: check all
            mid = self._phys.offsets_of(np.arange(first, last + 1, dtype=np.int64))
            if not np.array_equal(mid, offs[0] + (np.arange(last - first + 1, dtype=np.int64) << PAGE_SHIFT)):
                return None
        return self._mv[start : start + size]

    def phys_page_frames(self) -> np.ndarray:
        """Every present physical frame number (pa >> 12), ascending, as one int64 array."""
        chunks = list(self._phys.present_pfn_chunks())
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)

    def phys_pages(self) -> Iterator[int]:
        """Every physical page address present in the dump, ascending."""
        for chunk in self._phys.present_pfn_chunks():
            yield from (chunk << PAGE_SHIFT).tolist()

    # ---- virtual memory --------------------------------------------------------------------
    @property
    def translator(self):
        if self._translator is None:
            self._translator = self._bootstrap_full_dump()
        return self._translator

    def translate(self, va: int) -> int:
        """Physical address of kernel virtual address `va` (whether or not its page is dumped)."""
        page = va >> PAGE_SHIFT
        hit = self._tcache.get(page)
        if hit is not None:
            return hit | (va & 0xFFF)
        pa = self._translate_uncached(va)
        if len(self._tcache) >= _TCACHE_MAX:
            self._tcache.clear()
        self._tcache[page] = pa & ~0xFFF
        return pa

    def _translate_uncached(self, va: int) -> int:
        try:
            return self.translator.translate(va)
        except AddressError as exc:
            if exc.path is not None:
                raise
            raise AddressError(exc.detail, address=va, path=self.path) from None

    def read(self, va: int, size: int) -> bytes:
        """`size` bytes of kernel virtual memory at `va`."""
        if size < 0:
            raise AddressError(f"negative read size {size}", address=va, path=self.path)
        po = va & 0xFFF
        if po + size <= PAGE_SIZE:
            off = self._vcache.get(va >> PAGE_SHIFT)
            if off is None:
                off = self._page_offset(self._translate_uncached(va), va)
                if len(self._vcache) >= _TCACHE_MAX:
                    self._vcache.clear()
                self._vcache[va >> PAGE_SHIFT] = off
            off += po
            end = off + size
            if end <= self._size:
                raw = self._raw
                return raw[off:end] if raw is not None else self._mv[off:end].tobytes()
            return self._file_bytes(off, size, self.translate(va), va)
        out = bytearray()
        while size > 0:
            n = min(size, PAGE_SIZE - (va & 0xFFF))
            pa = self.translate(va)
            out += self._file_bytes(self._page_offset(pa, va) + (va & 0xFFF), n, pa, va)
            va += n
            size -= n
        return bytes(out)

    def kernel_page_map(self, *, include_dmap: bool = False) -> PageMap:
        """Vectorised `kernel_pages()`: VA, PA and payload offset arrays of present pages."""
        in_file = min(self._phys.page_count, self._size // PAGE_SIZE)
        budget = MapBudget(pages=4 * in_file + (1 << 21), tables=in_file + 1)
        try:
            va, pa = self.translator.kernel_map(budget)
        except FormatError as exc:
            if exc.path is not None:
                raise
            raise FormatError(exc.detail, path=self.path, field=exc.field, expected=exc.expected) from None
        offs = self._phys.offsets_of((pa >> np.uint64(PAGE_SHIFT)).astype(np.int64))
        keep = offs >= 0
        va, pa, offs = va[keep], pa[keep], offs[keep]
        if include_dmap and self._dmap is not None:
            d = self._dmap
            parts = [(va, pa, offs)]
            for chunk in self._phys.present_pfn_chunks():
                chunk = chunk[(chunk << PAGE_SHIFT) >= d.phys]
                cpa = chunk.astype(np.uint64) << np.uint64(PAGE_SHIFT)
                cva = cpa - np.uint64(d.phys) + np.uint64(d.base)
                sel = cva < np.uint64(d.end)
                parts.append((cva[sel], cpa[sel], self._phys.offsets_of(chunk[sel])))
            va = np.concatenate([p[0] for p in parts])
            pa = np.concatenate([p[1] for p in parts])
            offs = np.concatenate([p[2] for p in parts])
            order = np.argsort(va, kind="stable")
            va, pa, offs = va[order], pa[order], offs[order]
        return PageMap(va, pa, offs)

    def kernel_pages(self, *, include_dmap: bool = False) -> Iterator[tuple[int, int]]:
        """(va, pa) of every 4 KiB kernel page present in the dump, large pages split, ascending va.

        The kernel map is what the dump's page tables map (minidump page-table section, or the
        kernel's page tables above VM_MIN_KERNEL_ADDRESS for full dumps). The direct map, which
        aliases every physical page, is left out unless `include_dmap` (libkvm's walk adds it).
        """
        m = self.kernel_page_map(include_dmap=include_dmap)
        step = 1 << 16
        # chained zips: the per-page work runs in C, Python only runs once per 64k pages
        return itertools.chain.from_iterable(
            zip(m.va[i : i + step].tolist(), m.pa[i : i + step].tolist(), strict=True)
            for i in range(0, len(m), step))

    def iter_kernel_page_data(self, *, include_dmap: bool = False,
                              as_bytes: bool = False) -> Iterator[tuple[int, int, memoryview | bytes]]:
        """(va, pa, 4 KiB page) for every present kernel page: the fast bulk path.

        Pages are zero-copy memoryviews, or `bytes` copies with `as_bytes`. Pages a cut-short file
        lacks raise `TruncatedError`, or read as zeros with zero_fill.
        """
        m = self.kernel_page_map(include_dmap=include_dmap)
        mv = (self._raw if self._raw is not None else _BytesSlicer(self._mv)) if as_bytes else self._mv
        step = 1 << 16
        return itertools.chain.from_iterable(
            self._page_data_chunk(m.va[i : i + step], m.pa[i : i + step], m.offset[i : i + step], mv,
                                  as_bytes)
            for i in range(0, len(m), step))

    def _page_data_chunk(self, va: np.ndarray, pa: np.ndarray, offs: np.ndarray, mv: Any, as_bytes: bool):
        if len(offs) and int(offs.max()) + PAGE_SIZE <= self._size:
            # all inside the file: slicing and zipping run in C, no per-page Python frame
            views = map(mv.__getitem__, map(slice, offs.tolist(), (offs + PAGE_SIZE).tolist()))
            return zip(va.tolist(), pa.tolist(), views, strict=True)
        return self._page_data_slow(va.tolist(), pa.tolist(), offs.tolist(), mv, as_bytes)

    def _page_data_slow(self, va: list, pa: list, offs: list, mv: Any, as_bytes: bool):
        for v, p, off in zip(va, pa, offs, strict=True):
            if off + PAGE_SIZE <= self._size:
                yield v, p, mv[off : off + PAGE_SIZE]
            else:
                data = self._file_bytes(off, PAGE_SIZE, p, v)   # TruncatedError unless zero_fill
                yield v, p, data if as_bytes else memoryview(data)

    def page_data(self, offset: int) -> memoryview:
        """Zero-copy view of the 4 KiB page at payload `offset` (from `kernel_page_map()`)."""
        if offset + PAGE_SIZE > self._size:
            raise TruncatedError("page lies past the end of the cut-short file", path=self.path,
                                 offset=offset, field="page data",
                                 expected=f"offset <= {self._size - PAGE_SIZE:#x}")
        return self._mv[offset : offset + PAGE_SIZE]

    # ---- symbols ---------------------------------------------------------------------------
    def _need_kernel(self, what: str) -> Kernel:
        if self.kernel is None:
            raise SymbolError(f"{what} needs the kernel's symbol table", path=self.path, field="kernel",
                              expected="open_vmcore(path, kernel=...) / --kernel PATH")
        return self.kernel

    def symbol(self, name: str) -> int:
        """Run-time address of kernel symbol `name` (local symbols included)."""
        return self._need_kernel(f"symbol {name!r}").lookup(name).address

    def read_symbol(self, name: str, size: int | None = None) -> bytes:
        sym = self._need_kernel(f"symbol {name!r}").lookup(name)
        return self.read(sym.address, sym.size if size is None else size)

    def read_int(self, va: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.read(va, size), "little", signed=signed)

    def read_pointer(self, va: int) -> int:
        return self.read_int(va, self.arch.pointer_size)

    def read_cstring(self, va: int, limit: int = 4096) -> str:
        out = bytearray()
        while len(out) < limit:
            n = min(limit - len(out), PAGE_SIZE - (va & 0xFFF))
            chunk = self.read(va, n)
            z = chunk.find(b"\0")
            if z >= 0:
                out += chunk[:z]
                break
            out += chunk
            va += n
        return out.decode("utf-8", "replace")

    # ---- full dumps: finding the kernel page tables ------------------------------------------
    def _bootstrap_full_dump(self):
        """Find the amd64 kernel PML4 in a full dump, wherever the loader put the kernel.

        libkvm reads `KPML4phys` at physical `&KPML4phys - kernbase`, which assumes the kernel
        was loaded at its link-time physical address. Since 13.1 the EFI loader can leave the
        kernel where it staged it (any 2 MiB-aligned address; freebsd-src PR #1706), and that
        read returns garbage. So: for every 2 MiB-aligned load shift d (d = 0 first), read the
        candidate `KPML4phys` value at `&KPML4phys - kernbase + d`; keep it only if it is a
        page-aligned PA present in the dump, and accept the first candidate whose page tables
        translate the virtual address `&KPML4phys` back to exactly the physical address it was
        read from. That self-consistency check cannot pass by accident for a wrong shift unless
        memory holds a second, self-referencing copy of the kernel's page tables.
        """
        kern = self._need_kernel("virtual address translation in a full dump")
        if self.arch.name != "amd64":
            raise FormatError(f"{self.arch.name} full dumps are not supported (only amd64)",
                              path=self.path, offset=18, field="e_machine", expected="62 (amd64)")
        kpml4 = kern.lookup("KPML4phys").address
        kbase = kern.lookup("kernbase").address
        cands = elfdump.amd64_root_candidates(kpml4, kbase, self._ed.phys, self._size)
        cands = cands[cands >= 0]
        offs = self._phys.offsets_of(cands >> PAGE_SHIFT)
        ok = (offs >= 0) & (offs + PAGE_SIZE <= self._size)
        cands, offs = cands[ok], offs[ok] + (cands[ok] & 0xFFF)
        if cands.size == 0:
            raise FormatError("no physical page can hold KPML4phys", path=self.path, field="KPML4phys",
                              expected="the kernel image inside the dumped physical memory")
        vals = self._all_u64()[offs >> 3] if kpml4 % 8 == 0 else np.array(
            [struct.unpack_from("<Q", self._buf, int(o))[0] for o in offs], dtype=np.uint64)
        plausible = (vals != 0) & ((vals & np.uint64(0xFFF)) == 0) & (vals < np.uint64(1 << 52))
        tried = 0
        for cand, root in zip(cands[plausible].tolist(), vals[plausible].tolist(), strict=True):
            if self._phys.offset_of(root >> PAGE_SHIFT) is None:
                continue
            tried += 1
            walk = RadixWalk(root, AMD64_LEVELS, _amd64_entry(), self._phys_u64, self._phys_pages_u64,
                             va_bits=48, kva_min=self.arch.full_dump_kva_min or 0)
            try:
                if walk.translate(kpml4) == cand:
                    self.load_offset = cand - (kpml4 - kbase)
                    self.kpml4phys = root
                    return walk
            except ReaderError:
                continue
        raise FormatError(f"no load address makes the kernel page tables map KPML4phys to itself "
                          f"({tried} candidate roots tried)", path=self.path, field="KPML4phys",
                          expected="the dump and kernel to belong together")

    # ---- higher level ----------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """Decoded header fields and kernel facts (version, hz, panic, ...), JSON-serialisable."""
        return build_info(self)

    def msgbuf(self) -> str:
        """The console log, oldest first (needs the kernel's `msgbufp` to know the write position)."""
        return read_msgbuf(self)

    def msgbuf_section(self) -> bytes:
        """A minidump's raw msgbuf section: the circular buffer as stored, write position unknown."""
        if self.format != "minidump":
            raise FormatError("full dumps have no msgbuf section", path=self.path, field="msgbuf",
                              expected="a minidump, or a kernel for msgbuf()")
        off = self._md.offsets["msgbuf"]
        return self._mv[off : off + self._md.header["msgbufsize"]].tobytes()

    def threads(self) -> list[Thread]:
        """Every thread in `allproc` with its saved registers; the dumping thread first."""
        return list_threads(self)


class _BytesSlicer:
    """`view[a:b]` as bytes, for payloads that are not a plain mmap."""

    def __init__(self, mv: memoryview):
        self._mv = mv

    def __getitem__(self, sl: slice) -> bytes:
        return self._mv[sl].tobytes()


def _underlying_mmap(buf: Any, mv: memoryview) -> mmap.mmap | None:
    """The mmap `buf` views from its first byte, if any (so slicing it directly is equivalent)."""
    raw = buf if isinstance(buf, mmap.mmap) else getattr(mv, "obj", None)
    if not isinstance(raw, mmap.mmap) or raw.closed or len(mv) == 0:
        return None
    if raw is buf:
        return raw
    try:
        a = np.frombuffer(mv, dtype=np.uint8, count=1).__array_interface__["data"][0]
        b = np.frombuffer(raw, dtype=np.uint8, count=1).__array_interface__["data"][0]
    except (ValueError, TypeError, BufferError):
        return None
    return raw if a == b and len(raw) >= len(mv) else None


def _amd64_entry():
    from .arch.amd64 import ENTRY

    return ENTRY


def _machine_number(m: Any) -> int:
    names = {"EM_X86_64": 62, "EM_386": 3, "EM_AARCH64": 183}
    return names.get(m, m) if isinstance(m, str) else m


def open_vmcore(path: str | os.PathLike, kernel: str | os.PathLike | None = None, *,
                zero_fill: bool = False, private_key: Any = None, force: bool = False) -> Vmcore:
    """Open a vmcore (any container `reader.source` understands); use as a context manager.

    With a kernel, the dump's `version` string / build-id is compared with the kernel file's and a
    proven mismatch raises `KernelMismatchError` unless `force=True` (see `Vmcore.kernel_match`).
    """
    return Vmcore(path, kernel, zero_fill=zero_fill, private_key=private_key, force=force)
