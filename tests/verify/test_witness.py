"""The in-guest witness's choosing, placing, reading and judging, without a guest (harness.verify.witness)."""

from __future__ import annotations

import hashlib
import struct
from types import SimpleNamespace

import pytest

from harness.verify import witness as w

PAGE = 4096


def _elf(tmp_path, segments):
    """A minimal ELF64 file whose program headers are `segments`: (flags, vaddr, filesz)."""
    ph = b"".join(struct.pack("<IIQQQQQQ", 1, f, 0, va, va, sz, sz, PAGE) for f, va, sz in segments)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56,
                                                              len(segments), 64, 0, 0)
    path = tmp_path / "kernel"
    path.write_bytes(header + ph)
    return path


def test_pages_come_only_from_read_only_segments(tmp_path):
    text = 0xFFFFFFFF80200000
    kernel = _elf(tmp_path, [(5, text, 10 * PAGE + 100), (6, text + 11 * PAGE, 50 * PAGE)])
    pages = w.choose_pages(kernel, 4)
    assert [p.va for p in pages] == [text, text + 2 * PAGE, text + 5 * PAGE, text + 7 * PAGE]
    assert w.choose_pages(kernel, 50)[-1].va == text + 9 * PAGE  # never the partial last page, nor data


def test_a_kernel_without_read_only_pages_is_one_clear_error(tmp_path):
    with pytest.raises(w.WitnessError, match="no whole page in a read-only PT_LOAD"):
        w.choose_pages(_elf(tmp_path, [(7, 0xFFFFFFFF80200000, 3 * PAGE)]))
    junk = tmp_path / "junk"
    junk.write_bytes(b"MZ" + b"\0" * 100)
    with pytest.raises(w.WitnessError, match="not a little-endian ELF64"):
        w.choose_pages(junk)


def test_translate_walks_4k_and_2m_leaves():
    mem = bytearray(0x10000)

    def put(pa, value):
        mem[pa : pa + 8] = struct.pack("<Q", value)

    va = 0xFFFFFFFF80201000
    put(0x1000 + ((va >> 39) & 511) * 8, 0x2000 | 1)
    put(0x2000 + ((va >> 30) & 511) * 8, 0x3000 | 1)
    put(0x3000 + ((va >> 21) & 511) * 8, 0x4000 | 1)
    put(0x4000 + ((va >> 12) & 511) * 8, 0x7000 | 3)
    read = lambda pa, n: bytes(mem[pa : pa + n])  # noqa: E731
    assert w.translate(read, 0x1000, va + 5) == 0x7005
    put(0x3000 + ((va >> 21) & 511) * 8, 0x200000 | 0x80 | 1)
    assert w.translate(read, 0x1000, va) == 0x201000
    assert w.translate(read, 0x1000, 0xFFFFF80000000000) is None


def test_the_kmem_command_uses_the_page_number_dd_multiplies_unsigned():
    assert w.read_command("/dev/kmem", 0xFFFFFFFF80200000 // PAGE) == (
        f"dd if=/dev/kmem bs=4096 skip={0xFFFFFFFF80200} count=1 2>/dev/null | sha256"
    )


def _run(answers):
    def run(cmd):
        out, status = answers[cmd.split(" 2>")[0].split(" of=")[0] + (" of" if " of=" in cmd else "")]
        return SimpleNamespace(output=out, status=status)

    return run


def test_a_failed_read_is_reported_with_dd_s_own_words():
    page = w.WitnessPage(0xFFFFFFFF80200000, "btext", 0x200000)
    base = f"dd if=/dev/kmem bs=4096 skip={page.va // PAGE} count=1"
    run = _run({base: (w.EMPTY_SHA256 + "\n", 0), base + " of": ("dd: /dev/kmem: Bad address\n", 1)})
    read = w.read_page(run, "/dev/kmem", page)
    assert read.digest is None
    assert "dd read nothing" in read.error and "exited 1: dd: /dev/kmem: Bad address" in read.error


def test_judge_names_the_page_and_the_side_that_differs():
    data = bytes(range(256)) * 16
    good = hashlib.sha256(data).hexdigest()
    page = w.WitnessPage(0xFFFFFFFF80203000, "mock_idle+0x40", 0x203000)
    reads = [
        w.WitnessRead("/dev/kmem", page, "cmd-k", good, 0, good),
        w.WitnessRead("/dev/mem", page, "cmd-m", good, 0, good),
    ]
    other = bytes(PAGE)
    dump = SimpleNamespace(read=lambda va, n: data, read_phys=lambda pa, n: data,
                           translate=lambda va: 0x203000)
    image = SimpleNamespace(read=lambda pa, n: other)
    checks, section, line = w.judge(w.WitnessResult(True, reads=reads), dump, {"hypervisor image": image})
    assert line.startswith("in-guest witness: 0/1 pages through /dev/kmem and 0/1 through /dev/mem")
    assert not any(c.ok for c in checks)
    assert "va 0xffffffff80203000 pa 0x203000 (mock_idle+0x40)" in checks[0].what
    assert f"dump {good}; hypervisor image {hashlib.sha256(other).hexdigest()} (differs)" in checks[0].actual
    assert section["kmem_equal"] == 0 and section["pages"][0]["sides"]["dump"] == good
    ok, _section, line = w.judge(w.WitnessResult(True, reads=reads), dump, {"hypervisor image": dump})
    assert all(c.ok for c in ok) and "1/1 pages through /dev/kmem and 1/1" in line


def test_a_witness_that_did_not_run_says_why():
    checks, section, line = w.judge(w.WitnessResult(False, "the guest has no shell"), None, {})
    assert checks == [] and section["ran"] is False
    assert line == "in-guest witness: did not run (the guest has no shell)"
