"""A run from a saved booted guest (`harness.run.saved_boot`): the mock kernel booted once to
root_wait and saved; a run restores it and goes on with enter -> dump -> retrieve -> verify, the dump
flow chosen from the boot banner the saved boot remembered (the restored console never shows it)."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from harness.run import ReproConfig, ReproError, run_repro
from harness.run.saved_boot import RECORD, SavedBoot, _check_same_boot, save_booted


def test_a_directory_that_is_no_saved_boot_is_one_line(tmp_path):
    with pytest.raises(ReproError, match=f"{tmp_path / RECORD}: not a saved boot written by save_booted"):
        SavedBoot.load(tmp_path)
    (tmp_path / RECORD).write_bytes(pickle.dumps({"not": "a saved boot"}))
    with pytest.raises(ReproError, match="not a saved boot written by save_booted"):
        SavedBoot.load(tmp_path)


def test_a_run_may_not_change_what_the_boot_fixed(tmp_path):
    booted = ReproConfig(kernel=tmp_path / "k", memory_mib=128, kenv={"a": "1"})
    run = dataclasses.replace(booted, saved_boot=tmp_path, keep_images=True, artifacts=tmp_path / "x")
    _check_same_boot(booted, run)  # per-run choices (artifacts, images kept) may differ
    with pytest.raises(ReproError, match=r"booted with memory_mib=128, this run asks for 256"):
        _check_same_boot(booted, dataclasses.replace(run, memory_mib=256))
    with pytest.raises(ReproError, match=r"booted with minidump=True, this run asks for False"):
        _check_same_boot(booted, dataclasses.replace(run, minidump=False))


def test_only_a_bare_kernel_boot_is_saved(tmp_path):
    with pytest.raises(ReproError, match="only a bare --kernel boot"):
        save_booted(ReproConfig(image=tmp_path / "img"), tmp_path / "saved")


@pytest.mark.vm
def test_a_run_from_a_saved_boot_verifies_its_dump(tmp_path):
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri
    from tests.run.test_run_vm import _mock_kernel

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable: {exc}")
    cfg = ReproConfig(kernel=_mock_kernel(), memory_mib=128, accel="tcg",
                      artifacts=tmp_path / "runs", boot_seconds=120)
    saved = save_booted(cfg, tmp_path / "saved", progress=lambda _m: None)
    assert saved.facts.has_ddb is True and saved.dump_target == "vda" and saved.boot_seconds > 0
    reloaded = SavedBoot.load(tmp_path / "saved")
    for _ in range(2):  # each run restores its own guest with its own empty copy of the dump disk
        said: list[str] = []
        run_cfg = reloaded.config(artifacts=tmp_path / "runs", keep_images=True)
        outcome = run_repro(run_cfg, progress=said.append)
        assert outcome.passed, outcome.report.summary()
        assert any("restored from" in m for m in said) and not any("booting" in m for m in said)
        assert any(m.startswith("dump flow: ddb (the kernel has the ddb backend") for m in said), said
        assert outcome.report.dump_kind == "mini" and outcome.flow == "ddb"
        assert (outcome.artifacts / "dump-disk.raw").stat().st_blocks > 0  # the restored guest's dump disk
        assert (outcome.artifacts / "crash" / "vmcore.0").is_file()
    frozen = next((tmp_path / "saved" / "state").glob("disk-vda.*"))
    assert frozen.stat().st_blocks == 0  # the saved dump disk stays empty: every run starts clean
