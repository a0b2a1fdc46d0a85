"""GRUB ISOs for bare kernels: the relocator fix (bytes, refusal, caching) and a real QEMU boot
of a tiny freestanding kernel, with and without the fix."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from images_tiny_kernel import DEBUG_EXIT_STATUS, MARKER, build_tiny_kernel, build_tiny_module

from images.errors import GrubError
from images.grub_iso import (
    SYSTEM_GRUB_DIR,
    build_kernel_iso,
    grub_cfg,
    inspect_bsd_module,
    inspect_relocator,
    normalise_kenv,
    patch_bsd_module,
    patch_relocator,
    patched_grub_dir,
    selected_fixes,
)

SYSTEM_RELOCATOR = SYSTEM_GRUB_DIR / "relocator.mod"
SYSTEM_BSD = SYSTEM_GRUB_DIR / "bsd.mod"
needs_grub = pytest.mark.skipif(
    not SYSTEM_RELOCATOR.is_file() or shutil.which("grub-mkrescue") is None,
    reason="needs Debian grub-pc-bin + grub-common (harness/data/debian-packages.txt)",
)


def _objdump_jump(module: Path, tmp_path: Path) -> tuple[int, int]:
    """(jmp target, grub_relocator64_rip) by disassembling .text as x86-64 with binutils."""
    text = tmp_path / "text.bin"
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(module), str(text)], check=True)
    symbols = subprocess.run(["nm", str(module)], capture_output=True, text=True, check=True).stdout
    rip = int(re.search(r"^([0-9a-f]+) T grub_relocator64_rip$", symbols, re.M)[1], 16)
    asm = subprocess.run(
        ["objdump", "-D", "-b", "binary", "-m", "i386:x86-64", f"--start-address={rip - 12:#x}",
         f"--stop-address={rip:#x}", str(text)],
        capture_output=True, text=True, check=True,
    ).stdout
    target = re.search(r"jmp\s+\*0x[0-9a-f]+\(%rip\)\s+# 0x([0-9a-f]+)", asm)
    assert target, asm
    return int(target[1], 16), rip


@needs_grub
def test_system_relocator_has_the_known_defect_and_the_copy_is_fixed(tmp_path):
    original = SYSTEM_RELOCATOR.read_bytes()
    assert inspect_relocator(original).state == "defective"
    target, rip = _objdump_jump(SYSTEM_RELOCATOR, tmp_path)
    assert target == rip - 4, "Debian's jmp reads its target 4 bytes before grub_relocator64_rip"

    moddir = patched_grub_dir(cache=tmp_path / "cache")
    fixed = moddir / "relocator.mod"
    target, rip = _objdump_jump(fixed, tmp_path)
    assert target == rip
    assert inspect_relocator(fixed.read_bytes()).state == "patched"
    diff = [i for i, (a, b) in enumerate(zip(original, fixed.read_bytes(), strict=True)) if a != b]
    assert len(diff) == 1, "exactly one byte (the displacement) changes"
    assert SYSTEM_RELOCATOR.read_bytes() == original, "the system module is never modified"
    assert sorted(p.name for p in moddir.iterdir()) == sorted(p.name for p in SYSTEM_GRUB_DIR.iterdir())
    stamp_json = json.loads((moddir.parent / "fbsd-hil.json").read_text())
    assert stamp_json["relocator_sha256"] == hashlib.sha256(original).hexdigest()
    assert stamp_json["relocator_state"] == "defective"
    assert stamp_json["fixes"] == ["relocator", "kernel-type"]
    assert moddir.parent.parent == tmp_path / "cache" / "grub"

    stamp = moddir.stat().st_mtime_ns
    assert patched_grub_dir(cache=tmp_path / "cache") == moddir
    assert moddir.stat().st_mtime_ns == stamp, "second call reuses the cached copy"


@needs_grub
def test_unknown_bytes_are_refused_and_a_correct_module_is_left_alone():
    original = SYSTEM_RELOCATOR.read_bytes()
    state = inspect_relocator(original)
    rip = state.rip_file_offset

    other = bytearray(original)
    other[rip - 8] = 0x08  # some other displacement: a GRUB build we do not know
    with pytest.raises(GrubError, match=r"unknown bytes before grub_relocator64_rip.*refusing"):
        patch_relocator(bytes(other), source="other/relocator.mod")

    upstream = bytearray(original)
    upstream[rip - 11 : rip] = bytes.fromhex("90909090 fc ff25 00000000")  # jmp right before its target
    data, found = patch_relocator(bytes(upstream))
    assert found.state == "correct" and data == bytes(upstream)

    with pytest.raises(GrubError, match="not an ELF GRUB module"):
        inspect_relocator(b"not an elf at all", source="junk.mod")


def _type_string_refs(module: Path) -> list[str]:
    """The strings the kfreebsd code passes as a module type, read with binutils (objdump -r) and the
    section bytes, independently of images.grub_iso's own ELF walk."""
    relocs = subprocess.run(["objdump", "-r", "-j", ".text", str(module)], capture_output=True, text=True,
                            check=True).stdout
    rodata = Path(str(module) + ".str")
    subprocess.run(["objcopy", "-O", "binary", "-j", ".rodata.str1.1", str(module), str(rodata)], check=True)
    strings = rodata.read_bytes()
    text = Path(str(module) + ".text")
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(module), str(text)], check=True)
    code = text.read_bytes()
    found = []
    for m in re.finditer(r"^([0-9a-f]+) R_386_32\s+\.rodata\.str1\.1$", relocs, re.M):
        addend = int.from_bytes(code[int(m[1], 16) : int(m[1], 16) + 4], "little")
        value = strings[addend : strings.index(b"\0", addend)]
        if value.endswith(b" kernel"):  # the string and what follows up to 13 bytes (padding shows)
            found.append(strings[addend : addend + 13].decode("latin-1"))
    return found


