"""What the booting kernel told us about itself: version, config ident and its KDB debugger backends.

Why: the dump flow depends on the kernel. A kernel with the ddb backend stops in ddb on an NMI, a
BREAK, ``sysctl debug.kdb.enter=1`` or a panic, and ddb's ``dump`` writes the dump while we watch. A
kernel without it (release GENERIC kernels are built with ``options KDB`` + ``KDB_TRACE`` for panic
backtraces, but ddb is in ``std.debug``, which only -CURRENT includes) has nowhere to stop: it can only
panic, dump by itself and wait before rebooting. `kernel_facts` reads the boot banner to tell them apart.

Facts from freebsd-src used here:

* ``sys/kern/subr_kdb.c`` ``kdb_init()``: only when at least one backend initialised does it print
  ``"KDB: debugger backends:"`` + ``" %s"`` per backend, then ``"KDB: current backend: %s"``. A kernel
  with no backend (or no ``options KDB``) prints neither line, so "kernel banner seen, no KDB line" means
  "no debugger backend". ``gdb`` only counts when a GDB port exists ("GDB: no debug ports present").
* the banner ``"Copyright (c) 1992-YYYY The FreeBSD Project."`` follows, then the version line
  ``"FreeBSD 12.1-STABLE DUMPTEST amd64"`` (``sys/conf/newvers.sh``: ``FreeBSD <release> <ident>``
  plus, from 13 on, a ``#N <git-rev>: <date>`` part on the same line for builds from git).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_BACKENDS = re.compile(r"KDB: debugger backends:([^\r\n]*)")
_CURRENT = re.compile(r"KDB: current backend: (\S+)")
_COPYRIGHT = re.compile(r"Copyright \(c\) 1992-\d+ The FreeBSD Project\.")
# "FreeBSD 12.1-STABLE DUMPTEST amd64", "FreeBSD 14.1-RELEASE releng/14.1-n267679-10e31f0946d8 GENERIC amd64";
# derivatives put their own name first ("HardenedBSD 14.0-STABLE ..."): the line is found by its shape
# after the copyright banner, not by the word FreeBSD (newvers.sh: "${TYPE} ${RELEASE} ...")
_VERSION = re.compile(r"(?m)^([A-Za-z][A-Za-z0-9_]*) (\d+)\.(\d+)-([A-Z]+(?:-p\d+)?)\b([^\r\n]*)")
# Text that only a real (re)boot prints before the banner, never ddb's "show msgbuf".
_BOOT_EVIDENCE = re.compile(
    r"SeaBIOS|GRUB: booting|Booting \[|BTX loader|Consoles: |KDB: debugger backends|GDB: |cpu_reset"
)
_MACHINES = {"amd64", "i386", "arm64", "aarch64", "riscv", "powerpc64"}


@dataclass(frozen=True)
class KernelFacts:
    """Parsed from the boot text. `backends` is None when the banner was not seen (unknown), () when
    the kernel started without printing a KDB backend line (no debugger backend)."""

    backends: tuple[str, ...] | None = None
    current_backend: str | None = None
    banner_seen: bool = False
    version: str | None = None  # "12.1-STABLE"
    major: int | None = None
    ident: str | None = None  # kernel config name, e.g. GENERIC
    machine: str | None = None
    gdb_ports: bool | None = None  # False after "GDB: no debug ports present"
    os_name: str | None = None  # "FreeBSD", or a derivative's name from the version line

    @property
    def has_ddb(self) -> bool | None:
        """True/False when the banner told us; None when we never saw the kernel start."""
        if self.backends is None:
            return None
        return "ddb" in self.backends

    def describe(self) -> str:
        """One line for logs and errors."""
        kernel = f"{self.os_name or 'FreeBSD'} {self.version or '?'} {self.ident or ''}".strip()
        if self.backends is None:
            kdb = "debugger backends unknown (boot banner not seen)"
        elif not self.backends:
            kdb = "no KDB debugger backend (no 'KDB: debugger backends' line at boot)"
        else:
            kdb = f"KDB backends: {' '.join(self.backends)} (current: {self.current_backend or '?'})"
        return f"{kernel}; {kdb}"

    def merge(self, newer: KernelFacts) -> KernelFacts:
        """Facts from a later look win where they know something; unknowns keep what we had."""
        if newer.banner_seen:
            return newer
        return replace(
            self,
            backends=self.backends if newer.backends is None else newer.backends,
            current_backend=newer.current_backend or self.current_backend,
        )


def kernel_facts(text: str) -> KernelFacts:
    """Facts from console text that contains (part of) a kernel boot; the *last* boot in it counts."""
    start = head_from = None
    prev_end = 0
    for m in _COPYRIGHT.finditer(text):
        db = text.rfind("db> ", prev_end, m.start())
        lo = prev_end if db < 0 else db
        if db >= 0 and not _BOOT_EVIDENCE.search(text, db, m.start()):
            prev_end = m.end()
            continue  # ddb output (show msgbuf replays the boot messages), not a boot
        start, head_from = m.start(), lo
        prev_end = m.end()
    if start is None:
        # KDB lines come before the copyright line; they alone are still informative.
        b = _BACKENDS.search(text)
        if b is None:
            return KernelFacts()
        cur = _CURRENT.search(text, b.end())
        return KernelFacts(backends=tuple(b.group(1).split()), current_backend=cur.group(1) if cur else None)
    head = text[head_from:start]
    backends_m = list(_BACKENDS.finditer(head))
    backends: tuple[str, ...] = tuple(backends_m[-1].group(1).split()) if backends_m else ()
    cur_m = list(_CURRENT.finditer(head))
    gdb: bool | None = None
    if "GDB: no debug ports present" in head or "GDB: no kernel debugging" in head:
        gdb = False
    elif re.search(r"GDB: debug ports:", head):
        gdb = True
    version = major = ident = machine = os_name = None
    if vm := _VERSION.search(text, start):
        os_name = vm.group(1)
        version = f"{vm.group(2)}.{vm.group(3)}-{vm.group(4)}"
        major = int(vm.group(2))
        rest = vm.group(5).split()
        if rest and rest[-1] in _MACHINES:
            machine = rest[-1]
            ident = rest[-2] if len(rest) >= 2 and not rest[-2].endswith(":") else None
    return KernelFacts(
        backends=backends,
        current_backend=cur_m[-1].group(1) if cur_m else None,
        banner_seen=True,
        version=version,
        major=major,
        ident=ident,
        machine=machine,
        gdb_ports=gdb,
        os_name=os_name,
    )
