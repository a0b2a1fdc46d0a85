"""`fbsd-hil verify`: the offline re-verification on the real LLDB FreeBSD dumps, booting nothing.

The live images are derived from the dumps themselves (tests/verify/livebuild.py): an untouched image
verifies clean, and each perturbation is known. Bad input ends with one line and exit status 2.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from livebuild import poke, write_live_from_dump

import reader
from harness.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def verify(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def full_live(lldb_fixtures, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("full-live") / "live.raw"
    with reader.open_vmcore(lldb_fixtures["full"], kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        live, _ = write_live_from_dump(vm, path)
        live.close()
    os.chmod(path, 0o444)
    return path


def run_dir_of(tmp_path: Path, lldb_fixtures, live: Path, **report: object) -> Path:
    """A directory laid out as `repro` leaves one (dump under crash/, live image, kernel, report.json)."""
    run = tmp_path / "repro-full-nmi-20261204-170000"
    (run / "crash").mkdir(parents=True)
    (run / "crash" / "vmcore.0").symlink_to(lldb_fixtures["full"])
    (run / "live-after.raw").symlink_to(live)
    (run / "kernel").symlink_to(lldb_fixtures["kernel"])
    (run / "domain.xml").write_text("<domain><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
    (run / "report.json").write_text(json.dumps({"flow": "ddb", "passed": False, **report}))
    return run


# ------------------------------------------------------------------------------------------ verdicts
def test_minidump_against_its_live_image_verifies(capsys, lldb_fixtures, mini_live, tmp_path):
    live, root = mini_live
    report = tmp_path / "r.json"
    code, out, err = verify(
        capsys,
        lldb_fixtures["mini"],
        "--live",
        live,
        "--kernel",
        lldb_fixtures["kernel"],
        "--pml4",
        hex(root),
        "--zero-fill",
        "--report",
        report,
    )
    assert (code, err) == (0, ""), out
    assert out.startswith("verification PASSED: mini dump")
    data = json.loads(report.read_text())
    assert data["passed"] and data["retrieval"] == "offline (fbsd-hil verify)"
    assert data["kernel"] == str(lldb_fixtures["kernel"])


def test_a_wrong_byte_fails_with_status_1(capsys, lldb_fixtures, mini, mini_live):
    live, root = mini_live
    poke(live, mini.translate(mini.symbol("hz")), struct.pack("<i", 7))
    code, out, _ = verify(
        capsys,
        lldb_fixtures["mini"],
        "--live",
        live,
        "--kernel",
        lldb_fixtures["kernel"],
        "--pml4",
        hex(root),
        "--zero-fill",
    )
    assert code == 1
    assert out.startswith("verification FAILED") and "kernel-data: hz" in out


def test_run_directory_gives_dump_live_image_kernel_and_flow(capsys, lldb_fixtures, full_live, tmp_path):
    run = run_dir_of(tmp_path, lldb_fixtures, full_live)
    code, out, err = verify(capsys, run, "--zero-fill", "--json")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["passed"] and data["dump_kind"] == "full" and data["flow"] == "ddb"
    assert data["pages_compared"] == data["pages_identical"] == 32634
    assert data["dump"] == str(lldb_fixtures["full"].resolve()) or data["dump"].endswith("vmcore.0")
    assert Path(data["kernel"]).resolve() == lldb_fixtures["kernel"].resolve()
    assert not (run / "report.json").read_text().startswith("{\n")  # the run's own report is untouched


def test_end_to_end_through_the_installed_entry_point(lldb_fixtures, full_live, tmp_path):
    run = run_dir_of(tmp_path, lldb_fixtures, full_live)
    r = subprocess.run(
        [sys.executable, "-m", "harness", "verify", str(run), "--zero-fill"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("verification PASSED: full dump")


def test_report_addresses_are_hex_strings(capsys, lldb_fixtures, full_live, tmp_path):
    """64-bit addresses must survive readers that hold JSON numbers as doubles."""
    bad = tmp_path / "live.raw"
    bad.write_bytes(full_live.read_bytes())
    with reader.open_vmcore(lldb_fixtures["full"], kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        va = vm.symbol("hz")
        poke(bad, vm.translate(va), b"\x07")
    code, out, _ = verify(
        capsys,
        lldb_fixtures["full"],
        "--live",
        bad,
        "--kernel",
        lldb_fixtures["kernel"],
        "--zero-fill",
        "--json",
    )
    assert code == 1
    (d,) = json.loads(out)["differences"]
    assert isinstance(d["address"], str) and d["address"].startswith("0x")
    assert isinstance(d["va"], str) and int(d["va"], 16) >> 63 == 1  # a kernel VA, exact


# ------------------------------------------------------------------------------------------ bad input
def one_line_exit_2(capsys, *args) -> str:
    code, out, err = verify(capsys, *args)
    assert code == 2, (out, err)
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fbsd-hil verify: ")
    return err.strip()


def test_missing_files_are_one_line(capsys, lldb_fixtures, full_live, tmp_path):
    k = lldb_fixtures["kernel"]
    err = one_line_exit_2(capsys, tmp_path / "vmcore.9", "--live", full_live, "--kernel", k)
    assert err == f"fbsd-hil verify: dump {tmp_path / 'vmcore.9'} does not exist"
    err = one_line_exit_2(capsys, lldb_fixtures["full"], "--live", tmp_path / "nope.raw", "--kernel", k)
    assert "live image" in err and "nope.raw does not exist" in err
    err = one_line_exit_2(capsys, lldb_fixtures["full"], "--live", full_live, "--kernel", tmp_path / "k")
    assert "kernel" in err and "does not exist" in err
    err = one_line_exit_2(capsys, lldb_fixtures["full"], "--kernel", k)
    assert "--live IMAGE" in err


def test_a_live_image_of_the_wrong_size_is_bad_input(capsys, lldb_fixtures, full_live, tmp_path):
    short = tmp_path / "short.raw"
    with open(short, "wb") as f:
        f.truncate(64 << 20)  # 64 MiB: the dump holds pages above that
    err = one_line_exit_2(
        capsys, lldb_fixtures["full"], "--live", short, "--kernel", lldb_fixtures["kernel"], "--zero-fill"
    )
    assert str(short) in err and "covers guest RAM up to 0x4000000" in err
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\0" * 5000)
    err = one_line_exit_2(capsys, lldb_fixtures["full"], "--live", odd, "--zero-fill")
    assert "5000 bytes" in err and "whole number of pages" in err


def test_before_image_of_another_size_is_bad_input(capsys, lldb_fixtures, full_live, tmp_path):
    before = tmp_path / "before.raw"
    with open(before, "wb") as f:
        f.truncate(full_live.stat().st_size + 4096)
    err = one_line_exit_2(
        capsys, lldb_fixtures["full"], "--live", full_live, "--before", before, "--zero-fill"
    )
    assert "not images of the same guest" in err


def test_a_kernel_that_does_not_match_the_dump_is_bad_input(capsys, lldb_dir, lldb_fixtures, full_live):
    err = one_line_exit_2(
        capsys,
        lldb_fixtures["full"],
        "--live",
        full_live,
        "--kernel",
        lldb_dir / "kernel-i386.elf",
        "--zero-fill",
    )
    assert "kernel-i386.elf" in err and "amd64" in err


@pytest.fixture(scope="module")
def other_amd64_kernel(tmp_path_factory) -> Path:
    """An amd64 kernel that did not write the LLDB dumps: the mock FreeBSD kernel
    (tests/mock_freebsd_kernel)."""
    sys.path.insert(0, str(REPO / "tests" / "mock_freebsd_kernel"))
    from mock_freebsd_kernel import build_mock_freebsd_kernel

    try:
        return build_mock_freebsd_kernel()
    except Exception as exc:  # noqa: BLE001 - no compiler here: say so
        pytest.skip(f"cannot build the mock FreeBSD kernel: {exc}")


@pytest.mark.parametrize("dump", ["full", "mini"])
def test_an_amd64_kernel_of_another_build_is_bad_input(
    capsys, lldb_fixtures, full_live, mini_live, other_amd64_kernel, dump
):
    live = full_live if dump == "full" else mini_live[0]
    err = one_line_exit_2(
        capsys, lldb_fixtures[dump], "--live", live, "--kernel", other_amd64_kernel, "--zero-fill"
    )
    assert f"kernel {other_amd64_kernel} does not match dump" in err and "'version'" in err


def test_a_truncated_dump_without_zero_fill_is_bad_input(capsys, lldb_fixtures, full_live):
    k = lldb_fixtures["kernel"]
    err = one_line_exit_2(capsys, lldb_fixtures["full"], "--live", full_live, "--kernel", k)
    assert "vmcore-amd64-full" in err


def test_never_overwrites_a_report(capsys, lldb_fixtures, full_live, tmp_path):
    (tmp_path / "r.json").write_text("mine")
    err = one_line_exit_2(
        capsys, lldb_fixtures["full"], "--live", full_live, "--zero-fill", "--report", tmp_path / "r.json"
    )
    assert "refusing to overwrite" in err
    assert (tmp_path / "r.json").read_text() == "mine"


def test_run_directory_without_live_images_says_how_to_keep_them(capsys, lldb_fixtures, full_live, tmp_path):
    run = run_dir_of(tmp_path, lldb_fixtures, full_live)
    (run / "live-after.raw").unlink()
    err = one_line_exit_2(capsys, run)
    assert "no live-after.raw" in err and "--keep-images" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_line_exit_2(capsys, empty)
    assert "holds no dump" in err


def test_device_state_hook_is_read_and_never_silently_ignored(capsys, lldb_fixtures, full_live, tmp_path):
    run = run_dir_of(tmp_path, lldb_fixtures, full_live)
    (run / "dump-device-state.json").write_text("not json")
    err = one_line_exit_2(capsys, run, "--zero-fill")
    assert "dump-device-state.json: not a dump-device state file" in err
    from harness.verify.dumpdevice import DumpDeviceState

    (run / "dump-device-state.json").write_text(DumpDeviceState(notes=["no virtio-blk device"]).to_json())
    code, out, _ = verify(capsys, run, "--zero-fill", "--json")
    assert code == 0
    notes = json.loads(out)["notes"]
    assert any("dump-device-state.json" in n for n in notes)


def test_bad_pml4_is_an_argument_error(capsys, lldb_fixtures, full_live):
    with pytest.raises(SystemExit) as info:
        main(["verify", str(lldb_fixtures["full"]), "--live", str(full_live), "--pml4", "0x123"])
    assert info.value.code == 2
    assert "not a page-aligned physical address" in capsys.readouterr().err


def test_kernel_debug_reaches_the_verifier(capsys, lldb_fixtures, full_live, tmp_path, monkeypatch):
    """`--kernel-debug` (or the one a repro run was given, from its config.json) is what names the dump
    device's driver state; it reaches `verify_dump`, and a missing file is one line."""
    import harness.verify.engine

    seen: dict[str, object] = {}
    real = harness.verify.engine.verify_dump

    def spy(*args, **kw):
        seen["kernel_debug"] = kw.get("kernel_debug")
        return real(*args, **kw)

    monkeypatch.setattr(harness.verify.engine, "verify_dump", spy)
    debug = tmp_path / "kernel.debug"
    debug.write_bytes(b"\x7fELF")
    run = run_dir_of(tmp_path, lldb_fixtures, full_live)
    verify(capsys, run, "--zero-fill", "--kernel-debug", debug)
    assert seen["kernel_debug"] == debug.resolve()
    (run / "config.json").write_text(json.dumps({"kernel_debug": str(debug)}))
    seen.clear()
    verify(capsys, run, "--zero-fill")
    assert seen["kernel_debug"] == debug.resolve()
    err = one_line_exit_2(capsys, run, "--zero-fill", "--kernel-debug", tmp_path / "nope.debug")
    assert "nope.debug" in err


