"""A kernel that did not write the dump is detected (issue 12 item 8), not read into nonsense."""

from __future__ import annotations

import pytest

import reader
from reader.cli import main
from reader.errors import KernelMismatchError
from tests.dumpwriter import Mapping, write_amd64_minidump
from tests.reader.kernel_elf import write_elf

K2 = 0xFFFFFE0000000000
VERSION = b"FreeBSD 12.1-RELEASE r354233 GENERIC  amd64\n"
OTHER = VERSION.replace(b"GENERIC", b"MYKERNL")


def _dump_and_kernels(tmp_path, dump_version: bytes = VERSION):
    page = bytearray(4096)
    page[0x100 : 0x100 + len(dump_version)] = dump_version
    page[0x800:0x804] = (100).to_bytes(4, "little")
    vmcore = write_amd64_minidump(tmp_path / "vmcore", {0x1000: bytes(page)}, [Mapping(K2, 0x1000)]).path

    def kernel(name: str, version: bytes):
        data = bytearray(4096)
        data[0x100 : 0x100 + len(version) + 1] = version + b"\0"
        data[0x800:0x804] = (100).to_bytes(4, "little")
        return write_elf(tmp_path / name, [(".data", K2, bytes(data), False)],
                         [("version", K2 + 0x100, len(version) + 1, "object"),
                          ("hz", K2 + 0x800, 4, "object")])

    return vmcore, kernel("kernel.right", VERSION), kernel("kernel.wrong", OTHER)


def test_matching_kernel_is_accepted_and_says_so(tmp_path):
    vmcore, right, _ = _dump_and_kernels(tmp_path)
    with reader.open_vmcore(vmcore, right) as vm:
        assert vm.kernel_match.status == "match"
        assert vm.read_int(vm.symbol("hz"), 4) == 100
        assert vm.info["kernel_match"]["status"] == "match"


def test_wrong_kernel_is_refused_in_the_api(tmp_path):
    vmcore, _, wrong = _dump_and_kernels(tmp_path)
    with pytest.raises(KernelMismatchError) as exc:
        reader.open_vmcore(vmcore, wrong)
    msg = str(exc.value)
    assert str(vmcore) in msg and str(wrong) in msg and "GENERIC" in msg and "MYKERNL" in msg
    with reader.open_vmcore(vmcore, wrong, force=True) as vm:
        assert vm.kernel_match.mismatch


def test_wrong_kernel_is_refused_by_the_cli_in_one_line(tmp_path, capsys):
    vmcore, _, wrong = _dump_and_kernels(tmp_path)
    rc = main(["--kernel", str(wrong), "info", str(vmcore)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "do not belong together" in err and str(wrong) in err and "--force" in err
    rc = main(["--kernel", str(wrong), "--force", "info", str(vmcore)])
    out, _ = capsys.readouterr()
    assert rc == 0 and "status: mismatch" in out


def test_symbol_only_kernels_cannot_be_checked_and_say_unknown(lldb_paths):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        assert vm.kernel_match.status == "unknown"
        assert "symbols only" in vm.kernel_match.evidence
