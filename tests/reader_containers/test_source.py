"""open_payload / detect on plain vmcores and on things that are not dumps."""

from __future__ import annotations

from pathlib import Path

import pytest

from reader import source
from reader.errors import FormatError, ReaderError


@pytest.mark.parametrize(
    ("name", "kind", "magic"),
    [
        ("vmcore-amd64-minidump", "minidump", b"minidump FreeBSD/amd64"),
        ("vmcore-amd64-full", "elf", b"\x7fELF"),
        ("vmcore-i386-minidump", "minidump", b"minidump FreeBSD/i386"),
        ("vmcore-arm64-minidump", "minidump", b"minidump FreeBSD/arm64"),
    ],
)
def test_plain_vmcores_map_read_only(lldb_vmcores, name: str, kind: str, magic: bytes) -> None:
    path = lldb_vmcores[name]
    assert source.detect(path) == kind
    with source.open_payload(path) as p:
        assert p.container == "plain" and p.header is None and p.path == path
        assert len(p.buffer) == path.stat().st_size
        assert bytes(p.buffer[: len(magic)]) == magic
        assert p.buffer.readonly
        with pytest.raises(TypeError):
            p.buffer[0] = 0
    assert len(p.buffer) == 0  # closed


def test_close_with_a_live_derived_view(lldb_vmcores) -> None:
    """A caller (e.g. numpy over the bitmap) may hold a view; close() must not raise."""
    import numpy as np

    p = source.open_payload(lldb_vmcores["vmcore-i386-minidump"])
    arr = np.frombuffer(p.buffer, dtype=np.uint8, count=4096)
    p.close()
    assert arr[:8].tobytes() == b"minidump"


def test_not_a_dump(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"hello world, this is not a kernel dump\n" * 100)
    with pytest.raises(FormatError) as e:
        source.open_payload(junk)
    assert "not a FreeBSD kernel dump" in str(e.value) and str(junk) in str(e.value) and e.value.offset == 0
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(FormatError) as e:
        source.open_payload(empty)
    assert "empty" in str(e.value)
    with pytest.raises(ReaderError) as e:
        source.open_payload(tmp_path / "missing")
    assert "missing" in str(e.value)
    with pytest.raises(ReaderError):
        source.open_payload(tmp_path)  # a directory


def test_encrypted_name_without_key_file_is_not_a_dump(tmp_path: Path) -> None:
    enc = tmp_path / "vmcore_encrypted.0"
    enc.write_bytes(b"\x93" * 8192)
    with pytest.raises(FormatError):
        source.open_payload(enc)
