"""Pure-Python parts of the guest layer: domain XML from a spec, spec validation, RAM layout, the
PhysicalMemoryImage mapping, the save-image header rewrite and the reaper's ownership rules."""

from __future__ import annotations

import os
import socket
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.vm import reaper
from harness.vm.domain_xml import (
    OWNER_NS,
    DiskImageBoot,
    ExtraDisk,
    GuestSpec,
    IsoBoot,
    KernelBoot,
    Owner,
    SpecError,
    UserNetwork,
    build_domain_xml,
)
from harness.vm.memory import GiB, MemoryRangeError, PhysicalMemoryImage, ram_ranges
from harness.vm.savestate import SAVE_HEADER, SAVE_MAGIC, _copy_state_with_xml

MiB = 1 << 20


def xml_for(spec: GuestSpec, **kw) -> ET.Element:
    kw.setdefault("name", "fbsd-hil-1-abc")
    kw.setdefault("accel", "tcg")
    kw.setdefault("console_log", Path("/w/console.log"))
    kw.setdefault("boot_disk", Path("/w/overlay.qcow2") if isinstance(spec.boot, DiskImageBoot) else None)
    return ET.fromstring(build_domain_xml(spec, **kw))


def test_disk_boot_xml_uses_the_overlay_and_extra_disks():
    spec = GuestSpec(
        memory_mib=1024,
        vcpus=2,
        boot=DiskImageBoot(Path("/img/base.raw")),
        disks=[ExtraDisk(Path("/w/dump.raw")), ExtraDisk(Path("/w/s.raw"), bus="sata", serial="DUMP1")],
        network=UserNetwork(),
    )
    owner = Owner(pid=42, host="h", boot_id="b", proc_start="7", registry="/r.json")
    root = xml_for(spec, owner=owner, host_port=2222, dac_label="+0:+0")
    assert root.get("type") == "qemu"
    assert root.find("memory").text == "1024" and root.find("vcpu").text == "2"
    disks = root.findall("./devices/disk")
    assert [d.find("source").get("file") for d in disks] == ["/w/overlay.qcow2", "/w/dump.raw", "/w/s.raw"]
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "sda"]
    assert disks[0].find("driver").get("type") == "qcow2"
    assert "/img/base.raw" not in ET.tostring(root, encoding="unicode")  # the base is only a backing file
    assert root.find("./devices/serial/log").get("file") == "/w/console.log"
    assert root.find(f"./metadata/{{{OWNER_NS}}}owner").get("pid") == "42"
    args = [a.get("value") for a in root.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert "user,id=fbhnet0,hostfwd=tcp:127.0.0.1:2222-:22" in args
    assert root.find("seclabel").get("type") == "static"


def test_shared_memory_backing():
    root = xml_for(GuestSpec(boot=KernelBoot(Path("/k")), shared_memory=True))
    assert root.find("./memoryBacking/source").get("type") == "file"
    assert root.find("./memoryBacking/access").get("mode") == "shared"
    assert xml_for(GuestSpec(boot=KernelBoot(Path("/k")))).find("memoryBacking") is None


def test_kernel_iso_and_kvm_variants():
    k = xml_for(GuestSpec(boot=KernelBoot(Path("/k"), Path("/i"), "console=ttyS0 a<b")), accel="kvm")
    assert k.get("type") == "kvm" and k.find("cpu").get("mode") == "host-passthrough"
    assert k.find("./os/kernel").text == "/k" and k.find("./os/cmdline").text == "console=ttyS0 a<b"
    iso = xml_for(GuestSpec(machine="q35", boot=IsoBoot(Path("/g.iso"))))
    assert iso.find("./os/type").get("machine") == "q35"
    cd = [d for d in iso.findall("./devices/disk") if d.get("device") == "cdrom"][0]
    assert cd.find("target").get("bus") == "sata" and cd.find("readonly") is not None


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"boot": None}, "boot is required"),
        ({"memory_mib": 8}, "memory_mib"),
        ({"accel": "hvf"}, "accel"),
        ({"machine": "virt"}, "machine"),
        ({"disks": [ExtraDisk(Path("/d"), bus="scsi")]}, "bus"),
        ({"disks": [ExtraDisk(Path("/d"), format="vmdk")]}, "format"),
        ({"name_prefix": "bad name"}, "name_prefix"),
    ],
)
def test_spec_validation_names_the_field(kw, msg):
    kw.setdefault("boot", KernelBoot(Path("/k")))
    with pytest.raises(SpecError, match=msg):
        GuestSpec(**kw).validate()


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = GuestSpec(boot=KernelBoot(Path("k"), Path("i")), disks=[ExtraDisk(Path("d.raw"))]).absolute()
    assert spec.boot.kernel == tmp_path / "k" and spec.boot.initrd == tmp_path / "i"
    assert spec.disks[0].path == tmp_path / "d.raw"
    assert GuestSpec(boot=IsoBoot(Path("x.iso"))).absolute().boot.iso == tmp_path / "x.iso"
    assert GuestSpec(boot=DiskImageBoot(Path("b.qcow2"))).absolute().boot.image == tmp_path / "b.qcow2"


