"""The in-guest witness and the sysctl toggle of `--dump-twice`, end to end on the MockFreeBSDKernel
(a STAND-IN, NOT FreeBSD) booted with a root image made by Debian's makefs.

The mock's single-user shell answers `dd if=/dev/kmem|/dev/mem ... | sha256` from its own page tables and
memory (src/mock_witness.h); `mock.witness_lie=1` is its fault-injection knob: /dev/kmem returns every page
with one byte flipped while memory keeps the right bytes, so the witness must fail, naming each page.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mock_runs import ROOT
from mock_runs import assert_passed as _passed
from mock_runs import libvirt_or_skip as _libvirt_or_skip
from mock_runs import repro_with_root_image as _repro

pytestmark = pytest.mark.vm


def test_witness_pages_equal_the_dump_and_the_hypervisor_image(mock_kernel, root_image, tmp_path):
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--trigger", "sysctl")
    _passed(rc, report, stderr, "mini")
    w = report["witness"]
    assert w["ran"] and w["kmem_total"] == 8 and w["mem_total"] == 8, w
    assert w["kmem_equal"] == 8 and w["mem_equal"] == 8, w["summary"]
    assert w["summary"] == (
        "in-guest witness: 8/8 pages through /dev/kmem and 8/8 through /dev/mem equal the dump and the "
        "hypervisor's image"
    )
    assert "KPML4phys" in w["translation"]
    for page in w["pages"]:
        assert page["digest"] and set(page["sides"].values()) == {page["digest"]}, page
    checks = [c for c in report["crosschecks"] if c["what"].startswith("in-guest witness")]
    assert len(checks) == 16 and all(c["ok"] for c in checks)
    assert "| sha256" in console and "dd if=/dev/kmem bs=4096 skip=" in console


def test_a_lying_dev_kmem_fails_the_witness_naming_the_pages(mock_kernel, root_image, tmp_path):
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(
        mock_kernel, root_image, tmp_path, "--trigger", "sysctl", "--kenv", "mock.witness_lie=1"
    )
    assert "mock.witness_lie=1" in console
    assert rc == 1 and report is not None, stderr[-3000:]
    assert report["passed"] is False and report["pages_differing_unexplained"] == 0
    w = report["witness"]
    assert w["kmem_equal"] == 0 and w["mem_equal"] == w["mem_total"] == 8, w["summary"]
    bad = [c for c in report["crosschecks"] if not c["ok"]]
    assert len(bad) == 8 and all(c["what"].startswith("in-guest witness /dev/kmem page va 0x") for c in bad)
    for c in bad:
        assert "dump " in c["actual"] and "(differs)" in c["actual"], c
        assert "the guest's read differs from every outside copy" in c["actual"], c
        assert c["source"].startswith("`dd if=/dev/kmem bs=4096 skip=")


def test_dump_twice_toggled_by_sysctl_in_one_boot(mock_kernel, root_image, tmp_path):
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--dump-twice")
    _passed(rc, report, stderr, "mini")
    second = sorted(tmp_path.glob("artifacts/*/report-2.json"))
    assert second, "no report-2.json"
    report2 = json.loads(second[-1].read_text())
    assert report2["passed"] is True and report2["dump_kind"] == "full", report2.get("errors")
    assert any("`sysctl debug.minidump=0`" in n for n in report2["notes"]), report2["notes"]
    assert report2["witness"]["kmem_equal"] == 8
    # the order a user types: the first dump, `c`, the sysctl, ddb again, the second dump
    order = [
        console.index("Dump complete"),
        console.index("db> c"),
        console.index("debug.minidump: 1 -> 0"),
        console.index("KDB: enter: sysctl debug.kdb.enter", console.index("debug.minidump: 1 -> 0")),
        console.rindex("Dump complete"),
    ]
    assert order == sorted(order) and order[0] != order[-1], order


def test_a_bare_kernel_says_the_witness_did_not_run(mock_kernel, tmp_path):
    _libvirt_or_skip()
    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "harness", "repro", "--kernel", str(mock_kernel), "--memory", "128",
        "--accel", "tcg", "--artifacts", str(tmp_path / "artifacts"), "--report", str(report_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w = json.loads(report_path.read_text())["witness"]
    assert w["ran"] is False and "no shell" in w["why_not"]
    assert f"in-guest witness: did not run ({w['why_not']})" in proc.stdout


def test_the_mock_shell_answers_the_witness_commands_like_freebsd_tools(mock_kernel, root_image, tmp_path):
    """The stand-in's dd and sha256 at the console shell: sha256 of stdin is the digest alone; an unmapped
    kernel VA fails dd's read like amd64 memrw()'s EFAULT; the witness turns that into dd's own words."""
    _libvirt_or_skip()
    import hashlib

    from harness.run import boot
    from harness.run.config import ReproConfig
    from harness.run.context import RunContext
    from harness.run.rundir import make_dump_disk, new_run_dir
    from harness.run.sources import build_source
    from harness.verify import witness as w

    cfg = ReproConfig(kernel=mock_kernel, root_image=root_image, memory_mib=128, accel="tcg",
                      artifacts=tmp_path, boot_seconds=120)
    ctx = RunContext(cfg, new_run_dir(tmp_path, "witness-shell"), progress=lambda _m: None)
    source = build_source(ctx, make_dump_disk(ctx.dir / "dump-disk.raw", 128, None))
    with boot.started(ctx, source) as guest:
        shell = boot.boot(ctx, guest, source).shell
        r = shell.run("echo witness | sha256")
        assert (r.status, r.output.strip()) == (0, hashlib.sha256(b"witness\n").hexdigest())
        unmapped = 0xFFFFFF0000000000  # a PML4 slot the stand-in never maps
        r = shell.run(w.error_command("/dev/kmem", unmapped // 4096))
        assert r.status == 1 and "dd: /dev/kmem: Bad address" in r.output, r
        read = w.read_page(lambda c: shell.run(c), "/dev/kmem", w.WitnessPage(unmapped, "unmapped"))
        assert read.digest is None and "dd: /dev/kmem: Bad address" in read.error, read
        r = shell.run(w.error_command("/dev/mem", 0x200000 // 4096))
        assert r.status == 0 and "1+0 records in" in r.output and "4096 bytes transferred" in r.output
