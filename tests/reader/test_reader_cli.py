"""`fbsd-vmcore` / `python -m reader` on real and synthetic dumps."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reader.cli import main
from tests.dumpwriter import Mapping, write_amd64_minidump

K2 = 0xFFFFFE0000000000


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_json(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "info", vmcore, "--json")
    assert rc == 0
    info = json.loads(out)
    assert (info["format"], info["arch"], info["kind"], info["hz"]) == ("minidump", "amd64", "mini", 100)


def test_info_text(capsys, lldb_paths):
    rc, out, _ = run(capsys, "info", lldb_paths["i386-minidump"][0])
    assert rc == 0 and "arch: i386" in out and "paemode: 1" in out


def test_read_symbol_va_pa(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["arm64-minidump"]
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "read", vmcore, "--symbol", "hz", "--size", 4)
    assert rc == 0 and "e8 03 00 00" in out         # 1000
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "translate", vmcore, "0xffff000000e2651c")
    pa = int(out, 16)
    rc, out, _ = run(capsys, "--zero-fill", "read", vmcore, "--pa", hex(pa), "--size", 4)
    assert rc == 0 and "e8 03 00 00" in out


def test_read_raw_bytes(tmp_path, lldb_paths):
    vmcore, kernel = lldb_paths["amd64-full"]
    out = subprocess.run([sys.executable, "-m", "reader", "--kernel", str(kernel), "--zero-fill", "read",
                          str(vmcore), "--symbol", "hz", "--size", "4", "--raw"], capture_output=True,
                         check=True).stdout
    assert out == (100).to_bytes(4, "little")


def test_pages_lines(capsys, tmp_path):
    spec = write_amd64_minidump(tmp_path / "vmcore", {0x1000: None, 0x5000: None},
                                [Mapping(K2, 0x5000), Mapping(K2 + 0x3000, 0x1000)])
    rc, out, _ = run(capsys, "pages", spec.path)
    assert rc == 0
    assert out.splitlines() == [f"{K2:#x} 0x5000", f"{K2 + 0x3000:#x} 0x1000"]


def test_threads_json_and_text(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["amd64-full"]
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "threads", vmcore, "--json")
    threads = json.loads(out)
    assert rc == 0 and len(threads) == 13
    assert threads[0]["name"] == "(pid 806) sysctl (crashed)"
    assert threads[0]["registers"]["rip"] == "0xffffffff80c09ade"   # a string: 64-bit safe in jq / JS
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "threads", vmcore)
    assert "sysctl (crashed)" in out and "rip=0xffffffff80c09ade" in out


def test_reader_error_is_one_line_exit_2(capsys, tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"not a dump" * 100)
    rc, out, err = run(capsys, "info", p)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("fbsd-vmcore: ") and str(p) in err and "magic" in err


def test_truncated_read_without_zero_fill_exits_2(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    rc, _, err = run(capsys, "read", vmcore, "--pa", "0x7fde000", "--size", 8)
    assert rc == 2 and "0x7fde000" in err and "--zero-fill" in err and "zero_fill=" not in err   # CLI words


def test_missing_kernel_for_threads(capsys, lldb_paths):
    rc, _, err = run(capsys, "threads", lldb_paths["amd64-minidump"][0])
    assert rc == 2 and "--kernel" in err


def test_extract_subcommand_is_wired(capsys, tmp_path):
    """`extract` goes to reader.device; on a file without a dump it fails as a ReaderError."""
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    rc, _, err = run(capsys, "extract", img, "-o", tmp_path / "out")
    assert rc == 2 and str(img) in err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "reader", "--help"], capture_output=True, text=True,
                         check=True)
    for cmd in ("info", "read", "translate", "pages", "msgbuf", "threads", "extract"):
        assert cmd in out.stdout


# `translate x zz` is no usage error any more: translate accepts a symbol name (issue 11 item 5)
@pytest.mark.parametrize("argv", [["read", "x", "--size", "4"], ["translate", "x"],
                                  ["bt", "x", "--tid", "zz"], ["bt", "x", "--tid", "1", "--all"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_common_options_are_accepted_after_the_command_too():
    """`fbsd-vmcore info core --kernel k` means the same as `fbsd-vmcore --kernel k info core`."""
    from reader.cli import build_parser

    parser = build_parser()
    read = ["read", "core", "--symbol", "hz", "--size", "4"]
    after = parser.parse_args([*read, "--kernel", "k", "--zero-fill"])
    before = parser.parse_args(["--kernel", "k", "--zero-fill", *read])
    neither = parser.parse_args(["info", "core"])
    assert (after.kernel, after.zero_fill) == ("k", True)
    assert (before.kernel, before.zero_fill) == ("k", True)
    assert (neither.kernel, neither.zero_fill, neither.private_key) == (None, False, None)
