"""Bad input and faults at the run level: a --kernel that is not FreeBSD is refused before anything
boots (one line, step "kernel file"); a dump that did not complete fails its step as "dump incomplete"
(never "verified"), with the console tail kept as evidence; a smaller dump disk on request."""

from __future__ import annotations

import struct

import pytest

from harness.freebsd.ddb import DumpFailed, parse_dump_output
from harness.run import run_repro
from harness.run.config import ReproConfig, ReproError
from harness.run.context import RunContext
from harness.run.dump import incomplete_dump_fails
from harness.run.evidence import collect_on_failure
from harness.run.kernel_check import check_kernel_file
from harness.run.rundir import make_dump_disk


def _elf64(osabi: int, note: bytes = b"", machine: int = 62) -> bytes:
    """A minimal ELF64 header (+ one PT_NOTE program header when `note` is given)."""
    phnum = 1 if note else 0
    ehdr = b"\x7fELF" + bytes([2, 1, 1, osabi]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0xFFFFFFFF80200000, 64 if phnum else 0, 0, 0, 64,
                        56, phnum, 64, 0, 0)
    if not note:
        return ehdr
    return ehdr + struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(note), len(note), 4) + note


FREEBSD_NOTE = struct.pack("<III", 8, 4, 1) + b"FreeBSD\0" + struct.pack("<I", 1402000)


def test_a_kernel_that_is_not_freebsd_is_refused_in_one_line(tmp_path):
    linux = tmp_path / "vmlinux"
    linux.write_bytes(_elf64(0) + b"\0FreeBSD 14.2-RELEASE\0")  # the word alone proves nothing
    with pytest.raises(ReproError) as info:
        check_kernel_file(linux)
    assert info.value.step == "kernel file" and len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith(f"{linux}: not a FreeBSD kernel: no FreeBSD ABI tag note, OS/ABI 0")
    assert "--force-kernel" in str(info.value)
    assert check_kernel_file(linux, force=True).is_freebsd is False


def test_not_an_elf_file_and_other_architectures_are_refused(tmp_path):
    text = tmp_path / "kernel.txt"
    text.write_text("hello\n")
    with pytest.raises(ReproError, match=r"offset 0: not an ELF file .*expected 7f 45 4c 46"):
        check_kernel_file(text)
    assert check_kernel_file(text, force=True) is None
    arm = tmp_path / "arm64-kernel"
    arm.write_bytes(_elf64(0, FREEBSD_NOTE, machine=183))
    with pytest.raises(ReproError, match="a FreeBSD arm64 kernel .*the guest is amd64"):
        check_kernel_file(arm)


def test_a_derivative_with_the_freebsd_abi_note_passes(tmp_path):
    truenas = tmp_path / "truenas-kernel"
    truenas.write_bytes(_elf64(9, FREEBSD_NOTE) + b"\0TrueNAS 14.2-RELEASE\0")
    assert check_kernel_file(truenas).release == "14.2"


def test_run_repro_refuses_before_making_anything(tmp_path):
    linux = tmp_path / "vmlinux"
    linux.write_bytes(_elf64(0))
    artifacts = tmp_path / "artifacts"
    with pytest.raises(ReproError) as info:
        run_repro(ReproConfig(kernel=linux, artifacts=artifacts), progress=lambda _m: None)
    assert info.value.one_line().startswith("kernel file: ") and not artifacts.exists()


class _Guest:
    domain_xml = "<domain/>"

    class console:  # noqa: N801 - stands in for the guest's Console
        @staticmethod
        def tail(_n=0):
            return "whole console"

    @staticmethod
    def log_tail():
        return "qemu log"


def test_an_incomplete_dump_fails_its_step_as_dump_incomplete_and_keeps_the_tail(tmp_path):
    ctx = RunContext(ReproConfig(), tmp_path, progress=lambda _m: None)
    ctx.enter("dump")
    text = "dump\nDump failed. Partition too small (about 42MB were needed this time).\n"
    result = parse_dump_output(text)
    with pytest.raises(ReproError) as info, incomplete_dump_fails(ctx):
        raise DumpFailed(f"ddb dump failed: {result.error}", result, tail=text + "db> ")
    err = info.value
    assert err.one_line() == (
        "dump: dump incomplete: ddb dump failed: Dump failed. Partition too small (about 42MB were "
        f"needed this time). (evidence: {tmp_path})"
    )
    collect_on_failure(_Guest(), tmp_path, err)
    assert "Partition too small" in (tmp_path / "console-tail.txt").read_text()


def test_a_smaller_dump_disk_on_request(tmp_path):
    disk = make_dump_disk(tmp_path / "d.raw", 512, 8)
    assert disk.stat().st_size == 8 << 20
    assert make_dump_disk(tmp_path / "e.raw", 512).stat().st_size == 640 << 20


def test_a_failure_keeps_its_whole_message_in_error_txt(tmp_path):
    err = ReproError("kernel stayed silent\nlikely cause: GRUB\nevidence: boot.iso.json", step="boot")
    collect_on_failure(_Guest(), tmp_path, err)
    text = (tmp_path / "error.txt").read_text()
    assert text.startswith("boot: ReproError: kernel stayed silent\n")
    assert "likely cause: GRUB" in text and "evidence: boot.iso.json" in text
