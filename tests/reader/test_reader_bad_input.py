"""Malformed, truncated and hostile dumps: always a `ReaderError` naming file/offset/field.

Hand-written cases pin the messages; the hypothesis test mutates header fields, section sizes
and file length of a small valid dump of every format and requires that opening and using the
result either works or fails with a `ReaderError` — never another exception, never a hang.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reader
import reader.kernel
from tests.dumpwriter import (
    Mapping,
    ProcSpec,
    ThreadSpec,
    write_amd64_full_dump,
    write_amd64_minidump,
    write_arm64_minidump,
    write_i386_minidump,
    write_kernel_elf,
    write_threads_dump,
)

K2 = 0xFFFFFE0000000000


def _amd64(tmp_path, version=3, **kw):
    kb = K2 if version > 1 else 0xFFFFFFFF80000000
    return write_amd64_minidump(tmp_path / f"amd64v{version}", {0x1000: b"a", 0x2000: None, 0x3000: None},
                                [Mapping(kb, 0x1000), Mapping(kb + 0x1000, 0x2000),
                                 Mapping(kb + 0x2000, 0x3000)],
                                version=version, **kw)


def _patch(path: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    out = path.with_name(path.name + ".bad")
    out.write_bytes(raw)
    return out


def _open_err(path, exc_type=reader.ReaderError, **kw) -> reader.ReaderError:
    with pytest.raises(exc_type) as info, reader.open_vmcore(path, **kw):
        pass
    assert str(path) in str(info.value)
    return info.value


def test_empty_file(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    e = _open_err(p, reader.FormatError)
    assert e.offset == 0


def test_garbage_magic(tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"\x00junk" * 1000)
    e = _open_err(p, reader.FormatError)
    assert e.field == "magic"


def test_unknown_minidump_arch(tmp_path):
    spec = _amd64(tmp_path)
    e = _open_err(_patch(spec.path, 0, b"minidump FreeBSD/vax\0\0\0\0"), reader.FormatError)
    assert (e.offset, e.field) == (0, "magic") and "amd64" in str(e)


def test_unsupported_version(tmp_path):
    spec = _amd64(tmp_path)
    e = _open_err(_patch(spec.path, 24, struct.pack("<I", 99)), reader.FormatError)
    assert (e.offset, e.field) == (24, "version") and "1 or 2 or 3" in str(e)


def test_header_page_cut_short(tmp_path):
    spec = _amd64(tmp_path)
    p = tmp_path / "short"
    p.write_bytes(spec.path.read_bytes()[:100])
    _open_err(p, reader.TruncatedError)


@pytest.mark.parametrize(("field", "offset"), [("msgbufsize", 28), ("bitmapsize", 32), ("pmapsize", 36),
                                               ("dumpavailsize", 64)])
def test_section_size_past_end_of_file(tmp_path, field, offset):
    spec = _amd64(tmp_path)
    e = _open_err(_patch(spec.path, offset, struct.pack("<I", 0xFFFFF000)), reader.TruncatedError)
    assert e.field == field and e.offset == offset


def test_petabyte_of_ram_is_rejected_without_allocating(tmp_path):
    """dump_avail claims 1 PB of RAM; the bitmap (in the file) holds far fewer bits."""
    spec = _amd64(tmp_path)
    da = spec.offsets["dump_avail"]
    e = _open_err(_patch(spec.path, da, struct.pack("<2Q", 0, 1 << 50)), reader.FormatError)
    assert e.field == "bitmapsize" and "bits" in str(e)


def test_reversed_dump_avail(tmp_path):
    spec = _amd64(tmp_path)
    da = spec.offsets["dump_avail"]
    e = _open_err(_patch(spec.path, da, struct.pack("<2Q", 0x5000, 0x1000)), reader.FormatError)
    assert e.field == "dump_avail[0]" and e.offset == da


def test_overlapping_dump_avail(tmp_path):
    spec = _amd64(tmp_path)
    da = spec.offsets["dump_avail"]
    e = _open_err(_patch(spec.path, da, struct.pack("<4Q", 0, 0x10000, 0x8000, 0x20000)), reader.FormatError)
    assert e.field == "dump_avail[2]"


def test_arm64_16k_pages_rejected(tmp_path):
    spec = write_arm64_minidump(tmp_path / "a", {0x40000000: None}, [Mapping(0xFFFF000000000000, 0x40000000)],
                                version=3, dump_avail=[(0x40000000, 0x40100000)])
    e = _open_err(_patch(spec.path, 76, struct.pack("<I", 1)), reader.FormatError)
    assert e.field == "flags"


def test_truncated_data_pages_read_error_names_address(tmp_path):
    spec = _amd64(tmp_path, pt_pages_at=0)     # the PT page (PA 0) comes first in the data
    p = tmp_path / "cut"
    p.write_bytes(spec.path.read_bytes()[: spec.page_offsets[0x3000]])
    with reader.open_vmcore(p) as vm:
        assert vm.truncated
        assert vm.read(K2, 1) == b"a"
        with pytest.raises(reader.TruncatedError) as e:
            vm.read(K2 + 0x2000, 8)                   # -> PA 0x3000, cut off
        assert "0x3000" in str(e.value) and hex(K2 + 0x2000) in str(e.value)
    with reader.open_vmcore(p, zero_fill=True) as vm:
        assert vm.read(K2 + 0x2000, 8) == bytes(8)


def test_truncated_page_table_page_names_the_va(tmp_path):
    spec = _amd64(tmp_path)                    # PT page above the data pages: cut off with them
    p = tmp_path / "cut"
    p.write_bytes(spec.path.read_bytes()[: spec.offsets["data"] + 4096])
    with reader.open_vmcore(p) as vm, pytest.raises(reader.TruncatedError) as e:
        vm.read(K2, 8)
    assert hex(K2) in str(e.value) and str(p) in str(e.value)


def _elf(tmp_path):
    spec = write_amd64_full_dump(tmp_path / "full", {0x3000: b"x"}, [Mapping(K2, 0x3000)])
    return spec


@pytest.mark.parametrize(("offset", "data", "field"), [
    (4, b"\x07", "EI_CLASS"), (5, b"\x02", "EI_DATA"), (16, struct.pack("<H", 2), "e_type"),
    (18, struct.pack("<H", 40), "e_machine"), (54, struct.pack("<H", 20), "e_phentsize"),
    (56, struct.pack("<H", 0), "e_phnum"), (32, struct.pack("<Q", 1 << 40), "e_phoff/e_phnum"),
])
def test_bad_elf_header(tmp_path, offset, data, field):
    spec = _elf(tmp_path)
    e = _open_err(_patch(spec.path, offset, data))
    assert e.field == field


def test_elf_segment_unaligned_and_past_end(tmp_path):
    spec = _elf(tmp_path)
    e = _open_err(_patch(spec.path, 64 + 8, struct.pack("<Q", 0x1001)), reader.FormatError)
    assert e.field == "phdr[0]"
    e = _open_err(_patch(spec.path, 64 + 8, struct.pack("<Q", 1 << 40)), reader.TruncatedError)
    assert e.field == "phdr[0].p_offset"


def test_elf_overlapping_segments(tmp_path):
    spec = _elf(tmp_path)
    raw = bytearray(spec.path.read_bytes())
    raw[56:58] = struct.pack("<H", 2)
    raw[120:176] = raw[64:120]            # a second PT_LOAD identical to the first
    p = tmp_path / "overlap"
    p.write_bytes(raw)
    e = _open_err(p, reader.FormatError)
    assert "overlap" in str(e)


def test_kernel_that_is_not_elf(tmp_path):
    spec = _amd64(tmp_path)
    k = tmp_path / "kernel"
    k.write_bytes(b"not an elf at all" * 10)
    with pytest.raises(reader.FormatError) as e:
        reader.open_vmcore(spec.path, k)
    assert str(k) in str(e.value)


def test_missing_symbol(tmp_path):
    spec = _amd64(tmp_path)
    k = write_kernel_elf(tmp_path / "kernel", {"kernbase": (0xFFFFFFFF80000000, 0, False)})
    with reader.open_vmcore(spec.path, k) as vm, pytest.raises(reader.SymbolError) as e:
        vm.symbol("hz")
    assert "hz" in str(e.value)


def test_looping_allproc_list_is_detected(tmp_path):
    """A proc whose p_list points back at itself: the walk ends in FormatError, not a hang."""
    base = K2
    proc = struct.pack("<Q", base) + bytes(0x10 - 8) + struct.pack("<Q", 0)  # p_list -> itself; no threads
    proc = proc.ljust(0x100, b"\0")
    offsets = {"proc_off_p_pid": 0x20, "proc_off_p_comm": 0x30, "proc_off_p_list": 0,
               "proc_off_p_threads": 0x10, "thread_off_td_tid": 0, "thread_off_td_name": 8,
               "thread_off_td_oncpu": 0x20, "thread_off_td_pcb": 0x28, "thread_off_td_plist": 0x30}
    consts = b"".join(struct.pack("<i", v) for v in offsets.values()) + struct.pack("<ii", 0, 320)
    page2 = struct.pack("<Q", base) + consts
    spec = write_amd64_minidump(tmp_path / "loop", {0x1000: proc, 0x2000: page2},
                                [Mapping(base, 0x1000), Mapping(base + 0x1000, 0x2000)])
    syms = {"kernbase": (0xFFFFFFFF80000000, 0, False), "allproc": (base + 0x1000, 8, False),
            "dumptid": (base + 0x1000 + 8 + 4 * 9, 4, False), "dumppcb": (base + 0x800, 320, True),
            "pcb_size": (base + 0x1000 + 8 + 4 * 10, 4, False)}
    syms.update({n: (base + 0x1000 + 8 + 4 * i, 4, False) for i, n in enumerate(offsets)})
    k = write_kernel_elf(tmp_path / "kernel", syms)
    with reader.open_vmcore(spec.path, k) as vm, pytest.raises(reader.FormatError) as e:
        vm.threads()
    assert "loops" in str(e.value)


# ---- hypothesis: mutate every format --------------------------------------------------------

_TEMPLATES: dict[str, tuple[bytes, bytes | None, list[int]]] = {}


def _templates() -> dict[str, tuple[bytes, bytes | None, list[int]]]:
    """name -> (dump bytes, kernel bytes or None, interesting header/phdr offsets)."""
    if _TEMPLATES:
        return _TEMPLATES
    with tempfile.TemporaryDirectory() as d:
        t = Path(d)
        pages = {0x1000: None, 0x2000: None, 0x200000: None}
        for v in (1, 2, 3):
            kb = 0xFFFFFFFF80000000 if v == 1 else K2
            maps = [Mapping(kb, 0x1000), Mapping(kb + 0x200000, 0x200000, 2 << 20)]
            s = write_amd64_minidump(t / f"a{v}", pages, maps, version=v)
            _TEMPLATES[f"amd64-v{v}"] = (s.path.read_bytes(), None, [24, 28, 32, 36, 40, 48, 56, 64])
        for v, pae in itertools.product((1, 2), (True, False)):
            s = write_i386_minidump(t / f"i{v}{pae}", pages, [Mapping(0x800000, 0x1000)], version=v, pae=pae)
            _TEMPLATES[f"i386-v{v}-{'pae' if pae else 'nopae'}"] = (s.path.read_bytes(), None,
                                                                   [24, 28, 32, 36, 40, 44, 48])
        for v in (1, 2, 3):
            s = write_arm64_minidump(t / f"r{v}", {0x40000000: None, 0x40001000: None},
                                     [Mapping(0xFFFF000000000000, 0x40000000)], version=v,
                                     dump_avail=[(0x40000000, 0x40100000)] if v > 1 else None)
            _TEMPLATES[f"arm64-v{v}"] = (s.path.read_bytes(), None, [24, 28, 32, 36, 40, 48, 56, 64, 72, 76])
        s = write_amd64_full_dump(t / "full", {0x3000: None}, [Mapping(K2, 0x3000)], load_offset=0x200000)
        k = write_kernel_elf(t / "kernel", s.symbols)
        _TEMPLATES["amd64-full"] = (s.path.read_bytes(), k.read_bytes(),
                                    [4, 5, 16, 18, 32, 54, 56, 64, 68, 72, 80, 88, 96, 104])
        for arch in ("amd64", "arm64"):
            sub = t / f"threads-{arch}"
            sub.mkdir()
            procs = [ProcSpec(0, "kernel", [ThreadSpec(100000, "swapper", [1] * 13),
                                            ThreadSpec(100001, "k2", [2] * 13, oncpu=1)]),
                     ProcSpec(7, "sysctl", [ThreadSpec(100100, "sysctl", [3] * 13, crashed=True)])]
            v, k = write_threads_dump(sub, procs, arch=arch, msgbuf=(b"hello\n" * 50, 1000))
            _TEMPLATES[f"{arch}-threads"] = (v.read_bytes(), k.read_bytes(), [24, 28, 32, 36, 40, 64])
    return _TEMPLATES


_INTERESTING = [0, 1, 2, 3, 7, 0xFFF, 0x1000, 0x1001, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40,
                (1 << 63), (1 << 64) - 1]


@st.composite
def _mutation(draw):
    name = draw(st.sampled_from(sorted(_templates())))
    data, kernel, offsets = _templates()[name]
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "byte", "truncate", "section"]))
        if kind == "field":
            off = draw(st.sampled_from(offsets))
            width = draw(st.sampled_from([1, 2, 4, 8]))
            val = draw(st.one_of(st.sampled_from(_INTERESTING), st.integers(0, (1 << 64) - 1)))
            raw[off : off + width] = (val % (1 << (8 * width))).to_bytes(width, "little")
        elif kind == "byte" and raw:
            off = draw(st.integers(0, len(raw) - 1))
            raw[off] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del raw[draw(st.integers(0, len(raw))):]
        elif kind == "section" and len(raw) >= 8192:  # smash a word in a section or data page
            page = draw(st.integers(1, len(raw) // 4096 - 1))
            at = page * 4096 + draw(st.integers(0, 4088))
            raw[at : at + 8] = draw(st.sampled_from(_INTERESTING)).to_bytes(8, "little")
    return name, bytes(raw), kernel


def _exercise(vm: reader.Vmcore) -> None:
    vm.info  # noqa: B018
    for _ in itertools.islice(vm.phys_pages(), 64):
        pass
    pages = list(itertools.islice(vm.kernel_pages(), 64))
    for va, pa in pages[:8]:
        vm.read(va, 8)
        vm.read_phys(pa, 8)
    if vm.kernel is not None:
        for call in (vm.threads, vm.msgbuf):
            with contextlib.suppress(reader.ReaderError):
                call()
    for va in (K2, 0xFFFFFFFF80000000, 0x800000, 0xFFFF000000000000):
        with contextlib.suppress(reader.ReaderError):
            vm.read(va, 16)


@settings(max_examples=int(os.environ.get("FBSD_HIL_MUTATIONS", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_mutation(), st.booleans())
def test_mutated_dumps_fail_cleanly(tmp_path, case, zero_fill):
    name, raw, kernel = case
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        p = Path(d) / f"vmcore-{name}"
        p.write_bytes(raw)
        kpath = None
        if kernel is not None:
            kpath = Path(d) / "kernel"
            kpath.write_bytes(kernel)
        try:
            with reader.open_vmcore(p, kpath, zero_fill=zero_fill) as vm:
                _exercise(vm)
        except reader.ReaderError as exc:
            assert str(p) in str(exc) or (kpath is not None and str(kpath) in str(exc)), str(exc)


@settings(max_examples=int(os.environ.get("FBSD_HIL_MUTATIONS", "150")) // 2, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_kernels_fail_cleanly(tmp_path, data):
    _, kernel, _ = _templates()["amd64-full"]
    raw = bytearray(kernel)
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw))):]
    for _ in range(data.draw(st.integers(0, 4))):
        if raw:
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        k = Path(d) / "kernel"
        k.write_bytes(raw)
        try:
            kern = reader.kernel.Kernel(k)
            for name in ("kernbase", "KPML4phys"):
                kern.get(name)
        except reader.ReaderError as exc:
            assert str(k) in str(exc)
