"""What a run leaves on disk: private modes, a user's directory untouched, the bulk dropped after a
pass, one GRUB ISO per kernel + environment. No guest needed (stand-ins for the guest's parts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from harness.freebsd.panicdump import DumpFlow, FlowChoice
from harness.run.config import ReproConfig, ReproOutcome
from harness.run.context import RunContext
from harness.run.dump import Crash
from harness.run.evidence import BULK_FILES, Judged, conclude
from harness.run.retrieve.base import Retrieved
from harness.run.rundir import disk_usage, make_dump_disk, make_private, new_run_dir
from harness.run.sources.boot_iso import cached_kernel_iso
from harness.run.verify import LiveAfter
from harness.verify.report import VerificationReport


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_run_dir_is_private_and_a_users_directory_keeps_its_mode(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    os.chmod(mine, 0o700)
    d = new_run_dir(mine, "repro mini/nmi")
    assert mode(mine) == 0o700, "--artifacts DIR made by the user must keep its mode"
    assert d.parent == mine and mode(d) == 0o700 and d.name.endswith("-repro-mini-nmi")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    assert mode(new_run_dir(shared, "x")) == 0o700 and mode(shared) == 0o755  # never loosened or tightened
    fresh = tmp_path / "a" / "fresh"
    assert mode(new_run_dir(fresh, "x")) == 0o700 and mode(fresh) == 0o700
    assert new_run_dir(mine, "repro mini/nmi") != d  # never reused


def test_dump_disk_is_private_sparse_and_never_overwrites(tmp_path):
    disk = make_dump_disk(tmp_path / "dump-disk.raw", 128)
    assert mode(disk) == 0o600 and disk.stat().st_size == 256 << 20 and disk.stat().st_blocks == 0
    with pytest.raises(FileExistsError):
        make_dump_disk(disk, 128)


def test_everything_under_the_run_dir_ends_private(tmp_path):
    run = new_run_dir(tmp_path, "x")
    (run / "crash").mkdir(mode=0o755)
    (run / "crash" / "vmcore.0").write_bytes(b"x")
    os.chmod(run / "crash" / "vmcore.0", 0o666)
    (run / "crash" / "vmcore.last").symlink_to("vmcore.0")
    make_private(run)
    for path in [run, *run.rglob("*")]:
        if not path.is_symlink():
            assert mode(path) & 0o077 == 0, f"{path} is group/world accessible: {oct(mode(path))}"


class _Image:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Guest:
    name = "stand-in"

    def __init__(self) -> None:
        self.resumed = 0

    def resume(self) -> None:
        self.resumed += 1


def _finished_run(tmp_path: Path, *, passed: bool, **cfg) -> tuple[ReproOutcome, Path, _Image, _Image]:
    run = new_run_dir(tmp_path, "x")
    for name in BULK_FILES:
        with open(run / name, "wb") as f:
            f.write(b"\1" * 8192)
    (run / "crash").mkdir()
    (run / "crash" / "vmcore.0").write_bytes(b"v" * 4096)
    before, after = _Image(), _Image()
    choice = FlowChoice(DumpFlow.DDB, "nmi")
    crash = Crash(choice, result=None, before=before, before_path=run / BULK_FILES[0])
    live = LiveAfter(after, run / "live-after.raw")
    vmcore = run / "crash" / "vmcore.0"
    got = Retrieved(vmcore, None, "none", evidence={"vmcore": str(vmcore)})
    report = VerificationReport(pages_compared=1, pages_identical=1)
    if not passed:
        report.errors.append("stand-in failure")
    ctx = RunContext(ReproConfig(artifacts=tmp_path, **cfg), run, lambda _m: None)
    return conclude(ctx, _Guest(), [Judged(report, crash, live, got)]), run, before, after


def test_a_passing_run_keeps_report_and_vmcore_but_not_the_bulk(tmp_path):
    outcome, run, before, after = _finished_run(tmp_path, passed=True)
    assert outcome.report.passed and before.closed and after.closed
    assert set(outcome.removed_files) == set(BULK_FILES) and all(outcome.removed_files.values())
    assert not any((run / n).exists() for n in BULK_FILES)
    assert {"report.json", "crash/vmcore.0"} <= set(outcome.kept_files)
    assert outcome.kept_files == disk_usage(run) and outcome.evidence["report"] == str(run / "report.json")
    assert all(mode(p) & 0o077 == 0 for p in [run, *run.rglob("*")])


def test_a_failing_run_or_keep_images_keeps_the_bulk(tmp_path):
    outcome, run, _, _ = _finished_run(tmp_path / "fail", passed=False)
    assert not outcome.report.passed and outcome.removed_files == {}
    assert all((run / n).exists() for n in BULK_FILES) and set(BULK_FILES) <= set(outcome.kept_files)
    outcome, run, _, _ = _finished_run(tmp_path / "keep", passed=True, keep_images=True)
    assert outcome.report.passed and outcome.removed_files == {}
    assert all((run / n).exists() for n in BULK_FILES)


def test_a_kept_guest_keeps_its_dump_disk(tmp_path):
    outcome, run, _, _ = _finished_run(tmp_path, passed=True, keep=True)
    assert outcome.kept and (run / "dump-disk.raw").exists()
    assert set(outcome.removed_files) == {
        "live-before.raw", "live-after.raw", "live-before-2.raw", "live-after-2.raw"
    }


def test_one_grub_iso_per_kernel_and_environment(tmp_path):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF one")
    builds: list[tuple[Path, dict]] = []

    def build(k, kenv, out):
        builds.append((Path(k), dict(kenv)))
        Path(out).write_bytes(b"ISO " + Path(k).read_bytes() + repr(sorted(kenv.items())).encode())
        return Path(out)

    cache = tmp_path / "cache"
    first, built = cached_kernel_iso(kernel, {"a": "1"}, cache_dir=cache, build=build)
    assert built and mode(first) == 0o600 and mode(first.parent) == 0o700
    again, built = cached_kernel_iso(kernel, {"a": "1"}, cache_dir=cache, build=build)
    assert again == first and not built and len(builds) == 1
    other, built = cached_kernel_iso(kernel, {"a": "2"}, cache_dir=cache, build=build)
    assert built and other != first
    kernel.write_bytes(b"\x7fELF two")  # a rebuilt kernel at the same path is another ISO
    rebuilt, built = cached_kernel_iso(kernel, {"a": "1"}, cache_dir=cache, build=build)
    assert built and rebuilt != first and len(builds) == 3
    assert sorted(p.name for p in (cache / "boot-iso").iterdir()) == sorted(
        p.name for p in (first, other, rebuilt)
    ), "no temporary files left behind"


def test_the_iso_record_travels_with_the_cached_iso(tmp_path):
    """`build_kernel_iso` writes ``<iso>.json`` (kernel, kenv, GRUB fixes, the kernel type GRUB
    registers); a silent kernel's diagnosis reads it beside the ISO the guest boots, so the cache keeps it
    there, and a failed run keeps a copy beside its boot.iso."""
    from types import SimpleNamespace

    from harness.run.evidence import keep_boot_iso

    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")

    def build(k, kenv, out):
        Path(out).write_bytes(b"ISO")
        Path(str(out) + ".json").write_text('{"amd64_kernel_type": "elf kernel"}')
        return Path(out)

    iso, _ = cached_kernel_iso(kernel, {}, cache_dir=tmp_path / "cache", build=build)
    assert Path(str(iso) + ".json").read_text() == '{"amd64_kernel_type": "elf kernel"}'
    assert sorted(p.name for p in iso.parent.iterdir()) == [iso.name, iso.name + ".json"]
    run = new_run_dir(tmp_path, "x")
    keep_boot_iso(SimpleNamespace(boot=SimpleNamespace(iso=iso)), run)
    assert (run / "boot.iso.json").read_text() == '{"amd64_kernel_type": "elf kernel"}'


def test_a_failed_iso_build_leaves_nothing_in_the_cache(tmp_path):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"k")

    def broken(k, kenv, out):
        Path(out).write_bytes(b"half")
        raise RuntimeError("grub-mkrescue failed")

    with pytest.raises(RuntimeError):
        cached_kernel_iso(kernel, {}, cache_dir=tmp_path / "cache", build=broken)
    assert list((tmp_path / "cache" / "boot-iso").iterdir()) == []


class _PmemsaveGuest:
    """Writes what QMP pmemsave would: fopen(filename, "wb") keeps an existing file's mode."""

    def qmp(self, command: str, *, val: int, size: int, filename: str) -> None:
        assert command == "pmemsave"
        old = os.umask(0o002)  # QEMU's own umask made 0664 images
        try:
            with open(filename, "wb") as f:
                f.write(bytes([val >> 20 & 0xFF]) * size)
        finally:
            os.umask(old)