@needs_grub
def test_system_bsd_module_registers_elf64_kernel_and_the_copy_registers_elf_kernel(tmp_path):
    original = SYSTEM_BSD.read_bytes()
    found = inspect_bsd_module(original, source=str(SYSTEM_BSD))
    assert found.state == "defective" and found.kernel_type == "elf64 kernel"
    assert original[found.string_file_offset : found.string_file_offset + 13] == b"elf64 kernel\0"
    copy = tmp_path / "orig-bsd.mod"
    copy.write_bytes(original)
    assert sorted(r.split("\0")[0] for r in _type_string_refs(copy)) == ["elf kernel", "elf64 kernel"]

    moddir = patched_grub_dir(cache=tmp_path / "cache")
    fixed = (moddir / "bsd.mod").read_bytes()
    assert inspect_bsd_module(fixed).state == "patched"
    refs = _type_string_refs(moddir / "bsd.mod")
    assert sorted(r.split("\0")[0] for r in refs) == ["elf kernel", "elf kernel"], refs
    assert "elf kernel\0\0\0" in refs, "the amd64 string is NUL-padded to its old 13 bytes"
    diff = [i for i, (a, b) in enumerate(zip(original, fixed, strict=True)) if a != b]
    assert diff and min(diff) >= found.string_file_offset and max(diff) < found.string_file_offset + 13
    assert SYSTEM_BSD.read_bytes() == original, "the system module is never modified"
    # idempotent: patching the patched module changes nothing; the stamp records the fix
    again, state = patch_bsd_module(fixed)
    assert again == fixed and state.state == "patched"
    stamp = json.loads((moddir.parent / "fbsd-hil.json").read_text())
    assert stamp["states"]["kernel-type"]["state"] == "defective"
    assert stamp["states"]["kernel-type"]["string_file_offset"] == found.string_file_offset
    assert stamp["amd64_kernel_type"] == "elf kernel"
    assert stamp["bsd_sha256"] == hashlib.sha256(original).hexdigest()

    only_relocator = patched_grub_dir(cache=tmp_path / "cache", fixes=["relocator"])
    assert only_relocator != moddir, "each fix set has its own cached copy"
    assert (only_relocator / "bsd.mod").read_bytes() == original
    assert inspect_relocator((only_relocator / "relocator.mod").read_bytes()).state == "patched"


@needs_grub
def test_unknown_bsd_module_layouts_are_refused():
    original = SYSTEM_BSD.read_bytes()
    at = inspect_bsd_module(original).string_file_offset
    renamed = bytearray(original)
    renamed[at : at + 13] = b"elf65 kernel\0"  # a kernel type string we do not know
    with pytest.raises(GrubError, match=r"other/bsd.mod: the kfreebsd module type strings are not laid out.*"
                       r"refusing to patch it blindly"):
        patch_bsd_module(bytes(renamed), source="other/bsd.mod")
    with pytest.raises(GrubError, match="not GRUB's bsd module"):
        inspect_bsd_module(SYSTEM_RELOCATOR.read_bytes(), source="relocator.mod")
    with pytest.raises(GrubError, match="not an ELF GRUB module"):
        inspect_bsd_module(b"\x7fELF garbage", source="junk.mod")
    other = bytearray(original)
    other[at : at + 13] = b"elf32 kernel\0"
    with pytest.raises(GrubError, match="'elf32 kernel'"):
        inspect_bsd_module(bytes(other))


