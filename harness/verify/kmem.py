"""Cross-check a dump with kernel memory read live from inside the running guest (``/dev/kmem``).

Why: the dump and the ddb-time image are both taken from outside; reading the same kernel addresses
from userland of the same boot is an independent witness. Only memory that cannot change while the
system runs is compared: the ``version`` and ``ostype`` strings, ``hz``, and a page of kernel text.

``run(command) -> str`` is any command runner returning stdout (an SSH session, a console shell).
/dev/kmem is read at the symbol's virtual address with dd; the kernel VA (above 2^63) is passed as the
negative off_t it is as a file offset. This path has not yet run against a real FreeBSD guest here (no
image can be downloaded on the build machines); a guest whose dd refuses the offset gives a failed
cross-check that says "/dev/kmem ... got 0 of N bytes", never a silent pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.verify.report import CrossCheck

Runner = Callable[[str], str]


def kmem_command(va: int, size: int) -> str:
    """Shell command printing ``size`` bytes of kernel VA ``va`` as hex (FreeBSD base tools only)."""
    offset = va - (1 << 64) if va >= 1 << 63 else va
    return f"dd if=/dev/kmem bs=1 iseek={offset} count={size} 2>/dev/null | od -An -v -tx1"


def parse_od_hex(text: str) -> bytes:
    return bytes(int(tok, 16) for tok in text.split() if len(tok) == 2)


def read_kmem(run: Runner, va: int, size: int) -> bytes:
    data = parse_od_hex(run(kmem_command(va, size)))
    if len(data) != size:
        raise OSError(f"/dev/kmem at {va:#x}: got {len(data)} of {size} bytes (kmem readable? root?)")
    return data


def check_live_kmem(run: Runner, vmcore: Any, *, text_symbol: str = "kern_reboot") -> list[CrossCheck]:
    """Compare stable kernel memory read live through ``run`` with the same addresses in ``vmcore``."""
    checks: list[CrossCheck] = []
    wanted = [("version", 256), ("ostype", 16), ("hz", 4), (text_symbol, 4096)]
    for i, (name, size) in enumerate(wanted):
        is_text = i == 3
        label = f"kmem text page ({name})" if is_text else f"kmem {name}"
        try:
            va = vmcore.symbol(name)
        except Exception as exc:  # noqa: BLE001 - reader SymbolError: no such symbol in this kernel
            checks.append(CrossCheck(label, "symbol", f"missing: {exc}", False, "reader"))
            continue
        if is_text:
            va &= ~0xFFF  # the whole text page holding the function
        try:
            dumped = vmcore.read(va, size)
        except Exception as exc:  # noqa: BLE001 - the page is not in the dump
            checks.append(CrossCheck(label, "in dump", f"unreadable: {exc}", False, "reader"))
            continue
        try:
            live = read_kmem(run, va, size)
        except OSError as exc:
            checks.append(CrossCheck(label, "readable", str(exc), False, "/dev/kmem"))
            continue
        if is_text:
            exp, act = (
                f"{len(dumped)} bytes",
                f"{len(live)} bytes" + ("" if live == dumped else ", differing"),
            )
        elif name in ("version", "ostype"):
            dumped, live = dumped.split(b"\0", 1)[0], live.split(b"\0", 1)[0]
            exp, act = dumped.decode(errors="replace").strip(), live.decode(errors="replace").strip()
        else:
            exp, act = str(int.from_bytes(dumped, "little")), str(int.from_bytes(live, "little"))
        checks.append(CrossCheck(label, exp, act, dumped == live, "/dev/kmem in the guest vs dump"))
    return checks