def test_a_textdump_run_directory_says_it_has_no_pages_to_verify(capsys, tmp_path):
    run = tmp_path / "repro-text-nmi"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"textdump": True}))
    (run / "report.json").write_text(json.dumps({"dump_kind": "text", "dump": str(run / "textdump.tar.0")}))
    err = one_line_exit_2(capsys, run)
    assert "holds a textdump (repro --textdump)" in err and "member checks are in" in err


def test_a_compressed_dump_is_verified_and_reported_as_compressed(capsys, lldb_fixtures, mini_live, tmp_path):
    """`vmcore.N.zst` (savecore's copy of a `dumpon -Z` dump): decoded by the reader, verified, and the
    report says how it was compressed (kind, compressed and decoded sizes)."""
    zstandard = pytest.importorskip("zstandard")
    live, root = mini_live
    packed = tmp_path / "vmcore.0.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(Path(lldb_fixtures["mini"]).read_bytes()))
    report = tmp_path / "r.json"
    code, out, err = verify(
        capsys, packed, "--live", live, "--kernel", lldb_fixtures["kernel"], "--pml4", hex(root),
        "--zero-fill", "--report", report,
    )
    assert (code, err) == (0, ""), out
    assert out.splitlines()[0].endswith(
        f"zstd-compressed: {packed.stat().st_size} bytes compressed, "
        f"{Path(lldb_fixtures['mini']).stat().st_size} decoded"
    ), out.splitlines()[0]
    data = json.loads(report.read_text())
    assert data["compression"]["kind"] == "zstd"
    assert data["compression"]["compressed_bytes"] == packed.stat().st_size
