"""pytest plugin (entry point ``fbsd_hil``): options that say where a FreeBSD guest comes from.

Tests marked ``hil`` need a real FreeBSD guest. Without ``--fbsd-image``, ``--fbsd-release`` or
``--fbsd-kernel`` they skip with one line that says how to provide one; they never pretend to pass.
"""

from __future__ import annotations

import pytest

HIL_SKIP_REASON = (
    "needs a FreeBSD guest: pass --fbsd-image PATH, --fbsd-release X.Y or --fbsd-kernel PATH "
    "(or run `tox -e hil`)"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fbsd-hil", "FreeBSD hardware-in-the-loop")
    group.addoption("--fbsd-image", metavar="PATH", help="FreeBSD disk image (raw/qcow2) to boot")
    group.addoption("--fbsd-release", metavar="X.Y", help="official FreeBSD release to download and boot")
    group.addoption("--fbsd-kernel", metavar="PATH", help="FreeBSD kernel file to boot from a GRUB ISO")
    group.addoption(
        "--fbsd-kenv", metavar="K=V", action="append", default=[], help="kernel environment (repeatable)"
    )
    group.addoption("--libvirt-uri", metavar="URI", default=None, help="libvirt URI (default qemu:///system)")
    group.addoption("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="QEMU accelerator")
    group.addoption("--keep-vm", action="store_true", help="leave guests running after a failure")
    group.addoption("--fbsd-artifacts", metavar="DIR", default=None, help="where to keep failure artifacts")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: needs libvirtd + QEMU")
    config.addinivalue_line("markers", "hil: needs a real FreeBSD guest")


def fbsd_source_given(config: pytest.Config) -> bool:
    return any(config.getoption(o) for o in ("--fbsd-image", "--fbsd-release", "--fbsd-kernel"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if fbsd_source_given(config):
        return
    skip = pytest.mark.skip(reason=HIL_SKIP_REASON)
    for item in items:
        if "hil" in item.keywords:
            item.add_marker(skip)