@pytest.mark.parametrize("ranges", [[(0, 8192)], [(0, 4096), (1 << 20, 4096)]])
def test_live_images_are_private(tmp_path, ranges):
    from harness.vm.memory import save_image

    image = save_image(_PmemsaveGuest(), tmp_path / "live.raw", ranges)
    assert mode(image.path) == 0o600 and image.size == sum(s for _, s in ranges)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.raw"]
    image.close()


def test_a_failed_live_image_leaves_nothing_and_never_touches_an_existing_file(tmp_path):
    from harness.vm.memory import save_image

    class Failing:
        def qmp(self, *a, **kw):
            raise OSError("QMP gone")

    with pytest.raises(OSError):
        save_image(Failing(), tmp_path / "live.raw", [(0, 4096)])
    assert list(tmp_path.iterdir()) == []
    mine = tmp_path / "mine.raw"
    mine.write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        save_image(_PmemsaveGuest(), mine, [(0, 4096)])
    assert mine.read_bytes() == b"user data"


def test_the_summary_says_what_was_kept_and_removed(tmp_path):
    from harness.cli.repro import kept_summary

    outcome, run, _, _ = _finished_run(tmp_path, passed=True)
    text = kept_summary(outcome)
    assert text.splitlines()[0].startswith(f"artifacts: {run} (") and "kept)" in text.splitlines()[0]
    assert "  crash/vmcore.0  4 KiB" in text and "  report.json  " in text
    assert "removed after the pass (--keep-images keeps them): dump-disk.raw 8 KiB" in text


def test_a_failed_run_keeps_a_copy_of_the_boot_iso(tmp_path):
    from types import SimpleNamespace

    from harness.run.evidence import keep_boot_iso

    iso = tmp_path / "cached.iso"
    iso.write_bytes(b"ISO")
    run = new_run_dir(tmp_path, "x")
    keep_boot_iso(SimpleNamespace(boot=SimpleNamespace(iso=iso)), run)
    assert (run / "boot.iso").read_bytes() == b"ISO" and (run / "boot.iso").stat().st_ino != iso.stat().st_ino
    keep_boot_iso(SimpleNamespace(boot=SimpleNamespace(image=iso)), run / "other")  # no ISO: nothing
