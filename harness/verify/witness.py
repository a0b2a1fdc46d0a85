"""The in-guest witness: kernel pages read from inside the guest (``/dev/kmem``, ``/dev/mem``) before the
dump, compared with the dump and with the hypervisor's memory image.

Why: the dump and the live images are both taken from outside the guest; the kernel's own answer to
``read(2)`` on its memory devices is a third, independent reading of the same bytes. Only pages that
cannot change between the witness and the dump are read: the kernel file's read-only ``PT_LOAD``
segments (text, rodata), found in the kernel file, never at fixed addresses.

The commands are what a FreeBSD 12.1 single-user root offers (``/bin/dd``, ``/sbin/sha256``):
``dd if=/dev/kmem bs=4096 skip=<VA/4096> count=1 2>/dev/null | sha256``. The skip count is the page number
itself (below 2^52): FreeBSD's dd multiplies skip by bs as 64-bit unsigned numbers on a character device,
which gives the "negative" off_t a kernel address >= 2^63 is (``seek_offset()`` in dd's position.c); a
negative skip would be refused. ``sha256`` on standard input prints the digest alone. A read that fails
(amd64 ``memrw()`` answers EFAULT for an unmapped kernel address) leaves sha256 an empty input: that digest
is recognised, and the same dd is run once more without the pipe so that its own words are the evidence.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.verify.report import CrossCheck

PAGE = 4096
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEVICES = ("/dev/kmem", "/dev/mem")
#: pages sampled by default (spread evenly over the read-only segments)
DEFAULT_PAGES = 8
PF_W = 0x2
PT_LOAD = 1
PG_V, PG_PS = 0x1, 0x80
PG_FRAME = 0x000F_FFFF_FFFF_F000
_DIGEST = re.compile(r"\b([0-9a-f]{64})\b")


class WitnessError(Exception):
    """The witness cannot choose or place its pages (no read-only segment, page tables unreadable)."""


@dataclass
class WitnessPage:
    """One sampled kernel page: its VA, where it sits, and its PA as the hypervisor translated it."""

    va: int
    what: str
    pa: int | None = None


@dataclass
class WitnessRead:
    """One page read in the guest: the command, what it printed and its status, the digest (None: none)."""

    device: str
    page: WitnessPage
    command: str
    output: str
    status: int
    digest: str | None
    error: str = ""


@dataclass
class WitnessResult:
    """What the witness did before the dump (or why it did not run)."""

    ran: bool
    why_not: str = ""
    reads: list[WitnessRead] = field(default_factory=list)
    translation: str = ""
    seconds: float | None = None


# ---------------------------------------------------------------------------------------- choosing
def readonly_segments(kernel: Path) -> list[tuple[int, int]]:
    """(vaddr, filesz) of the kernel file's PT_LOAD segments that are not writable."""
    data = Path(kernel).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise WitnessError(f"kernel {kernel}: not a little-endian ELF64 file (bytes 0-5 {data[:6].hex()})")
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    if phoff + phnum * phentsize > len(data) or phentsize < 56:
        raise WitnessError(f"kernel {kernel}: program headers at offset {phoff:#x} run past the file's end")
    out = []
    for i in range(phnum):
        p_type, p_flags, _off, vaddr, _paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize
        )
        if p_type == PT_LOAD and not p_flags & PF_W and filesz:
            out.append((vaddr, filesz))
    return out


