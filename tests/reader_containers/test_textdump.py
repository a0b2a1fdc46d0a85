"""Textdumps: a block-reversed ustar stream on the device, as db_textdump.c writes it."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from reader import device, source, textdump
from reader.errors import FormatError, ReaderError
from tests.dumpwriter import containers as cw

# Text in the shape of the FreeBSD 12.1 transcripts (ddb `bt`, the panic of the "panic" run).
DDB = b"db:0:kdb.enter.panic>  bt\nTracing pid 0 tid 100000 td 0xffffffff81d0ea00\n" * 40
MSGBUF = b"---<<BOOT>>---\nCopyright (c) 1992-2019 The FreeBSD Project.\n" + b"x" * 3000 + b"\n"
PANIC = b"mountroot: unable to (re-)mount root."
VERSION = b"FreeBSD 12.1-STABLE r356059 GENERIC amd64\n"
CONFIG = b"options \tKDB\noptions \tDDB\n"
MEMBERS = [
    ("ddb.txt", DDB),
    ("config.txt", CONFIG),
    ("msgbuf.txt", MSGBUF),
    ("panic.txt", PANIC),
    ("version.txt", VERSION),
]


@pytest.fixture()
def image(tmp_path: Path) -> tuple[Path, bytes, cw.DeviceLayout]:
    tar = cw.textdump_tar(MEMBERS)
    img = tmp_path / "dump.img"
    lay = cw.write_textdump_image(img, tar, media_size=8 << 20, panicstring=PANIC.decode())
    return img, tar, lay


def test_device_textdump_is_found_and_read(image) -> None:
    img, tar, lay = image
    dd = device.find_dump(img)
    assert dd.is_textdump and dd.payload_length == len(tar) and dd.leader_offset == lay.leader
    td = textdump.open_textdump(img)
    assert td.ddb == DDB.decode() and td.msgbuf == MSGBUF.decode() and td.panic == PANIC.decode()
    assert td.version == VERSION.decode() and td.config == CONFIG.decode()
    assert list(td.members) == [n for n, _ in MEMBERS] and td.mtimes["ddb.txt"] == 1574000000
    assert td.header["kind"] == "text"


def test_extract_writes_textdump_tar_that_real_tar_reads(tmp_path: Path, image) -> None:
    img, tar, _ = image
    res = device.extract(img, tmp_path / "crash")
    assert res.kind == "textdump" and res.vmcore.name == "textdump.tar.0"
    assert res.vmcore.read_bytes() == tar  # blocks un-reversed, exactly
    assert "  Magic: FreeBSD Text Dump\n" in res.info.read_text()
    with tarfile.open(res.vmcore) as t:
        assert t.extractfile("panic.txt").read() == PANIC
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "-tf", str(res.vmcore)], check=True, capture_output=True, text=True)
        assert listing.stdout.split() == [n for n, _ in MEMBERS]
    # the saved tar reads through the same API
    assert textdump.open_textdump(res.vmcore).msgbuf == MSGBUF.decode()


def test_unpack_never_overwrites(tmp_path: Path, image) -> None:
    img, _, _ = image
    out = tmp_path / "td"
    written = textdump.extract_textdump(img, out)
    assert sorted(p.name for p in written) == sorted(n for n, _ in MEMBERS)
    assert (out / "ddb.txt").read_bytes() == DDB
    (out / "panic.txt").write_bytes(b"mine")
    (out / "ddb.txt").unlink()
    with pytest.raises(ReaderError) as e:
        textdump.extract_textdump(img, out)
    assert "overwrite" in str(e.value) and (out / "panic.txt").read_bytes() == b"mine"
    assert not (out / "ddb.txt").exists()  # checked before anything was written


def test_open_payload_on_a_textdump_says_what_to_do(tmp_path: Path, image) -> None:
    img, tar, _ = image
    with pytest.raises(FormatError) as e:
        source.open_payload(img)
    assert "textdump" in str(e.value) and "unpack" in str(e.value)
    tarfile_path = tmp_path / "textdump.tar.0"
    tarfile_path.write_bytes(tar)
    assert source.detect(tarfile_path) == "textdump-tar"
    with pytest.raises(FormatError) as e:
        source.open_payload(tarfile_path)
    assert "textdump" in str(e.value)


def test_textdump_header_keeps_dumpers_compression_field(tmp_path: Path) -> None:
    """dump_init_header() copies the dumper's compression into textdump headers; the data is plain."""
    tar = cw.textdump_tar(MEMBERS[-1:])
    img = tmp_path / "dump.img"
    cw.write_textdump_image(img, tar, compression=cw.COMP_GZIP)
    assert textdump.open_textdump(img).version == VERSION.decode()
    assert device.extract(img, tmp_path / "o").vmcore.read_bytes() == tar


def test_corrupt_ustar(tmp_path: Path) -> None:
    tar = bytearray(cw.textdump_tar(MEMBERS))
    tar[10] ^= 0x20  # a name byte; checksum now wrong
    p = tmp_path / "textdump.tar.0"
    p.write_bytes(bytes(tar))
    with pytest.raises(FormatError) as e:
        textdump.open_textdump(p)
    assert e.value.field == "chksum" and e.value.offset == 148
    short = cw.textdump_tar(MEMBERS)[:1024]
    p.write_bytes(short)
    with pytest.raises(ReaderError) as e:
        textdump.open_textdump(p)
    assert "ddb.txt" in str(e.value)
