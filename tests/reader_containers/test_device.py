"""Dump devices built from the real LLDB vmcores exactly as a 12.x+ kernel lays them out, and as 11.x did.

The FreeBSD 12.1 transcripts (shared/transcripts/freebsd-12.1-amd64) dump to a blank 1 GiB raw
disk (`dumpdev=/dev/vtbd1`, 512-byte sectors); the main images here are the same shape.
"""

from __future__ import annotations

import filecmp
import os
import struct
from pathlib import Path

import pytest

from reader import device, source
from reader.device import ClearedDumpError, ExtractError, NoDumpError
from reader.errors import FormatError, ReaderError, TruncatedError
from tests.dumpwriter import containers as cw

GiB = 1 << 30
ALL = ("vmcore-amd64-minidump", "vmcore-amd64-full", "vmcore-i386-minidump", "vmcore-arm64-minidump")
ARCH = {
    "vmcore-amd64-minidump": ("amd64", 2),
    "vmcore-amd64-full": ("amd64", 2),
    "vmcore-i386-minidump": ("i386", 2),
    "vmcore-arm64-minidump": ("aarch64", 1),
}


def _image(tmp_path: Path, vmcore: Path, name: str = "dump.img", **kw) -> tuple[Path, cw.DeviceLayout]:
    img = tmp_path / name
    return img, cw.write_device_image(img, vmcore, **kw)


def _same_bytes(a: Path, b: Path) -> bool:
    return filecmp.cmp(a, b, shallow=False)


@pytest.mark.parametrize("name", ALL)
def test_v4_extract_byte_for_byte_from_1gib_disk(tmp_path: Path, lldb_vmcores, name: str) -> None:
    vmcore = lldb_vmcores[name]
    arch, archver = ARCH[name]
    img, lay = _image(
        tmp_path, vmcore, media_size=GiB, architecture=arch, architectureversion=archver, panicstring="test"
    )
    dd = device.find_dump(img)
    size = vmcore.stat().st_size
    assert (dd.media_size, dd.sector_size, dd.trailer_offset) == (GiB, 512, GiB - 512)
    assert dd.payload_offset == GiB - 512 - size == lay.payload
    assert dd.leader_offset == lay.leader and dd.payload_length == size and dd.key_size == 0
    assert dd.header.architecture == arch and dd.header.panicstring == "test"

    out = tmp_path / "crash"
    res = device.extract(img, out)
    assert res.number == 0 and res.vmcore == out / "vmcore.0" and res.key is None
    assert _same_bytes(res.vmcore, vmcore)
    # savecore writes uncompressed cores sparse: the fixtures are mostly zero pages
    assert res.vmcore.stat().st_blocks * 512 < size // 4
    assert (out / "bounds").read_text() == "1\n"
    info = res.info.read_text()
    assert info.startswith(f"Dump header from device: {img}\n  Architecture: {arch}\n")
    assert f"  Dump Length: {size}\n" in info and "  Dump Status: good\n" in info
    assert os.readlink(out / "vmcore.last") == "vmcore.0" and os.readlink(out / "info.last") == "info.0"

    with source.open_payload(img) as p:
        assert p.container == "device" and p.header["dumplength"] == size
        assert len(p.buffer) == size
        with open(vmcore, "rb") as f:
            assert bytes(p.buffer[:8192]) == f.read(8192)
            f.seek(size - 4096)
            assert bytes(p.buffer[size - 4096 :]) == f.read()


def test_second_extract_takes_next_number_and_overwrites_nothing(tmp_path: Path, lldb_vmcores) -> None:
    img, _ = _image(tmp_path, lldb_vmcores["vmcore-i386-minidump"], architecture="i386")
    out = tmp_path / "crash"
    first = device.extract(img, out)
    second = device.extract(img, out)
    assert (first.number, second.number) == (0, 1)
    assert _same_bytes(first.vmcore, second.vmcore)
    assert (out / "bounds").read_text() == "2\n"
    assert os.readlink(out / "vmcore.last") == "vmcore.1"