def test_unresolved_accel_is_refused():
    with pytest.raises(SpecError, match="resolved"):
        xml_for(GuestSpec(boot=KernelBoot(Path("/k"))), accel="auto")


def test_ram_layout_has_the_pci_hole():
    assert ram_ranges("pc", 512 * MiB) == [(0, 512 * MiB)]
    assert ram_ranges("pc", 3 * GiB) == [(0, 3 * GiB)]
    assert ram_ranges("pc", 4 * GiB) == [(0, 3 * GiB), (4 * GiB, 1 * GiB)]
    assert ram_ranges("q35", 2 * GiB) == [(0, 2 * GiB)]
    assert ram_ranges("q35", 3 * GiB) == [(0, 2 * GiB), (4 * GiB, 1 * GiB)]
    with pytest.raises(ValueError, match="only pc and q35"):
        ram_ranges("microvm", GiB)


def test_physical_memory_image_maps_ranges(tmp_path):
    data = bytes(range(256)) * 64  # 16 KiB
    path = tmp_path / "img"
    path.write_bytes(data)
    img = PhysicalMemoryImage(path, [(0x100000000, 8192, 8192), (0, 8192, 0)])
    with img:
        assert img.ranges[0] == (0, 8192, 0)
        assert img.read(0x10, 4) == data[0x10:0x14]
        assert img.read(0x100000000 + 5, 3) == data[8192 + 5 : 8192 + 8]
        assert img.size == 16384
        with pytest.raises(MemoryRangeError, match="not inside guest RAM"):
            img.read(8190, 4)  # crosses the end of the low range
    with pytest.raises(ValueError, match="ranges need"):
        PhysicalMemoryImage(path, [(0, 32768, 0)])


def test_save_image_copy_rewrites_embedded_xml(tmp_path):
    xml = b"<domain><name>old</name><uuid>u1</uuid></domain>\x00"
    cookie = b"<cookie/>\x00"
    data_len = 4096
    payload = os.urandom(10000)
    src = tmp_path / "state.sav"
    header = SAVE_HEADER.pack(SAVE_MAGIC, 2, data_len, 1, 0, len(xml))
    src.write_bytes(header + (xml + cookie).ljust(data_len, b"\0") + payload)
    dst = tmp_path / "copy.sav"
    new = "<domain><name>a-much-longer-new-name</name><uuid>u2</uuid></domain>"
    _copy_state_with_xml(src, dst, new)
    out = dst.read_bytes()
    magic, version, dlen, running, compressed, cookie_off = SAVE_HEADER.unpack(out[: SAVE_HEADER.size])
    assert (magic, version, dlen, running, compressed) == (SAVE_MAGIC, 2, data_len, 1, 0)
    body = out[SAVE_HEADER.size : SAVE_HEADER.size + dlen]
    assert body[:cookie_off] == new.encode() + b"\0"
    assert body[cookie_off:].startswith(cookie)
    assert out[SAVE_HEADER.size + dlen :] == payload
    with pytest.raises(FileExistsError):
        _copy_state_with_xml(src, dst, new)
    bad = tmp_path / "bad.sav"
    bad.write_bytes(b"x" * 200)
    with pytest.raises(ValueError, match="not a libvirt QEMU save image"):
        _copy_state_with_xml(bad, tmp_path / "o.sav", new)
    assert struct.calcsize("<16s5I56x") == 92


def test_reaper_only_judges_provably_dead_owners():
    me = {
        "pid": str(os.getpid()),
        "host": socket.gethostname(),
        "boot-id": reaper.boot_id(),
        "proc-start": reaper.proc_start(os.getpid()),
    }
    assert not reaper.owner_gone(me)
    assert reaper.owner_gone({**me, "proc-start": "1"})  # pid reused by another process
    assert reaper.owner_gone({**me, "boot-id": "another-boot"})
    assert not reaper.owner_gone({**me, "host": "some-other-host", "pid": "999999999"})
    assert reaper.owner_gone({**me, "pid": "999999999"}) is True
    assert reaper.owner_from_xml("<domain><name>x</name></domain>") is None
