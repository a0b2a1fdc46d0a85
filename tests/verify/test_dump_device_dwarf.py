"""DWARF layouts and kernel.debug matching against real compiler output (a gcc -g layout stand-in)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.verify.dumpdevice.driver import NEEDED_STRUCTS
from harness.verify.dumpdevice.layouts import KernelDebugError, Layouts, check_debug_matches

STANDIN = Path(__file__).with_name("dumpdevice_standin.c")


def _build(tmp: Path, name: str, *flags: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    out = tmp / name
    subprocess.run(["gcc", "-g", "-O0", "-o", str(out), str(STANDIN), *flags], check=True)
    return out


def test_layouts_from_dwarf_are_the_compilers_offsets(tmp_path):
    exe = _build(tmp_path, "standin")
    truth = json.loads(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)
    lay = Layouts.from_dwarf(exe, NEEDED_STRUCTS)
    assert not lay.missing(NEEDED_STRUCTS)
    for key, (off, size) in truth.items():
        struct, member = key.split(".", 1)
        if struct == "sizeof":
            assert lay[member].size == off
            continue
        assert lay[struct].off(member) == off, key
        if member != "vq_descx":  # a flexible array has no size
            assert lay[struct].size_of(member) == size, key


def test_missing_types_give_one_line(tmp_path):
    exe = _build(tmp_path, "standin")
    lay = Layouts.from_dwarf(exe, [*NEEDED_STRUCTS, "no_such_struct"])
    assert lay.missing([*NEEDED_STRUCTS, "no_such_struct"]) == ["no_such_struct"]
    stripped = _build(tmp_path, "nodwarf", "-g0")
    with pytest.raises(KernelDebugError, match=r"nodwarf: no DWARF \(.debug_info\) in this file"):
        Layouts.from_dwarf(stripped, NEEDED_STRUCTS)


def test_kernel_debug_of_another_build_is_refused_in_one_line(tmp_path):
    a = _build(tmp_path, "kernel", "-Wl,--build-id=0x1111111111111111")
    b = _build(tmp_path, "kernel.debug", "-Wl,--build-id=0x2222222222222222")
    same = _build(tmp_path, "same.debug", "-Wl,--build-id=0x1111111111111111")
    assert check_debug_matches(a, same) == "GNU build-id 1111111111111111"
    with pytest.raises(KernelDebugError) as exc:
        check_debug_matches(a, b)
    msg = str(exc.value)
    assert "\n" not in msg and "does not match kernel" in msg and "2222222222222222" in msg


def test_debuglink_crc_is_checked_without_build_ids(tmp_path):
    if shutil.which("objcopy") is None:
        pytest.skip("needs objcopy (binutils)")
    k = _build(tmp_path, "kernel", "-Wl,--build-id=none")
    dbg = tmp_path / "kernel.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(k), str(dbg)], check=True)
    subprocess.run(["objcopy", "--strip-debug", f"--add-gnu-debuglink={dbg}", str(k)], check=True)
    assert check_debug_matches(k, dbg).startswith(".gnu_debuglink kernel.debug")
    other = _build(tmp_path, "other", "-Wl,--build-id=none", "-DUNUSED=1", "-O1")
    subprocess.run(["objcopy", "--only-keep-debug", str(other), str(dbg) + ".new"], check=True)
    Path(str(dbg) + ".new").replace(dbg)
    with pytest.raises(KernelDebugError, match="does not match kernel .*CRC32"):
        check_debug_matches(k, dbg)


@pytest.mark.parametrize("run", ["minidump-nmi", "full-alt-break", "minidump-nmi-2vcpu"])
def test_real_evidence_laid_out_by_another_kernels_dwarf_is_explained(tmp_path, run):
    """The recorded 12.1 values placed at the stand-in's (other) offsets, verified with the stand-in's
    kernel.debug: every offset comes from DWARF, none from the 12.1 layout."""
    import evidence_world as ew

    from harness.verify import verify_dump

    exe = _build(tmp_path, "kernel.debug")
    lay = Layouts.from_dwarf(exe, NEEDED_STRUCTS)
    assert lay["virtqueue"].off("vq_free_cnt") != ew.layouts()["virtqueue"].off("vq_free_cnt")
    world = ew.build(run, lay)
    report = verify_dump(
        ew.FakeVmcore(world),
        ew.live(world, "after"),
        before=ew.live(world, "before"),
        walk_page_tables=False,
        device_state=world.state,
        kernel_debug=exe,
    )
    assert report.status == "PASSED", report.summary()
    assert report.pages_dump_device_named >= 3
    assert all(d.dump_device == "named" for d in report.differences if d.address in world.unexplained_pages)
    # the 12.1 layout on this memory names nothing right: the same bytes are not explained
    wrong = verify_dump(
        ew.FakeVmcore(world),
        ew.live(world, "after"),
        before=ew.live(world, "before"),
        walk_page_tables=False,
        device_state=world.state,
        kernel_debug=ew.layouts(),
    )
    assert not wrong.passed or wrong.pages_dump_device_unnamed


def test_layouts_are_cached_per_file(tmp_path, monkeypatch):
    from harness.verify.dumpdevice.layouts import cached_layouts

    monkeypatch.setenv("FBSD_HIL_CACHE", str(tmp_path / "cache"))
    exe = _build(tmp_path, "standin")
    first = cached_layouts(exe, NEEDED_STRUCTS)
    (cached,) = (tmp_path / "cache" / "dwarf-layouts").iterdir()
    again = cached_layouts(exe, NEEDED_STRUCTS)
    assert again.structs == first.structs
    # a rebuilt file is a new key; a corrupt cache entry is searched again, not trusted
    cached.write_text("{broken")
    assert cached_layouts(exe, NEEDED_STRUCTS).structs == first.structs


def test_a_mismatched_kernel_debug_beside_the_kernel_is_one_clear_line(tmp_path):
    """`kernel.debug` found beside the kernel but built for another kernel: not used, the report says why
    in one line, and the device pages get the not-nameable heading (never FAILED for a correct dump)."""
    import evidence_world as ew

    from harness.verify import verify_dump

    kernel = _build(tmp_path, "kernel", "-Wl,--build-id=0x1111111111111111")
    _build(tmp_path, "kernel.debug", "-Wl,--build-id=0x2222222222222222")
    world = ew.build("minidump-nmi")
    report = verify_dump(
        ew.FakeVmcore(world),
        ew.live(world, "after"),
        before=ew.live(world, "before"),
        walk_page_tables=False,
        device_state=world.state,
        kernel=kernel,
    )
    reason = report.dump_device["no_dwarf_reason"]
    assert "\n" not in reason and "does not match kernel" in reason and "2222222222222222" in reason
    assert report.status == "PASSED (with 3 dump-device pages not nameable without kernel.debug)"
    assert reason in report.summary()