@pytest.mark.parametrize("existing", ["vmcore.0", "info.0"])
def test_never_overwrites_an_existing_file(tmp_path: Path, lldb_vmcores, existing: str) -> None:
    img, _ = _image(tmp_path, lldb_vmcores["vmcore-i386-minidump"])
    out = tmp_path / "crash"
    out.mkdir()
    (out / existing).write_text("user data\n")
    with pytest.raises(ExtractError) as e:
        device.extract(img, out)
    assert existing in str(e.value)
    assert (out / existing).read_text() == "user data\n"
    assert sorted(p.name for p in out.iterdir()) == [existing]  # nothing written at all


def test_v1_placement_as_11x_kernels_wrote_it(tmp_path: Path, lldb_vmcores) -> None:
    vmcore = lldb_vmcores["vmcore-amd64-minidump"]
    size = vmcore.stat().st_size
    img, lay = _image(tmp_path, vmcore, version=1, media_size=GiB)
    dd = device.find_dump(img)
    assert dd.header.version == 1 and dd.leader_offset == GiB - size - 1024 == lay.leader
    assert dd.payload_offset == GiB - size - 512
    res = device.extract(img, tmp_path / "out")
    assert _same_bytes(res.vmcore, vmcore)
    assert "  Compression: none\n" in res.info.read_text()


@pytest.mark.parametrize("version", [2, 3])
def test_v2_v3_headers_place_like_v4(tmp_path: Path, lldb_vmcores, version: int) -> None:
    vmcore = lldb_vmcores["vmcore-arm64-minidump"]
    img, lay = _image(tmp_path, vmcore, version=version, architecture="aarch64", architectureversion=1)
    dd = device.find_dump(img)
    assert dd.header.version == version and dd.payload_offset == lay.payload
    with source.open_payload(img) as p:
        assert bytes(p.buffer[:22]) == b"minidump FreeBSD/arm64"


def test_4096_byte_sectors(tmp_path: Path, lldb_vmcores) -> None:
    vmcore = lldb_vmcores["vmcore-i386-minidump"]
    img, lay = _image(tmp_path, vmcore, sector=4096)
    dd = device.find_dump(img)
    assert dd.sector_size == 4096 and dd.trailer_offset == lay.media_size - 4096
    assert dd.leader_offset == lay.leader
    res = device.extract(img, tmp_path / "out")
    assert _same_bytes(res.vmcore, vmcore)
    with pytest.raises(NoDumpError):
        device.find_dump(img, sector_size=512)