@needs_grub
def test_a_bsd_module_that_already_registers_elf_kernel_is_left_alone(tmp_path):
    """A GRUB whose amd64 branch passes "elf kernel" too: made by pointing the amd64 branch's
    relocation (REL: the addend sits in the instruction) at the i386 branch's string."""
    original = SYSTEM_BSD.read_bytes()
    copy = tmp_path / "bsd.mod"
    copy.write_bytes(original)
    headers = subprocess.run(["objdump", "-h", str(copy)], capture_output=True, text=True, check=True).stdout
    section = r"^\s*\d+\s+(\S+)\s+\S+\s+\S+\s+\S+\s+(\S+)"  # Idx Name Size VMA LMA File-off
    offsets = {m[1]: int(m[2], 16) for m in re.finditer(section, headers, re.M)}
    relocs = subprocess.run(["objdump", "-r", "-j", ".text", str(copy)], capture_output=True, text=True,
                            check=True).stdout
    strings = offsets[".rodata.str1.1"]
    at64 = inspect_bsd_module(original).string_file_offset
    at32 = original.index(b"\0elf kernel\0", strings) + 1
    data = bytearray(original)
    changed = 0
    for m in re.finditer(r"^([0-9a-f]+) R_386_32\s+\.rodata\.str1\.1$", relocs, re.M):
        place = offsets[".text"] + int(m[1], 16)
        if int.from_bytes(original[place : place + 4], "little") == at64 - strings:
            data[place : place + 4] = (at32 - strings).to_bytes(4, "little")
            changed += 1
    assert changed == 1
    same, found = patch_bsd_module(bytes(data))
    assert found.state == "correct" and found.kernel_type == "elf kernel" and same == bytes(data)


def test_fix_selection(monkeypatch):
    monkeypatch.delenv("FBSD_HIL_GRUB_FIXES", raising=False)
    assert selected_fixes() == ("relocator", "kernel-type")
    monkeypatch.setenv("FBSD_HIL_GRUB_FIXES", "relocator")
    assert selected_fixes() == ("relocator",)
    monkeypatch.setenv("FBSD_HIL_GRUB_FIXES", "none")
    assert selected_fixes() == ()
    assert selected_fixes(["kernel-type", "relocator"]) == ("relocator", "kernel-type")
    with pytest.raises(GrubError, match="unknown GRUB fix 'bogus'"):
        selected_fixes(["bogus"])


def test_kenv_and_grub_cfg():
    assert normalise_kenv(["debug.minidump=0", "dumpdev=/dev/vtbd1", "empty="]) == {
        "debug.minidump": "0", "dumpdev": "/dev/vtbd1", "empty": ""}
    for bad in (["novalue"], ["bad key=1"], {"k": "it's"}, {"k": "a\nb"}):
        with pytest.raises(GrubError):
            normalise_kenv(bad)

    waiting = grub_cfg("kernel", {"dumpdev": "/dev/vtbd1", "debug.minidump": "1"})
    assert "kfreebsd /boot/kernel/kernel -h" in waiting
    for line in (
        "set kFreeBSD.console='comconsole'",
        "set kFreeBSD.boot_serial='YES'",
        "set kFreeBSD.dumpdev='/dev/vtbd1'",
        "set kFreeBSD.debug.minidump='1'",
        "set kFreeBSD.vfs.root.mountfrom='devfs:/dev/nosuchdisk'",
        "set kFreeBSD.vfs.mountroot.timeout='3600'",
    ):
        assert line in waiting
    rooted = grub_cfg("kernel", {}, root="ufs:/dev/vtbd0p4", boot_flags="-h -d")
    assert "set kFreeBSD.vfs.root.mountfrom='ufs:/dev/vtbd0p4'" in rooted
    assert "nosuchdisk" not in rooted and "kfreebsd /boot/kernel/kernel -h -d" in rooted
    with pytest.raises(GrubError, match="boot flags"):
        grub_cfg("kernel", {}, boot_flags="-h; reboot")
    with_module = grub_cfg("kernel", {}, modules=["virtio_blk.ko"])
    assert with_module.index("kfreebsd /boot/kernel/kernel") < with_module.index(
        "kfreebsd_module_elf /boot/kernel/virtio_blk.ko")
    with pytest.raises(GrubError, match="module file name"):
        grub_cfg("kernel", {}, modules=["../x.ko"])


