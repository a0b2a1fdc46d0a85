"""Which matrix cells a guest source can run, and the one-line reason for those it cannot (no guest
needed: these are the decisions `fbsd_repro` makes before booting anything)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pytest_plugin import FbsdTarget, HilCase, hil_matrix

KERNEL = FbsdTarget(kernel=Path("/k"))
IMAGE = FbsdTarget(image=Path("/i"))


def test_bare_kernel_cells_that_cannot_run_say_why():
    sysctl = KERNEL.unsupported(HilCase("mini", "sysctl", "disk", "none"))
    assert "no shell" in sysctl and "nmi/break/alt-break" in sysctl
    gz = KERNEL.unsupported(HilCase("mini", "nmi", "disk", "gzip"))
    assert "gzip compression" in gz and "dumpon" in gz and "no userland" in gz
    swap = KERNEL.unsupported(HilCase("full", "nmi", "swap", "none"))
    assert "freebsd-swap partition" in swap and "no shell" in swap and "--fbsd-root-image" in swap


@pytest.mark.parametrize("trigger", ["nmi", "break", "alt-break"])
def test_bare_kernel_console_triggers_run_with_or_without_ddb(trigger):
    """ddb or not is only known from the boot banner: these cells run and take whichever flow fits."""
    for dump in ("mini", "full"):
        assert KERNEL.unsupported(HilCase(dump, trigger, "disk", "none")) is None


def test_image_cells():
    assert "dedicated raw dump disk" in IMAGE.unsupported(HilCase("mini", "nmi", "swap", "none"))
    runnable = [c for c in hil_matrix() if IMAGE.unsupported(c) is None]
    assert {c.device for c in runnable} == {"disk"}
    assert {c.compression for c in runnable} == {"none", "gzip", "zstd"}
    assert {c.trigger for c in runnable} == {"nmi", "break", "alt-break", "sysctl", "panic"}
    # every cell that cannot run has a reason, never an empty one
    for c in hil_matrix():
        for target in (KERNEL, IMAGE):
            why = target.unsupported(c)
            assert why is None or len(why) > 20


def test_root_image_runs_the_swap_cells_a_bare_kernel_cannot():
    """A kernel with a root image has a shell for `dumpon /dev/vtbd0p2`: its swap cells run (the compressed
    ones as far as the guest's dumpon can compress); a bare kernel's still skip, saying why."""
    root = FbsdTarget(kernel=Path("/k"), root_image=Path("/r"))
    for c in hil_matrix():
        if c.device == "swap":
            assert root.unsupported(c) is None, c.id
            why = KERNEL.unsupported(c)
            assert why is not None and ("no shell" in why or "no userland" in why or "swap partition" in why)
    bare_swap = KERNEL.unsupported(HilCase("mini", "nmi", "swap", "none"))
    assert "bare --fbsd-kernel boot has no shell" in bare_swap