def _patch(img: Path, offset: int, data: bytes) -> None:
    with open(img, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_parity_error_names_file_offset_and_field(tmp_path: Path, lldb_vmcores) -> None:
    img, lay = _image(tmp_path, lldb_vmcores["vmcore-i386-minidump"])
    _patch(img, lay.trailer + 100, b"X")  # a hostname byte, parity left stale
    with pytest.raises(FormatError) as e:
        device.find_dump(img)
    assert e.value.field == "parity" and e.value.offset == lay.trailer + 508
    assert str(img) in str(e.value) and "parity" in str(e.value)


def test_leader_trailer_mismatch(tmp_path: Path, lldb_vmcores) -> None:
    vmcore = lldb_vmcores["vmcore-i386-minidump"]
    img, lay = _image(tmp_path, vmcore)
    other = cw.kernel_header(dumplength=vmcore.stat().st_size, dumptime=1)  # valid parity, other time
    _patch(img, lay.leader, other)
    with pytest.raises(FormatError) as e:
        device.find_dump(img)
    assert "disagree" in str(e.value) and e.value.field == "dumptime" and e.value.offset == lay.leader
    with pytest.raises(FormatError):
        device.extract(img, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_truncated_device_image(tmp_path: Path, lldb_vmcores) -> None:
    vmcore = lldb_vmcores["vmcore-amd64-minidump"]
    img, lay = _image(tmp_path, vmcore, media_size=GiB)
    # a copy of only the last 64 MiB of the device: the trailer is there, the leader is not
    cut = tmp_path / "tail.img"
    with open(img, "rb") as f, open(cut, "wb") as g:
        f.seek(GiB - (64 << 20))
        g.write(f.read())
    with pytest.raises(TruncatedError) as e:
        device.find_dump(cut)
    assert e.value.field == "dumpextent" and str(cut) in str(e.value)
    # a copy that lost its tail: no trailer at all
    head = tmp_path / "head.img"
    with open(img, "rb") as f, open(head, "wb") as g:
        g.write(f.read(GiB // 2))
    with pytest.raises(NoDumpError):
        device.find_dump(head)


@pytest.mark.parametrize("size", [0, 1, 100, 511])
def test_tiny_device(tmp_path: Path, size: int) -> None:
    img = tmp_path / "tiny.img"
    img.write_bytes(b"\xff" * size)
    with pytest.raises(NoDumpError) as e:
        device.find_dump(img)
    assert "too small" in str(e.value) and str(img) in str(e.value)
    with pytest.raises(ReaderError):
        source.open_payload(img)


def test_device_with_only_a_header(tmp_path: Path) -> None:
    img = tmp_path / "hdr.img"
    img.write_bytes(cw.kernel_header(dumplength=4096))
    with pytest.raises(TruncatedError):
        device.find_dump(img)


def test_blank_disk_says_no_dump(tmp_path: Path) -> None:
    img = tmp_path / "blank.img"
    with open(img, "wb") as f:
        f.truncate(GiB)
    with pytest.raises(NoDumpError) as e:
        device.find_dump(img)
    assert "no kernel dump" in str(e.value) and e.value.offset == GiB - 512


def test_cleared_dump(tmp_path: Path, lldb_vmcores) -> None:
    vmcore = lldb_vmcores["vmcore-i386-minidump"]
    img, lay = _image(tmp_path, vmcore)
    # savecore (without -k) overwrites only the trailer's magic, parity untouched
    _patch(img, lay.trailer, cw.KERNELDUMPMAGIC_CLEARED.ljust(20, b"\0"))
    with pytest.raises(ClearedDumpError) as e:
        device.find_dump(img)
    assert "already saved/cleared" in str(e.value) and e.value.offset == lay.trailer
    with pytest.raises(ClearedDumpError):
        source.open_payload(img)
    # savecore -f semantics: the data is still there
    dd = device.find_dump(img, force=True)
    assert dd.forced
    res = device.extract(img, tmp_path / "out", force=True)
    assert _same_bytes(res.vmcore, vmcore)


@pytest.mark.parametrize(
    ("field_offset", "value", "field"),
    [
        (495, b"\x07", "compression"),
        (56, struct.pack(">I", 1 << 20), "dumpkeysize"),
        (40, struct.pack(">Q", 1 << 62), "dumplength"),
        (40, struct.pack(">Q", 0), "dumplength"),
    ],
)
def test_bad_header_fields(tmp_path: Path, lldb_vmcores, field_offset: int, value: bytes, field: str) -> None:
    vmcore = lldb_vmcores["vmcore-i386-minidump"]
    img, lay = _image(tmp_path, vmcore)
    for where in (lay.leader, lay.trailer):
        raw = bytearray(lay.header)
        raw[field_offset : field_offset + len(value)] = value
        raw[508:] = b"\0\0\0\0"
        raw[508:] = struct.pack("<I", cw.parity(bytes(raw)))
        _patch(img, where, bytes(raw))
    with pytest.raises(FormatError) as e:
        device.find_dump(img)
    assert e.value.field == field and str(img) in str(e.value)


def test_extract_into_unwritable_place(tmp_path: Path, lldb_vmcores) -> None:
    img, _ = _image(tmp_path, lldb_vmcores["vmcore-i386-minidump"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReaderError):
        device.extract(img, blocker / "sub")


@pytest.mark.parametrize(
    ("name", "kernel", "hz"),
    [
        ("vmcore-amd64-minidump", "amd64", 100),
        ("vmcore-amd64-full", "amd64", 100),
        ("vmcore-i386-minidump", "i386", 100),
        ("vmcore-arm64-minidump", "arm64", 1000),
    ],
)
def test_open_vmcore_reads_through_the_device_container(
    tmp_path: Path, lldb_vmcores, lldb_kernels, name: str, kernel: str, hz: int
) -> None:
    """End to end: reader.open_vmcore on a raw dump disk finds the payload and reads `hz` from it."""
    import reader

    arch, archver = ARCH[name]
    img, _ = _image(
        tmp_path, lldb_vmcores[name], media_size=GiB, architecture=arch, architectureversion=archver
    )
    with reader.open_vmcore(img, lldb_kernels[kernel], zero_fill=True) as vm:
        assert int.from_bytes(vm.read(vm.symbol("hz"), 4), "little") == hz


def _gpt_disk(tmp_path: Path, size: int = 256 << 20) -> tuple[Path, int, int]:
    """A whole system disk as a FreeBSD installer lays it out: freebsd-boot, freebsd-swap, freebsd-ufs."""
    disk = tmp_path / "system.img"
    swap_first, swap_last = 2048, 2048 + (128 << 20) // 512 - 1
    cw.write_gpt(
        disk,
        size,
        [
            (cw.FREEBSD_BOOT, 40, 1063, "gptboot0"),
            (cw.FREEBSD_SWAP, swap_first, swap_last, "swap0"),
            (cw.FREEBSD_UFS, swap_last + 1, size // 512 - 34, "rootfs0"),
        ],
    )
    return disk, swap_first * 512, (swap_last + 1 - swap_first) * 512


def test_dump_in_the_swap_partition_of_a_gpt_disk(tmp_path: Path, lldb_vmcores) -> None:
    vmcore = lldb_vmcores["vmcore-i386-minidump"]
    disk, swap_off, swap_size = _gpt_disk(tmp_path)
    lay = cw.write_device_image(
        disk, vmcore, media_size=swap_size, media_offset=swap_off, architecture="i386"
    )
    parts = device.partitions(disk)
    assert [(p.index, p.kind, p.name) for p in parts] == [
        (1, "freebsd-boot", "gptboot0"),
        (2, "freebsd-swap", "swap0"),
        (3, "freebsd-ufs", "rootfs0"),
    ]
    assert (parts[1].offset, parts[1].size) == (swap_off, swap_size)
    dd = device.find_dump(disk)
    assert dd.partition == parts[1] and dd.media_offset == swap_off and dd.media_size == swap_size
    assert dd.payload_offset == swap_off + lay.payload and dd.trailer_offset == swap_off + swap_size - 512
    assert device.find_dump(disk, partition=2) == dd
    with pytest.raises(NoDumpError) as e:
        device.find_dump(disk, partition=3)
    assert "no kernel dump" in str(e.value)
    with pytest.raises(NoDumpError) as e:
        device.find_dump(disk, partition=7)
    assert "no partition 7" in str(e.value)
    assert source.detect(disk) == "device"
    with source.open_payload(disk) as p:
        assert bytes(p.buffer[:21]) == b"minidump FreeBSD/i386"
    res = device.extract(disk, tmp_path / "crash")
    assert _same_bytes(res.vmcore, vmcore)
    assert "(partition 2)" in res.info.read_text().splitlines()[0]


def test_gpt_disk_without_a_dump_names_what_it_searched(tmp_path: Path) -> None:
    disk, _, _ = _gpt_disk(tmp_path)
    with pytest.raises(NoDumpError) as e:
        device.find_dump(disk)
    assert "p2 freebsd-swap" in str(e.value) and "3 partitions" in str(e.value)
    # a corrupt primary GPT (header CRC) is replaced by the backup, as GEOM's g_part_gpt does
    with open(disk, "r+b") as f:
        f.seek(512 + 40)
        f.write(b"\xff")
    assert [p.kind for p in device.partitions(disk)] == ["freebsd-boot", "freebsd-swap", "freebsd-ufs"]
    # both corrupt: not trusted at all, no partitions, plain "no dump"
    with open(disk, "r+b") as f:
        f.seek(disk.stat().st_size - 512 + 40)
        f.write(b"\xff")
    assert device.partitions(disk) == []


def test_copy_from_a_device_that_ends_early(tmp_path: Path, lldb_vmcores) -> None:
    """A short read (a block device smaller than its header says) is a TruncatedError naming the device."""
    vmcore = lldb_vmcores["vmcore-i386-minidump"]
    img, lay = _image(tmp_path, vmcore)
    dd = device.find_dump(img)
    out = tmp_path / "crash"
    out.mkdir()
    fd = os.open(out / "vmcore.x", os.O_WRONLY | os.O_CREAT)
    try:
        src = os.open(img, os.O_RDONLY)
        with pytest.raises(TruncatedError) as e:
            device.copy_range_sparse(src, dd.payload_offset, lay.media_size, fd, sparse=True, src_path=img)
        os.close(src)
    finally:
        os.close(fd)
    assert e.value.field == "dumplength" and str(img) in str(e.value)


def test_failed_write_leaves_no_partial_vmcore(tmp_path: Path, lldb_vmcores) -> None:
    """A real write failure (RLIMIT_FSIZE -> EFBIG, like a full disk) -> ExtractError, no half vmcore.N."""
    import subprocess
    import sys

    img, _ = _image(tmp_path, lldb_vmcores["vmcore-i386-minidump"])
    out = tmp_path / "crash"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))\n"
        "from reader import device\n"
        "try:\n"
        f"    device.extract({str(img)!r}, {str(out)!r})\n"
        "except device.ExtractError as e:\n"
        "    print('ExtractError', e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ExtractError") and "vmcore.0" in r.stdout
    assert not (out / "vmcore.0").exists() and (out / "info.0").exists()


TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "transcripts" / "freebsd-12.1-amd64"


def test_full_dump_sized_as_the_real_12_1_guest_wrote_it(tmp_path: Path, lldb_vmcores) -> None:
    """The 12.1 transcript's dump disk and full-dump size, laid out as dump_start() places them.

    `full.serial.log`: "vtblk1: 1024MB (2097152 512 byte sectors)" and "Dumping 511 MB (2 chunks)"
    with chunk page counts; a full dump is one page of ELF headers (kern_dump.c, as in the LLDB
    fixture: first PT_LOAD at 0x1000) plus those pages.
    """
    import re

    log = (TRANSCRIPTS / "full.serial.log").read_text(errors="replace")
    sectors, sector = map(int, re.search(r"vtblk1: \d+MB \((\d+) (\d+) byte sectors\)", log).groups())
    pages = sum(int(n) for n in re.findall(r"chunk \d+: \d+MB \((\d+) pages\)", log))
    assert (sectors * sector, sector, pages) == (GiB, 512, 130934)
    size = 4096 + pages * 4096
    payload = tmp_path / "payload"
    with open(lldb_vmcores["vmcore-amd64-full"], "rb") as src, open(payload, "wb") as f:
        f.truncate(size)
        f.write(src.read(4096))  # the real ELF headers page
    img, lay = _image(
        tmp_path, payload, media_size=sectors * sector, versionstring="FreeBSD 12.1-STABLE DUMPTEST amd64\n"
    )
    dd = device.find_dump(img)
    assert dd.payload_length == size and dd.payload_offset == GiB - 512 - size
    assert dd.leader_offset >= 64 * 1024  # SIZEOF_METADATA is never touched
    assert dd.header.versionstring == "FreeBSD 12.1-STABLE DUMPTEST amd64\n"
    with source.open_payload(img) as p:
        assert len(p.buffer) == size and bytes(p.buffer[:4]) == b"\x7fELF"
    res = device.extract(img, tmp_path / "crash")
    assert res.vmcore.stat().st_size == size and res.vmcore.stat().st_blocks * 512 <= 64 * 1024


def test_cli_extract_from_the_swap_partition_by_type(tmp_path: Path, lldb_vmcores, capsys) -> None:
    """`fbsd-vmcore extract --partition freebsd-swap DISK`: the partition found by its GPT type; a type
    the table does not hold, and a disk without a table, are one line each (exit 2)."""
    from reader.cli import main

    vmcore = lldb_vmcores["vmcore-i386-minidump"]
    disk, swap_off, swap_size = _gpt_disk(tmp_path)
    cw.write_device_image(disk, vmcore, media_size=swap_size, media_offset=swap_off, architecture="i386")
    assert main(["extract", "--partition", "freebsd-swap", str(disk), "-o", str(tmp_path / "a")]) == 0
    assert _same_bytes(tmp_path / "a" / "vmcore.0", vmcore)
    assert "(partition 2)" in (tmp_path / "a" / "info.0").read_text().splitlines()[0]
    assert main(["extract", "--partition", "2", str(disk), "-o", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["extract", "--partition", "linux-swap", str(disk), "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no linux-swap partition" in err and "p2 freebsd-swap" in err
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(1 << 20))
    assert main(["extract", "--partition", "freebsd-swap", str(blank), "-o", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no GUID partition table" in err and "offset 0x200" in err