def choose_pages(
    kernel: Path, count: int = DEFAULT_PAGES, describe: Callable[[int], str] | None = None
) -> list[WitnessPage]:
    """`count` whole pages spread evenly over the read-only segments' file contents."""
    candidates = []
    for vaddr, filesz in readonly_segments(kernel):
        first = -(-vaddr // PAGE) * PAGE
        candidates += range(first, (vaddr + filesz) // PAGE * PAGE, PAGE)
    if not candidates:
        raise WitnessError(f"kernel {kernel}: no whole page in a read-only PT_LOAD segment (text, rodata)")
    n = min(count, len(candidates))
    chosen = [candidates[i * len(candidates) // n] for i in range(n)]
    return [WitnessPage(va, describe(va) if describe else "read-only kernel segment") for va in chosen]


# ---------------------------------------------------------------------------------------- placing
def translate(read_phys: Callable[[int, int], bytes], pml4_pa: int, va: int) -> int | None:
    """amd64 4-level walk of `va` from the table at `pml4_pa` (1 GiB/2 MiB/4 KiB leaves); None: unmapped."""
    table = pml4_pa & PG_FRAME
    for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
        (entry,) = struct.unpack("<Q", read_phys(table + ((va >> shift) & 511) * 8, 8))
        if not entry & PG_V:
            return None
        if level in (3, 2) and entry & PG_PS:
            span = 1 << shift
            return (entry & PG_FRAME & ~(span - 1)) + (va & (span - 1))
        table = entry & PG_FRAME
    return table + (va & (PAGE - 1))


# ---------------------------------------------------------------------------------------- commands
def read_command(device: str, page_number: int) -> str:
    return f"dd if={device} bs={PAGE} skip={page_number} count=1 2>/dev/null | sha256"


def error_command(device: str, page_number: int) -> str:
    """The same read without the pipe: dd's own report (records, or its error) is the evidence."""
    return f"dd if={device} bs={PAGE} skip={page_number} count=1 of=/dev/null"


def parse_digest(output: str) -> str | None:
    found = _DIGEST.findall(output.lower())
    return found[-1] if found else None


def read_page(run: Callable[[str], Any], device: str, page: WitnessPage) -> WitnessRead:
    """Read one page in the guest through `device`; `run(cmd)` returns a result with output and status."""
    number = page.va // PAGE if device == "/dev/kmem" else (page.pa or 0) // PAGE
    cmd = read_command(device, number)
    r = run(cmd)
    output = r.output.strip()
    digest = parse_digest(output)
    read = WitnessRead(device, page, cmd, output, r.status, digest)
    if r.status != 0 or digest is None:
        read.error = f"`{cmd}` exited {r.status} printing {output!r} (no SHA-256 digest)"
        read.digest = None
    elif digest == EMPTY_SHA256:
        again = run(error_command(device, number))
        said = " / ".join(ln.strip() for ln in again.output.splitlines() if ln.strip()) or "nothing"
        read.error = (
            f"dd read nothing (sha256 of empty input): `{error_command(device, number)}` exited "
            f"{again.status}: {said}"
        )
        read.digest = None
    return read


# ---------------------------------------------------------------------------------------- judging
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _side(name: str, read: Callable[[], bytes]) -> tuple[str | None, str]:
    try:
        return _sha(read()), ""
    except Exception as exc:  # noqa: BLE001 - page not in the dump / outside the image: the evidence
        return None, f"{name} unreadable: {exc}"


def _outside_digests(
    rd: WitnessRead, dump: Any, images: dict[str, Any]
) -> tuple[dict[str, str | None], list[str]]:
    """The page's SHA-256 in the dump and in each hypervisor image, and what could not be read or agreed."""
    page, sides, problems = rd.page, {}, []
    if rd.device == "/dev/kmem":
        sides["dump"], why = _side("dump at va", lambda: dump.read(page.va, PAGE))
    else:
        sides["dump"], why = _side("dump at pa", lambda: dump.read_phys(page.pa, PAGE))
    problems += [why] if why else []
    for name, image in images.items():
        if page.pa is None:
            sides[name], why = None, f"{name}: no physical address for the page"
        else:
            sides[name], why = _side(name, lambda image=image: image.read(page.pa, PAGE))
        problems += [why] if why else []
    try:
        dump_pa = dump.translate(page.va) & ~(PAGE - 1)
    except Exception as exc:  # noqa: BLE001 - an unmapped va in the dump is the evidence
        problems.append(f"dump cannot translate va {page.va:#x}: {exc}")
    else:
        if page.pa is not None and dump_pa != page.pa:
            problems.append(
                f"the dump's page tables put va {page.va:#x} at pa {dump_pa:#x}, the live ones at "
                f"{page.pa:#x}"
            )
    return sides, problems


def _check(
    rd: WitnessRead, sides: dict[str, str | None], problems: list[str], images: dict[str, Any]
) -> CrossCheck:
    page = rd.page
    label = f"in-guest witness {rd.device} page va {page.va:#x}"
    label += (f" pa {page.pa:#x}" if page.pa is not None else "") + f" ({page.what})"
    differing = [n for n, d in sides.items() if d != rd.digest]
    ok = rd.digest is not None and not differing and not problems
    if ok:
        actual = "equal"
    elif rd.error:
        actual = rd.error
    else:
        actual = "; ".join(
            f"{n} {d or 'unreadable'}" + (" (differs)" if d != rd.digest else "") for n, d in sides.items()
        )
        actual += f" - {'; '.join(problems)}" if problems else ""
        if len(differing) == len(sides) and all(sides[n] is not None for n in differing):
            actual += ": the guest's read differs from every outside copy"
    source = f"`{rd.command}` in the guest vs the dump and " + ", ".join(images)
    return CrossCheck(label, f"guest {rd.digest or 'no digest'}", actual, ok, source)


def judge(
    result: WitnessResult, dump: Any, images: dict[str, Any]
) -> tuple[list[CrossCheck], dict[str, Any], str]:
    """Cross-checks (one per page and device), the report section and the summary line.

    `dump`: the opened vmcore (``read(va)``, ``read_phys(pa)``, ``translate(va)``); `images`: the
    hypervisor's images by name (``{"hypervisor image after the dump": image}``), each with ``read``."""
    if not result.ran:
        line = f"in-guest witness: did not run ({result.why_not})"
        return [], {"ran": False, "why_not": result.why_not, "summary": line}, line
    checks: list[CrossCheck] = []
    rows = []
    equal = dict.fromkeys(DEVICES, 0)
    total = dict.fromkeys(DEVICES, 0)
    for rd in result.reads:
        sides, problems = _outside_digests(rd, dump, images)
        check = _check(rd, sides, problems, images)
        checks.append(check)
        total[rd.device] += 1
        equal[rd.device] += check.ok
        row = {k: v for k, v in asdict(rd).items() if k != "page"}
        rows.append(
            row
            | {
                "va": rd.page.va,
                "pa": rd.page.pa,
                "what": rd.page.what,
                "sides": sides,
                "ok": check.ok,
                "problems": problems,
            }
        )
    k, m = DEVICES
    line = (
        f"in-guest witness: {equal[k]}/{total[k]} pages through {k} and {equal[m]}/{total[m]} through {m} "
        f"equal the dump and the hypervisor's image"
    )
    section = {
        "ran": True,
        "pages": rows,
        "kmem_equal": equal[k],
        "kmem_total": total[k],
        "mem_equal": equal[m],
        "mem_total": total[m],
        "translation": result.translation,
        "seconds": result.seconds,
        "summary": line,
    }
    return checks, section, line