def test_build_refuses_missing_kernel_and_existing_output(tmp_path):
    with pytest.raises(GrubError, match="does not exist"):
        build_kernel_iso(tmp_path / "nope", {}, tmp_path / "x.iso")
    kernel = tmp_path / "k"
    kernel.write_bytes(b"\x7fELF")
    existing = tmp_path / "mine.iso"
    existing.write_text("user data")
    with pytest.raises(GrubError, match="refusing to overwrite"):
        build_kernel_iso(kernel, {}, existing)
    assert existing.read_text() == "user data"


def _boot(iso: Path, workdir: Path, *, trace: bool = False) -> tuple[int, str, str]:
    """Boot the ISO under TCG; returns (QEMU exit status, serial output, QEMU debug log)."""
    serial = workdir / f"{iso.stem}.serial"
    log = workdir / f"{iso.stem}.qemu.log"
    cmd = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none",
        "-no-reboot", "-serial", f"file:{serial}", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-cdrom", str(iso), "-boot", "d",
    ]
    if trace:
        cmd += ["-d", "int,cpu_reset", "-D", str(log)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    text = serial.read_bytes().decode("latin-1") if serial.exists() else ""
    qemu_log = log.read_text(errors="replace") if log.exists() else ""
    return proc.returncode, text, qemu_log + proc.stderr


@pytest.mark.vm
@needs_grub
def test_patched_iso_hands_over_to_a_64bit_kernel_and_unpatched_triple_faults(tmp_path):
    kernel = build_tiny_kernel(tmp_path)
    cache = tmp_path / "cache"

    module = build_tiny_module(tmp_path)
    patched = build_kernel_iso(kernel, ["debug.minidump=1"], tmp_path / "patched.iso", cache=cache,
                               modules=[module])
    status, serial, log = _boot(patched, tmp_path)
    assert "GRUB: booting" in serial, serial
    assert "error:" not in serial, f"GRUB reported an error (kernel or module load):\n{serial}"
    line = re.search(re.escape(MARKER) + r"(0x[0-9a-f]{16})", serial)
    assert line, f"no marker from the tiny kernel; serial output:\n{serial[-2000:]}\n{log[-2000:]}"
    assert int(line[1], 16) >> 32 == 0xFFFFFFFF, "entered at the kernel's high virtual address"
    assert status == DEBUG_EXIT_STATUS

    unpatched = build_kernel_iso(kernel, ["debug.minidump=1"], tmp_path / "unpatched.iso", patch=False)
    status, serial, log = _boot(unpatched, tmp_path, trace=True)
    assert "GRUB: booting" in serial, serial
    assert MARKER not in serial
    assert "Triple fault" in log
    # The jump lands on entry << 32 (e_entry low half 0x80200000 shifted up): non-canonical, #GP.
    assert "RIP=8020000000000000" in log
    assert status == 0  # -no-reboot: QEMU exits on the triple-fault reset


@pytest.mark.vm
@needs_grub
def test_iso_boots_through_the_harness_guest_layer(tmp_path):
    """The same ISO as a libvirt domain via harness.vm.guest.Guest (IsoBoot + a raw dump disk, as the
    harness boots bare kernels): GRUB's output and the kernel's line arrive on the serial console."""
    from harness.util.deadline import Deadline
    from harness.vm.guest import ExtraDisk, Guest, GuestSpec, IsoBoot
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable (`fbsd-hil doctor --fix` starts it): {exc}")
    kernel = build_tiny_kernel(tmp_path)
    iso = build_kernel_iso(kernel, {"dumpdev": "/dev/vtbd0"}, tmp_path / "k.iso", cache=tmp_path / "cache")
    iso.chmod(0o644)
    dump = tmp_path / "dump.raw"
    dump.write_bytes(bytes(1 << 20))
    spec = GuestSpec(memory_mib=256, vcpus=1, accel="tcg", boot=IsoBoot(iso), disks=(ExtraDisk(path=dump),),
                     on_reboot="destroy", name_prefix="fbsd-hil-grubiso")
    with Guest(spec, tmp_path) as guest:
        dl = Deadline(120, "GRUB ISO to tiny kernel")
        guest.console.expect({"grub": r"GRUB: booting"}, dl)
        match = guest.console.expect({"kernel": re.escape(MARKER) + r"(0x[0-9a-f]{16})"}, dl)
        assert int(match.match.group(1), 16) >> 32 == 0xFFFFFFFF
