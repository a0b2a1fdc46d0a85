"""`fbsd-hil repro` and `fbsd-hil console`: argument checks, the failure path on a real guest, attaching."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli.console import ConsoleAttachError, relay, serial_pty

REPO = Path(__file__).resolve().parents[2]


def fbsd_hil(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        **kw,
    )


def test_repro_needs_exactly_one_source():
    r = fbsd_hil("repro")
    assert r.returncode == 2
    assert "one of the arguments --image --release --kernel --from-saved-boot is required" in r.stderr


def test_saved_boots_are_one_line_refusals(tmp_path):
    r = fbsd_hil("repro", "--from-saved-boot", str(tmp_path), "--artifacts", str(tmp_path / "a"))
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"fbsd-hil repro: saved boot: {tmp_path / 'saved-boot.pickle'}: not a saved boot written by "
        "save_booted: [Errno 2] No such file or directory: "
        f"'{tmp_path / 'saved-boot.pickle'}'"
    )
    r = fbsd_hil("repro", "--from-saved-boot", str(tmp_path), "--memory", "256", "--kenv", "a=1")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "fbsd-hil repro: --from-saved-boot restores what was saved; --kenv, --memory was fixed at boot"
    )
    r = fbsd_hil("repro", "--release", "14.3", "--save-boot", str(tmp_path / "s"))
    assert r.returncode == 2 and "--save-boot saves a bare --kernel boot" in r.stderr


def test_repro_missing_kernel_is_one_line(tmp_path):
    r = fbsd_hil("repro", "--kernel", str(tmp_path / "kernel"), "--artifacts", str(tmp_path / "a"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"fbsd-hil repro: kernel file {tmp_path / 'kernel'} does not exist"
    assert not (tmp_path / "a").exists()


def test_repro_refuses_shell_triggers_for_a_bare_kernel(tmp_path):
    k = tmp_path / "kernel"
    k.write_bytes(b"\x7fELF")
    r = fbsd_hil("repro", "--kernel", str(k), "--trigger", "sysctl")
    assert r.returncode == 2 and "use nmi, break or alt-break" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_repro_refuses_savecore_retrieval_for_a_bare_kernel(tmp_path):
    k = tmp_path / "kernel"
    k.write_bytes(b"\x7fELF")
    r = fbsd_hil("repro", "--kernel", str(k), "--retrieve", "ssh", "--artifacts", str(tmp_path / "a"))
    assert r.returncode == 2 and "has no userland: use --retrieve disk, or --image/--release" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


def test_repro_refuses_compression_for_a_bare_kernel(tmp_path):
    k = tmp_path / "kernel"
    k.write_bytes(b"\x7fELF")
    r = fbsd_hil("repro", "--kernel", str(k), "--compression", "zstd", "--artifacts", str(tmp_path / "a"))
    assert r.returncode == 2
    assert "--compression zstd is switched on with `dumpon -z/-Z` in a shell" in r.stderr
    assert "give a --root-image" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "args, said",
    [
        (["--root-image", "IMG"], "--root-image goes with --kernel"),
        (["--kernel", "K", "--root-image", "MISSING"], "root image {tmp}/MISSING does not exist"),
        (["--kernel", "K", "--retrieve", "savecore"], "--retrieve savecore reboots single-user"),
        (["--kernel", "K", "--device", "swap"], "--device swap runs `dumpon /dev/vtbd0p2` in a shell"),
        (["--kernel", "K", "--root-image", "IMG", "--swap-mib", "4"], "--swap-mib sizes the swap partition"),
    ],
)
def test_repro_root_image_arguments_are_checked_before_anything_boots(tmp_path, args, said):
    (tmp_path / "K").write_bytes(b"\x7fELF")
    (tmp_path / "IMG").write_bytes(b"")
    args = [str(tmp_path / a) if a in ("K", "IMG", "MISSING") else a for a in args]
    if "--kernel" not in args and "--image" not in args:
        args = ["--image", str(tmp_path / "IMG"), *args]
    r = fbsd_hil("repro", *args, "--artifacts", str(tmp_path / "a"))
    assert r.returncode == 2 and said.format(tmp=tmp_path) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


def test_repro_never_overwrites_a_report(tmp_path):
    k = tmp_path / "kernel"
    k.write_bytes(b"\x7fELF")
    (tmp_path / "r.json").write_text("{}")
    r = fbsd_hil("repro", "--kernel", str(k), "--report", str(tmp_path / "r.json"))
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr
    assert (tmp_path / "r.json").read_text() == "{}"


@pytest.mark.vm
def test_repro_on_a_kernel_that_never_waits_for_root_fails_with_evidence(tmp_path):
    """The stand-in: a tiny 64-bit ELF GRUB boots (it prints one line on COM1 and stops). The run must
    end at the boot step with one line naming the evidence directory, which holds the transcript."""
    sys.path.insert(0, str(REPO / "tests" / "images"))
    from images_tiny_kernel import MARKER, build_tiny_kernel

    from harness.vm.libvirt_conn import LibvirtUnavailable, connect

    try:
        connect().close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd is not reachable: {str(exc).splitlines()[0]}")
    kernel = build_tiny_kernel(tmp_path)
    r = fbsd_hil(
        "repro",
        "--kernel",
        str(kernel),
        "--boot-timeout",
        "15",
        "--accel",
        "tcg",
        "--artifacts",
        str(tmp_path / "art"),
    )
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fbsd-hil repro: FAILED at boot: ") and "root_wait" in last
    evidence = Path(last.rsplit("(evidence: ", 1)[1].rstrip(")"))
    assert evidence.parent == tmp_path / "art"
    assert MARKER in (evidence / "console-transcript.log").read_text(errors="replace")
    assert "<domain" in (evidence / "domain.xml").read_text()
    error = (evidence / "error.txt").read_text()  # the whole message with the evidence it carries
    assert error.startswith("StageTimeout: ") and "root_wait" in error and "QEMU log tail" in error
    assert not any("QEMU log tail" in ln for ln in r.stderr.splitlines()), "evidence sections stay in files"
    assert (evidence / "boot.iso").is_file() and (evidence / "config.json").is_file()
    assert "[   " in r.stderr  # progress lines with elapsed seconds


def test_serial_pty_from_live_domain_xml():
    xml = """<domain><devices>
      <serial type='pty'><source path='/dev/pts/7'/><target port='0'/></serial>
      <console type='pty' tty='/dev/pts/7'/></devices></domain>"""
    assert serial_pty(xml) == "/dev/pts/7"
    with pytest.raises(ConsoleAttachError, match="no pty serial console"):
        serial_pty("<domain><devices><serial type='file'/></devices></domain>")


def test_relay_copies_both_ways_until_the_escape_byte():
    """A real pty pair stands for the guest's serial port; pipes stand for the user's terminal."""
    import tty

    guest_side, host_side = os.openpty()
    tty.setraw(host_side)  # as attach() does: bytes pass without line discipline
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(guest_side, b"db> ")
    os.write(in_w, b"show registers\r")
    import threading

    result = {}
    t = threading.Thread(target=lambda: result.setdefault("why", relay(host_side, in_r, out_w)))
    t.start()
    deadline = time.monotonic() + 5
    got = b""
    while b"show registers" not in got and time.monotonic() < deadline:
        if select.select([guest_side], [], [], 0.2)[0]:
            got += os.read(guest_side, 100)
    os.write(in_w, b"bt\x1dignored")
    t.join(5)
    assert result["why"] == "detached"
    assert b"show registers" in got
    assert select.select([out_r], [], [], 5)[0]
    assert os.read(out_r, 100) == b"db> "
    for fd in (guest_side, host_side, in_r, in_w, out_r, out_w):
        os.close(fd)


@pytest.mark.vm
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_repro_killed_by_sigterm_destroys_its_guest(tmp_path, sig):
    """`timeout` or a cancelled CI job sends SIGTERM: the guest must not keep running afterwards (it did,
    at 73% CPU, until the next `doctor`), and no traceback is printed."""
    import signal

    sys.path.insert(0, str(REPO / "tests" / "images"))
    from images_tiny_kernel import build_tiny_kernel

    from harness.vm.libvirt_conn import LibvirtUnavailable, connect

    try:
        connect().close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd is not reachable: {str(exc).splitlines()[0]}")
    kernel = build_tiny_kernel(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "repro", "--kernel", str(kernel), "--boot-timeout", "300",
         "--accel", "tcg", "--artifacts", str(tmp_path / "art")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    name = None
    stderr_lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while name is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            stderr_lines.append(line)
            if " started (" in line:
                name = line.split("guest ", 1)[1].split(" started", 1)[0]
        assert name, "".join(stderr_lines)
        time.sleep(2)  # the guest is booting now
        proc.send_signal(getattr(signal, sig))
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(stderr_lines) + rest
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert "Traceback" not in err and f"interrupted by {sig}" in err
    conn = connect()
    try:
        assert name not in [d.name() for d in conn.listAllDomains()], f"{name} still defined/running"
    finally:
        conn.close()
    from harness.vm.reaper import REGISTRY_DIR

    assert not (REGISTRY_DIR / f"{name}.json").exists(), "the guest's registry entry was left behind"


def test_a_multi_line_failure_prints_its_detail_above_the_verdict():
    from harness.cli.repro import DETAIL_LINES, _detail_lines

    exc = RuntimeError("kernel stayed silent\n\nlikely cause: the GRUB module\nevidence: boot.iso.json\n")
    assert _detail_lines(exc) == ["likely cause: the GRUB module", "evidence: boot.iso.json"]
    many = RuntimeError("\n".join(f"line {i}" for i in range(DETAIL_LINES + 5)))
    lines = _detail_lines(many)
    assert len(lines) == DETAIL_LINES + 1 and lines[-1] == "... (4 more lines in error.txt)"
    assert _detail_lines(RuntimeError("one line only")) == []
    tails = RuntimeError("no root_wait\nlikely cause: X\n--- QEMU log tail ---\nEFER=0\n--- console tail ---")
    assert _detail_lines(tails) == ["likely cause: X"]
