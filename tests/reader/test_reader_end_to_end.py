"""Whole path: a synthetic kernel dump, zstd-compressed, on a raw dump-device image (as the kernel
writes it), read directly and after `fbsd-vmcore extract` — the header's hostname, time and panic
string reach `info`, and threads/msgbuf come out of the compressed payload."""

from __future__ import annotations

import json

import reader
from reader.cli import main
from tests.dumpwriter import ProcSpec, ThreadSpec, write_threads_dump
from tests.dumpwriter.containers import COMP_ZSTD, kernel_zstd, write_device_image


def test_device_image_with_zstd_minidump(tmp_path, capsys):
    procs = [ProcSpec(5, "sh", [ThreadSpec(100500, "sh", [0x11] * 8, crashed=True)])]
    vmcore, kernel = write_threads_dump(tmp_path, procs, msgbuf=(b"panic: test\n", 12))
    raw = vmcore.read_bytes()
    image = tmp_path / "dumpdev.img"
    write_device_image(image, kernel_zstd(raw), compression=COMP_ZSTD, dumpextent=len(raw),
                       hostname="e2e-host", dumptime=1700000000, panicstring="test panic")

    with reader.open_vmcore(image, kernel) as vm:
        info = vm.info
        assert (info["hostname"], info["dumptime"], info["panic"]) == ("e2e-host", 1700000000, "test panic")
        assert info["dumptime_utc"].startswith("2023-11-14T22:13:20")
        assert vm.msgbuf() == "panic: test\n"
        assert [t.name for t in vm.threads()] == ["(pid 5) sh (crashed)"]

    out = tmp_path / "crash"
    out.mkdir()
    assert main(["extract", str(image), "-o", str(out)]) == 0
    capsys.readouterr()
    saved = sorted(p.name for p in out.iterdir())
    assert "info.0" in saved and any(n.startswith("vmcore.0") for n in saved)
    extracted = next(p for p in out.iterdir() if p.name.startswith("vmcore.0"))
    assert main(["--kernel", str(kernel), "threads", str(extracted), "--json"]) == 0
    threads = json.loads(capsys.readouterr().out)
    assert threads[0]["registers"]["rip"] == "0x11"     # JSON addresses are "0x..." strings
