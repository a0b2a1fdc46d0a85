"""`fbsd-hil repro --textdump` end to end on the MockFreeBSDKernel (a stand-in, NOT FreeBSD).

The mock imitates 12.1's ddb capture and textdumps (src/mock_textdump.h): the harness enters ddb,
captures a few commands, runs `textdump dump`, reads textdump.tar.N off the dump disk and checks every
member against what the console printed. On a bare kernel (no shell: a textdump needs only ddb), and
on a kernel panicked from the single-user shell (panic.txt == the panic message). The perturbation
knob `mock.corrupt_textdump=ddb` proves a ddb.txt that differs from the console fails the run.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from mock_runs import libvirt_or_skip as _libvirt_or_skip
from mock_runs import repro_bare_kernel as _repro

MEMBER_CHECKS = ("ddb.txt", "msgbuf.txt", "panic.txt", "version.txt", "dump header")


def _checks(report: dict) -> dict[str, dict]:
    """The member checks by member name (the words after "textdump " in each check's name)."""
    out = {}
    for c in report["crosschecks"]:
        name = next((m for m in MEMBER_CHECKS if f"textdump {m}" in c["what"]), None)
        assert name is not None, c["what"]
        out[name] = c
    return out


@pytest.mark.vm
def test_repro_textdump_on_a_bare_kernel_matches_the_console(mock_kernel, tmp_path):
    _libvirt_or_skip()
    rc, report, stderr = _repro(mock_kernel, tmp_path, "--textdump")
    assert rc == 0, stderr[-4000:]
    assert (report["passed"], report["status"], report["dump_kind"]) == (True, "PASSED", "text")
    checks = _checks(report)
    assert set(checks) == set(MEMBER_CHECKS) and all(c["ok"] for c in checks.values()), checks
    assert checks["panic.txt"]["actual"] == "no panic.txt"
    assert "symbol `version` of" in checks["version.txt"]["source"]
    assert report["textdump"]["members"].keys() == {"ddb.txt", "msgbuf.txt", "version.txt"}
    # the retrieved file is a tar stream any tar reads: ddb.txt is the captured ddb session
    with tarfile.open(report["dump"]) as tar:
        ddb_txt = tar.extractfile("ddb.txt").read().decode()
        assert [m.uname for m in tar.getmembers()] == ["root"] * 3
    # the mock's capture holds exactly what its console printed (CR LF -> LF): spaces, not tabs, as 12.1's
    # db_force_whitespace writes them; the run directory keeps that console text beside the report
    console = (Path(report["dump"]).parents[1] / "textdump-console.txt").read_text().replace("\r", "")
    assert ddb_txt == console and "\t" not in ddb_txt
    lines = ddb_txt.splitlines()
    assert lines[0] == "db> show panic" and lines[1] == "panicstr not set"
    assert "db> show registers" in lines and "db> ps" in lines and lines[-1] == "db> textdump dump"
    assert "textdump.tar.0" in report["dump"]


@pytest.mark.vm
def test_repro_textdump_whose_ddb_txt_differs_from_the_console_fails(mock_kernel, tmp_path):
    """The mock writes ddb.txt with its second line changed: exit 1, the ddb.txt check names line 2."""
    _libvirt_or_skip()
    rc, report, stderr = _repro(mock_kernel, tmp_path, "--textdump", "--kenv", "mock.corrupt_textdump=ddb")
    assert rc == 1, stderr[-4000:]
    assert report["passed"] is False and report["status"] == "FAILED"
    checks = _checks(report)
    assert not checks["ddb.txt"]["ok"]
    assert checks["ddb.txt"]["actual"] == (
        "first differing line 2: console 'panicstr not set', ddb.txt '#anicstr not set'"
    )
    assert all(c["ok"] for name, c in checks.items() if name != "ddb.txt"), checks


@pytest.mark.vm
def test_repro_textdump_of_a_panicked_kernel_holds_panic_txt(mock_kernel, root_image, tmp_path):
    """`--trigger panic` from the single-user shell (sysctl debug.kdb.panic=1): the kernel stops in ddb
    on its panic; the textdump's panic.txt is the panic message ddb's `show panic` printed."""
    _libvirt_or_skip()
    image = root_image
    rc, report, stderr = _repro(mock_kernel, tmp_path, "--textdump", "--root-image", str(image), "--trigger",
                                "panic")
    assert rc == 0, stderr[-4000:]
    checks = _checks(report)
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["panic.txt"]["actual"] == "'kdb_sysctl_panic'"
    assert report["textdump"]["members"]["panic.txt"] == len("kdb_sysctl_panic")
