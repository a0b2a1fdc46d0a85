"""Reading savecore's output from real UFS2 images made by Debian's makefs (no mount, no root).

The images are made by ``makefs -t ffs -o version=2`` (NetBSD's makefs, Debian package ``makefs``):
a real UFS2 writer that is not ours. makefs writes every block of a file (it makes no holes), so the
holes savecore leaves (runs of zero pages) are made by zeroing block pointers of a makefs image: one
direct block and a whole single-indirect block, which is what a sparse file's inode looks like.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from harness.freebsd.ufs import FREEBSD_UFS_GUID, SUPERBLOCK_OFFSETS, UfsError, UfsImage, copy_savecore_output

pytestmark = pytest.mark.skipif(shutil.which("makefs") is None, reason="Debian's makefs is not installed")

BIG = 150 << 20  # > 128 MiB: reaches the double indirect blocks with 32 KiB blocks


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _makefs(src: Path, image: Path, size: str) -> None:
    subprocess.run(
        ["makefs", "-t", "ffs", "-o", "version=2", "-s", size, str(image), str(src)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def crash_fs(tmp_path_factory):
    """A /var/crash as savecore leaves it: vmcore.0, vmcore.1 (150 MiB, sparse source), info.N, bounds."""
    root = tmp_path_factory.mktemp("ufs")
    src = root / "src"
    src.mkdir()
    (src / "bounds").write_text("2\n")
    (src / "vmcore.0").write_bytes(b"minidump FreeBSD/amd64\0" + os.urandom(70000))
    (src / "info.0").write_text("Dump header from device: /dev/vtbd0\n  Dump Status: good\n")
    with open(src / "vmcore.1", "wb") as f:  # sparse on the host; data at start, middle and end
        f.write(os.urandom(1 << 20))
        f.seek(80 << 20)
        f.write(os.urandom(3 << 20))
        f.seek(BIG - 7)
        f.write(b"THE-END")
    (src / "info.1").write_text("Dump header from device: /dev/vtbd0\n  Dump Status: good\n")
    os.symlink("vmcore.1", src / "vmcore.last")
    os.symlink("info.1", src / "info.last")
    image = root / "crash.ufs"
    _makefs(src, image, "200m")
    os.chmod(image, 0o444)
    return src, image


def test_reads_savecore_output_from_a_makefs_ufs2_image(crash_fs, tmp_path):
    src, image = crash_fs
    before = _sha(image)
    with UfsImage(image) as ufs:
        assert ufs.version == 2
        entries = ufs.listdir("/")
        assert entries["vmcore.last"].kind == "symlink" and entries["vmcore.last"].target == "vmcore.1"
        assert entries["vmcore.1"].size == BIG
    got = copy_savecore_output(image, tmp_path)
    assert got.number == 1 and got.bounds == 2 and got.compression == "none"
    assert got.vmcore == tmp_path / "vmcore.1"
    assert _sha(got.vmcore) == _sha(src / "vmcore.1")
    assert got.info.read_text() == (src / "info.1").read_text()
    assert _sha(image) == before  # the user's image is never modified


def test_picks_a_given_dump_number_and_never_overwrites(crash_fs, tmp_path):
    src, image = crash_fs
    got = copy_savecore_output(image, tmp_path, number=0)
    assert got.vmcore.read_bytes() == (src / "vmcore.0").read_bytes()
    with pytest.raises(FileExistsError):
        copy_savecore_output(image, tmp_path, number=0)


def _inode_offset(ufs: UfsImage, path: str) -> int:
    from dissect.ffs.ffs import fsbtodb, ino_to_fsba, ino_to_fsbo

    node = ufs.fs.get(path)
    return (
        ufs.offset
        + fsbtodb(ufs.fs, ino_to_fsba(ufs.fs, node.inum)) * 512
        + ino_to_fsbo(ufs.fs, node.inum) * ufs.fs.inode_size
    )


# struct ufs2_dinode: di_db[12] at byte 112, di_ib[3] at 208 (int64 each)
DI_DB, DI_IB = 112, 208


def test_holes_in_the_block_map_come_out_as_zeros_and_stay_sparse(crash_fs, tmp_path):
    src, image = crash_fs
    holed = tmp_path / "holed.ufs"
    shutil.copyfile(image, holed)
    with UfsImage(holed) as ufs:
        off = _inode_offset(ufs, "/vmcore.1")
        bsize = ufs.block_size
    with open(holed, "r+b") as f:  # a hole at direct block 3 and over the whole single indirect range
        f.seek(off + DI_DB + 3 * 8)
        f.write(struct.pack("<q", 0))
        f.seek(off + DI_IB)
        f.write(struct.pack("<q", 0))
    expected = bytearray((src / "vmcore.1").read_bytes())
    expected[3 * bsize : 4 * bsize] = bytes(bsize)
    nindir = bsize // 8
    expected[12 * bsize : (12 + nindir) * bsize] = bytes(nindir * bsize)
    out = tmp_path / "out"
    out.mkdir()
    got = copy_savecore_output(holed, out)
    assert hashlib.sha256(expected).hexdigest() == _sha(got.vmcore)
    assert os.stat(got.vmcore).st_blocks * 512 < BIG - nindir * bsize + (8 << 20)  # holes kept


def _gpt_disk(path: Path, fs_image: Path, start_lba: int = 2048) -> None:
    """A GPT disk (protective MBR, primary header + table, valid CRCs) with one freebsd-ufs partition."""
    fs_size = fs_image.stat().st_size
    sectors = start_lba + fs_size // 512 + 34
    entries = bytearray(128 * 128)
    last = start_lba + fs_size // 512 - 1
    entries[0:128] = (
        FREEBSD_UFS_GUID.bytes_le + uuid.uuid4().bytes_le + struct.pack("<QQQ", start_lba, last, 0)
    ).ljust(128, b"\0")
    hdr = bytearray(92)
    struct.pack_into(
        "<8sIIIIQQQQ16sQIII",
        hdr,
        0,
        b"EFI PART",
        0x10000,
        92,
        0,
        0,
        1,
        sectors - 1,
        34,
        sectors - 34,
        uuid.uuid4().bytes_le,
        2,
        128,
        128,
        zlib.crc32(entries),
    )
    struct.pack_into("<I", hdr, 16, zlib.crc32(hdr))
    with open(path, "wb") as out, open(fs_image, "rb") as fs:
        mbr = bytearray(512)
        mbr[446 + 4] = 0xEE
        struct.pack_into("<II", mbr, 446 + 8, 1, min(sectors - 1, 0xFFFFFFFF))
        mbr[510:512] = b"\x55\xaa"
        out.write(mbr)
        out.write(bytes(hdr).ljust(512, b"\0"))
        out.write(entries)
        out.seek(start_lba * 512)
        shutil.copyfileobj(fs, out, 1 << 22)
        out.truncate(sectors * 512)


def test_finds_the_file_system_in_a_gpt_freebsd_ufs_partition(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "vmcore.0").write_bytes(os.urandom(200000))
    (src / "info.0").write_text("info\n")
    fs = tmp_path / "fs.ufs"
    _makefs(src, fs, "8m")
    disk = tmp_path / "disk.img"
    _gpt_disk(disk, fs)
    with UfsImage(disk) as ufs:
        assert ufs.offset == 2048 * 512
    out = tmp_path / "out"
    out.mkdir()
    got = copy_savecore_output(disk, out)
    assert got.vmcore.read_bytes() == (src / "vmcore.0").read_bytes()


def test_no_dump_on_the_file_system_is_said_plainly(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bounds").write_text("1\n")
    fs = tmp_path / "empty.ufs"
    _makefs(src, fs, "4m")
    plain = r"holds no vmcore\.N \(savecore found no dump, or the dump was cleared\)"
    with pytest.raises(UfsError, match=plain):
        copy_savecore_output(fs, tmp_path)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_a_damaged_superblock_is_one_line_naming_the_image_and_offsets(crash_fs, tmp_path):
    _, image = crash_fs
    bad = tmp_path / "bad.ufs"
    shutil.copyfile(image, bad)
    with open(bad, "r+b") as f:  # the primary superblock and every place a copy is searched for
        for offset in SUPERBLOCK_OFFSETS:
            f.seek(offset + 1372)
            f.write(b"\0\0\0\0")
    with pytest.raises(UfsError) as e:
        copy_savecore_output(bad, tmp_path)
    msg = _one_line(e)
    assert str(bad) in msg and "65536" in msg and "0x19540119" in msg


def test_a_truncated_image_names_the_offset(crash_fs, tmp_path):
    _, image = crash_fs
    cut = tmp_path / "cut.ufs"
    with open(image, "rb") as f, open(cut, "wb") as out:
        out.write(f.read(40 << 20))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(UfsError) as e:
        copy_savecore_output(cut, out_dir)
    msg = _one_line(e)
    assert str(cut) in msg and ("truncated image" in msg or "outside the file system" in msg)


def test_a_block_address_outside_the_file_system_is_refused(crash_fs, tmp_path):
    _, image = crash_fs
    bad = tmp_path / "badptr.ufs"
    shutil.copyfile(image, bad)
    with UfsImage(bad) as ufs:
        off = _inode_offset(ufs, "/vmcore.0")
    with open(bad, "r+b") as f:
        f.seek(off + DI_DB + 8)
        f.write(struct.pack("<q", 1 << 40))
    with pytest.raises(UfsError) as e:
        copy_savecore_output(bad, tmp_path, number=0)
    msg = _one_line(e)
    assert "block 1" in msg and str(1 << 40) in msg and "outside the file system" in msg


def test_not_a_file_system_at_all(tmp_path):
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 20))
    with pytest.raises(UfsError) as e:
        UfsImage(junk)
    assert "no UFS superblock" in _one_line(e)
    with pytest.raises(UfsError, match="cannot open"):
        UfsImage(tmp_path / "missing.img")


def test_a_textdump_saved_by_savecore_is_found_by_its_last_link(tmp_path):
    """savecore names a textdump textdump.tar.N (links textdump.tar.last); the newer of the kinds wins,
    and the copy is a tar stream the textdump reader unpacks."""
    from harness.freebsd.savecore_disk import parse_savecore_output
    from reader.textdump import open_textdump
    from tests.dumpwriter.containers import textdump_tar

    src = tmp_path / "src"
    src.mkdir()
    (src / "bounds").write_text("2\n")
    (src / "vmcore.0").write_bytes(b"minidump FreeBSD/amd64\0" + os.urandom(4096))
    tar = textdump_tar([("ddb.txt", b"db> bt\n"), ("msgbuf.txt", b"boot\n"), ("version.txt", b"FreeBSD\n")])
    (src / "textdump.tar.1").write_bytes(tar)
    (src / "info.1").write_text("Dump header from device: /dev/vtbd0\n  Dump Status: good\n")
    os.symlink("vmcore.0", src / "vmcore.last")
    os.symlink("textdump.tar.1", src / "textdump.tar.last")
    image = tmp_path / "crash.ufs"
    _makefs(src, image, "4m")
    (tmp_path / "out").mkdir()
    (tmp_path / "out0").mkdir()
    got = copy_savecore_output(image, tmp_path / "out")
    assert got.number == 1 and got.vmcore.name == "textdump.tar.1" and got.info.name == "info.1"
    assert open_textdump(got.vmcore).members["ddb.txt"] == b"db> bt\n"
    assert copy_savecore_output(image, tmp_path / "out0", number=0).vmcore.name == "vmcore.0"
    said = "savecore 26 - - writing core to /var/crash/textdump.tar.1\nsavecore 26 - - dump saved\n"
    assert parse_savecore_output(said).number == 1
