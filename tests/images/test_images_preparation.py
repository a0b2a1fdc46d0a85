"""The preparation recipe without a guest: its exact shell commands run here on a scratch root
(POSIX sh + sed -i.SUFFIX behave alike on FreeBSD and Debian), through the harness's real Console
and ConsoleShell on a local pty, and the prepared-image bookkeeping. The real thing is `hil`."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pexpect
import pytest

from images.cache import ImageCache
from images.errors import PreparationError
from images.preparation import (
    DUMP_DEVICES,
    PreparedImage,
    ensure_ssh_keypair,
    read_host_key,
    recipe,
    recipe_digest,
    run_recipe,
    set_conf_line,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZiaGlsLXRlc3Qta2V5LW5vdC1yZWFsLWF0LWFsbA fbsd-hil"

# What a BASIC-CI image ships that the recipe must override (shapes as in FreeBSD's files).
BASIC_CI_FILES = {
    "boot/loader.conf": 'autoboot_delay="-1"\nconsole="comconsole,vidconsole"\nbeastie_disable="YES"\n',
    "etc/rc.conf": 'hostname="freebsd"\ndumpdev="AUTO"\nsshd_enable="YES"\nddb_enable="YES"\n',
    "etc/ddb.conf": "script kdb.enter.panic=textdump set; capture on; run lockinfo; show pcpu; "
    "bt -a; acttrace; show alllocks; call doadump; reset\n",
    "etc/ssh/sshd_config": "#PermitRootLogin no\nPermitRootLogin yes\nPermitEmptyPasswords yes\n"
    "Subsystem sftp /usr/libexec/sftp-server\nMatch User nobody\n    X11Forwarding no\n",
}


def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "guest-root"
    for rel, text in BASIC_CI_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run_commands_with_sh(root: Path) -> None:
    for step in recipe(dump_device="/dev/vtbd1", authorized_key=KEY, root=str(root)):
        for command in step.commands:
            proc = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False)
            assert proc.returncode == 0, f"{step.name}: {command}\n{proc.stderr}"


def assert_prepared_tree(root: Path) -> None:
    loader = (root / "boot/loader.conf").read_text().splitlines()
    assert 'autoboot_delay="1"' in loader and 'autoboot_delay="-1"' not in loader
    assert 'console="comconsole"' in loader
    assert 'dumpdev="/dev/vtbd1"' in loader
    assert 'debug.kdb.break_to_debugger="1"' in loader
    assert 'debug.kdb.alt_break_to_debugger="1"' in loader
    assert 'beastie_disable="YES"' in loader, "unrelated settings are kept"
    sysctl = (root / "etc/sysctl.conf").read_text().splitlines()
    assert sysctl == ["debug.kdb.break_to_debugger=1", "debug.kdb.alt_break_to_debugger=1"]
    rc = (root / "etc/rc.conf").read_text().splitlines()
    assert rc == ['hostname="freebsd"', 'dumpdev="/dev/vtbd1"', 'savecore_enable="YES"', 'ddb_enable="NO"',
                  'sshd_enable="YES"']
    ddb = (root / "etc/ddb.conf").read_text()
    assert [line for line in ddb.splitlines() if line.strip() and not line.startswith("#")] == []
    assert (root / "etc/ddb.conf.fbsd-hil-orig").read_text() == BASIC_CI_FILES["etc/ddb.conf"]
    sshd = (root / "etc/ssh/sshd_config").read_text().splitlines()
    assert sshd[0] == "PermitRootLogin without-password", "first value wins in sshd_config"
    assert sum("PermitRootLogin" in line and not line.startswith("#") for line in sshd) == 1
    assert sshd[-2:] == ["Match User nobody", "    X11Forwarding no"]
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_text().splitlines() == [KEY]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "root/.ssh").stat().st_mode) == 0o700
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().startswith("ssh-ed25519 ")
    assert not list(root.rglob("*.fbsdhil")) and not list(root.rglob("*.new"))


def test_recipe_commands_do_what_they_say_and_are_idempotent(tmp_path):
    root = scratch_root(tmp_path)
    run_commands_with_sh(root)
    assert_prepared_tree(root)
    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    run_commands_with_sh(root)  # a second run changes nothing
    assert_prepared_tree(root)
    assert (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text() == host_key


def test_recipe_runs_through_console_shell_on_a_real_pty(tmp_path):
    """The same steps through harness.vm.console.Console + harness.freebsd ConsoleShell, with a tiny
    getty stand-in (prints `login: `, then execs an interactive sh) on a local pty."""
    from harness.freebsd.session import ConsoleShell
    from harness.vm.console import Console

    root = scratch_root(tmp_path)
    getty = "printf 'login: '; read user; exec /bin/sh -i"
    env = {k: v for k, v in os.environ.items() if k not in ("PS1", "ENV")}
    spawn = pexpect.spawn("/bin/sh", ["-c", getty], env=env, encoding=None, timeout=30)
    transcript = tmp_path / "console.log"
    with Console(spawn, transcript=transcript, name="getty-stand-in") as console:
        shell = ConsoleShell(console)
        shell.login(60)
        steps = recipe(dump_device="/dev/vtbd1", authorized_key=KEY, root=str(root))
        done = run_recipe(shell, steps, deadline=60)
        host_key = read_host_key(shell, path=str(root / "etc/ssh/ssh_host_ed25519_key.pub"))
        with pytest.raises(PreparationError, match=r"step 'broken' failed: `false` exited 1"):
            from images.preparation import Step

            run_recipe(shell, [Step("broken", "shows the evidence", ("false",))], deadline=30)
    spawn.close(force=True)
    assert [d["name"] for d in done] == [s.name for s in steps]
    assert host_key.startswith("ssh-ed25519 AAAA")
    assert host_key in (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text()
    assert_prepared_tree(root)


def test_dump_device_follows_the_bus_and_bad_input_is_refused():
    assert DUMP_DEVICES == {"virtio": "/dev/vtbd1", "sata": "/dev/ada1"}
    sata = recipe(dump_device=DUMP_DEVICES["sata"], authorized_key=KEY)
    assert any("dumpdev=\"/dev/ada1\"" in c for s in sata for c in s.commands)
    with pytest.raises(PreparationError, match="dump device"):
        recipe(dump_device="/dev/vtbd1; reboot", authorized_key=KEY)
    with pytest.raises(PreparationError, match="public key"):
        recipe(dump_device="/dev/vtbd1", authorized_key="ssh-ed25519 AAAA' ; rm -rf /")
    with pytest.raises(PreparationError, match="plain variable name"):
        set_conf_line("/etc/rc.conf", "a b", "1")


def test_recipe_digest_changes_with_the_recipe():
    a = recipe_digest(recipe(dump_device="/dev/vtbd1", authorized_key=KEY))
    assert a == recipe_digest(recipe(dump_device="/dev/vtbd1", authorized_key=KEY))
    assert a != recipe_digest(recipe(dump_device="/dev/ada1", authorized_key=KEY))


def test_ssh_keypair_is_created_once_and_private(tmp_path):
    cache = ImageCache(tmp_path / "cache")
    first = ensure_ssh_keypair(cache)
    assert stat.S_IMODE(first.private_key.stat().st_mode) == 0o600
    assert first.public_key.startswith("ssh-ed25519 ") and first.public_key.endswith(" fbsd-hil")
    assert ensure_ssh_keypair(cache) == first
    # ssh-keygen agrees that the private key matches the public key we install
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(first.private_key)], capture_output=True,
                             text=True, check=True).stdout.split()[:2]
    assert derived == first.public_key.split()[:2]
    recipe(dump_device="/dev/vtbd1", authorized_key=first.public_key)  # accepted by the recipe


def test_prepared_image_record_round_trips_and_pins_the_host_key(tmp_path):
    prepared = PreparedImage(
        image=tmp_path / "p.qcow2", base=tmp_path / "b.qcow2", base_sha256="ab" * 32, release="14.3",
        disk_bus="virtio", dump_device="/dev/vtbd1", root="ufs:/dev/vtbd0p4",
        ssh_private_key=tmp_path / "id", ssh_public_key=KEY, host_key="ssh-ed25519 AAAAHOST",
    )
    assert PreparedImage.from_json(prepared.to_json()) == prepared
    assert prepared.known_hosts_line("127.0.0.1", 2222) == "[127.0.0.1]:2222 ssh-ed25519 AAAAHOST"
    assert prepared.known_hosts_line() == "127.0.0.1 ssh-ed25519 AAAAHOST"


def test_preparation_guest_spec_is_valid_for_the_guest_layer(tmp_path):
    """The spec prepare() hands to harness.vm.guest.Guest passes its validation and builds domain XML."""
    from harness.vm.domain_xml import build_domain_xml
    from images.preparation import _guest_spec

    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    dump = tmp_path / "dump.raw"
    dump.write_bytes(b"")
    for bus in ("virtio", "sata"):
        spec = _guest_spec(base, dump, disk_bus=bus, memory_mib=1024, vcpus=2, accel="tcg", uri=None)
        spec.validate()
        xml = build_domain_xml(spec, name="fbsd-hil-prepare-test", accel="tcg",
                               console_log=tmp_path / "c.log", boot_disk=base)
        disks = re.findall(r"<disk[^>]*>.*?</disk>", xml, re.S)
        assert len(disks) == 2 and "dump.raw" in disks[1], xml
        for disk in disks:  # boot and dump disk on the same bus: the dump disk is the second one
            assert re.search(rf"bus=[\"']{bus}[\"']", disk), disk
