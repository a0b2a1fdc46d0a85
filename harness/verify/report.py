"""`VerificationReport`: the verdict on one dump, as JSON for machines and a short summary for people."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: differences kept in the JSON list (counts stay exact); a broken dump can differ on every page
MAX_LISTED = 500


@dataclass
class Difference:
    """One dumped page whose bytes are not the live page's bytes."""

    address: int  # physical address of the page
    attribution: str  # e.g. "kernel-data: dumper, dumptid" / "thread-stack: tid 100003" / "unattributed"
    kind: str  # see harness.verify.attribution.KINDS
    first_differing_offset: int
    differing_bytes: int
    explained: bool
    reason: str = ""
    va: int | None = None
    #: runs of bytes no rule explains (the first 16): address, va, page offset, bytes, what (kind: symbol+off)
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    #: differing bytes the dump holds in their before-image state (caught before they changed)
    consistent_bytes: int = 0
    #: the dump device's own state on this page: "named" (every byte explained by a field fact) or
    #: "unnamed" (tied to the device by the hypervisor, bytes not nameable without DWARF); "" otherwise
    dump_device: str = ""
    #: why each named field may differ ("DWARF: struct virtqueue.vq_free_cnt of vtblk0's queue: ...")
    evidence: list[str] = field(default_factory=list)
    #: the kernel symbol at the first differing byte (`name+0xoff`, from the kernel's symbol table);
    #: "" where no symbol names the address (heap, stacks) or there is no symbol table
    symbol: str = ""

    def where(self) -> str:
        """The page for people: physical address, and the kernel symbol at its first differing byte."""
        return f"{self.address:#014x}" + (f" [{self.symbol}]" if self.symbol else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["address"] = f"{self.address:#x}"
        d["va"] = f"{self.va:#x}" if self.va is not None else None
        return d


@dataclass
class CrossCheck:
    """A value read two independent ways (ddb's output, the reader, live memory, /dev/kmem)."""

    what: str
    expected: str
    actual: str
    ok: bool
    source: str = ""


@dataclass
class VerificationReport:
    passed: bool = False
    flow: str = "ddb"  # "ddb": ddb dump; "panic": the kernel dumps on panic, held at "Press a key"
    dump_kind: str = "mini"  # "mini" | "full"
    dump_format: str = ""
    pages_compared: int = 0
    pages_identical: int = 0
    pages_differing_explained: int = 0
    pages_differing_unexplained: int = 0
    pages_not_in_live_image: int = 0
    missing_pages: int = 0
    pages_mapped_not_dumped: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)
    excluded_not_dumpable: int = 0
    #: differing pages of the dump device's own state: explained field by field / tied but not nameable
    pages_dump_device_named: int = 0
    pages_dump_device_unnamed: int = 0
    #: how the dump device was found (QEMU's queues, the driver's objects) and why DWARF was not used
    dump_device: dict[str, Any] = field(default_factory=dict)
    #: the verdict in words: "PASSED", "PASSED (with N dump-device pages not nameable without kernel.debug)",
    #: "FAILED" (docs/verification.md)
    status: str = ""
    differences: list[Difference] = field(default_factory=list)
    crosschecks: list[CrossCheck] = field(default_factory=list)
    timings: dict[str, float | None] = field(
        default_factory=lambda: {"boot": None, "ddb": None, "dump": None, "extract": None, "verify": None}
    )
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dump: str = ""
    kernel: str = ""
    kernel_source: str = ""  # where the kernel file came from (--kernel, fetched over SSH, none)
    retrieval: str = ""  # "host (dump disk)" | "savecore + SFTP"
    live_image: str = ""
    bytes_compared: int = 0
    #: the in-guest witness (/dev/kmem, /dev/mem read in the guest before the dump): harness.verify.witness
    witness: dict[str, Any] = field(default_factory=dict)
    #: dump_kind "text": the textdump's members (name -> bytes) and the ddb commands captured
    #: (harness.verify.textdump_checks); its verdict is its cross-checks, there are no pages
    textdump: dict[str, Any] = field(default_factory=dict)
    #: a gzip/zstd dump: kind, compressed_bytes, uncompressed_bytes, dumpextent, ratio (empty: uncompressed)
    compression: dict[str, Any] = field(default_factory=dict)

    # -- verdict -----------------------------------------------------------------------------------
    def decide(self) -> bool:
        """Pass only if every page matched or was explained, nothing is missing, every cross-check held."""
        if self.dump_kind == "text":  # a textdump: no pages, only its member checks
            self.passed = bool(self.crosschecks) and all(c.ok for c in self.crosschecks) and not self.errors
            self.status = "PASSED" if self.passed else "FAILED"
            return self.passed
        self.passed = (
            self.pages_compared > 0
            and self.pages_differing_unexplained == 0
            and self.pages_not_in_live_image == 0
            and self.missing_pages == 0
            and all(c.ok for c in self.crosschecks)
            and not self.errors
        )
        self.status = "FAILED"
        if self.passed:
            n = self.pages_dump_device_unnamed
            self.status = (
                f"PASSED (with {n} dump-device page{'s' if n != 1 else ''} not nameable without kernel.debug)"
                if n
                else "PASSED"
            )
        return self.passed

    # -- output ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["differences"] = [x.to_dict() for x in self.differences[:MAX_LISTED]]
        d["differences_listed"] = len(d["differences"])
        d["missing"] = self.missing[:MAX_LISTED]
        return d

    def to_json(self) -> str:
        """The report as JSON; addresses are "0x..." strings (`harness.util.json_addresses`)."""
        from harness.util.json_addresses import hex_addresses

        return json.dumps(hex_addresses(self.to_dict()), indent=2, sort_keys=False)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON report; refuses to overwrite an existing file (it may be a user's)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VerificationReport:
        d = dict(d)
        diffs = []
        for x in d.pop("differences", []):
            x = dict(x)
            x["address"] = int(x["address"], 16)
            x["va"] = int(x["va"], 16) if x.get("va") else None
            diffs.append(Difference(**x))
        checks = [CrossCheck(**c) for c in d.pop("crosschecks", [])]
        d.pop("differences_listed", None)
        return cls(differences=diffs, crosschecks=checks, **d)

    def summary(self) -> str:
        verdict = self.status or ("PASSED" if self.passed else "FAILED")
        if self.dump_kind == "text":
            return self._textdump_summary(verdict)
        lines = [
            f"verification {verdict}: {self.dump_kind} dump ({self.dump_format or 'unknown format'}), "
            f"{self.flow} flow"
            + (
                f"; {self.compression['kind']}-compressed: {self.compression['compressed_bytes']} bytes "
                f"compressed, {self.compression['uncompressed_bytes']} decoded"
                if self.compression
                else ""
            ),
            f"  pages compared {self.pages_compared}, identical {self.pages_identical}, "
            f"differing explained {self.pages_differing_explained}, "
            f"unexplained {self.pages_differing_unexplained}"
            + (
                f", dump-device pages not nameable {self.pages_dump_device_unnamed}"
                if self.pages_dump_device_unnamed
                else ""
            ),
            f"  missing from dump {self.missing_pages}"
            + (
                f" (+{self.excluded_not_dumpable} not dumpable, excluded)"
                if self.excluded_not_dumpable
                else ""
            )
            + (
                f", mapped but not dumped {self.pages_mapped_not_dumped}"
                if self.pages_mapped_not_dumped
                else ""
            )
            + (f", not in live image {self.pages_not_in_live_image}" if self.pages_not_in_live_image else ""),
        ]
        device = [d for d in self.differences if d.dump_device]
        named = [d for d in device if d.dump_device == "named"]
        unnamed = [d for d in device if d.dump_device == "unnamed"]
        if named:
            lines.append(f"  dump-device state (named, {len(named)} pages): the dump device's own I/O state")
            for d in named[:6]:
                lines.append(f"    {d.where()} ({d.differing_bytes} B)")
                lines.extend(f"        {e}" for e in d.evidence[:6])
        if unnamed:
            why = self.dump_device.get("no_dwarf_reason", "")
            lines.append(
                f"  dump-device state (hypervisor-tied, not nameable without DWARF): {len(unnamed)} pages"
                + (f" - {why}" if why else "")
            )
            for d in unnamed[:6]:
                lines.append(f"    {d.where()} ({d.differing_bytes} B) {d.attribution}")
                lines.extend(f"        {e}" for e in d.evidence[:4])
        # the failures first: a summary that hides the one bad page behind "... more" helps nobody
        shown = sorted([d for d in self.differences if not d.dump_device], key=lambda x: x.explained)[:8]
        for d in shown:
            mark = "ok " if d.explained else "BAD"
            lines.append(
                f"  {mark} {d.address:#014x} +{d.first_differing_offset:#05x}"
                + (f" [{d.symbol}]" if d.symbol else "")
                + f" ({d.differing_bytes} B) "
                f"{d.attribution}" + (f" - {d.reason}" if d.reason else "")
            )
            for u in d.unexplained[:3]:  # where exactly the dump is wrong
                lines.append(f"        wrong: {_where(u)} ({u['bytes']} B) {u['what']}")
        others = len(self.differences) - len(device)
        if others > 8:
            lines.append(f"  ... {others - 8} more differing pages in the JSON report")
        for m in [m for m in self.missing if m.get("counted", True)][:5]:
            lines.append(f"  MISSING pa {m['pa']} (va {_where(m, 'va')}) {m.get('what', '')}")
        bad = [c for c in self.crosschecks if not c.ok]
        lines.append(f"  cross-checks {len(self.crosschecks) - len(bad)}/{len(self.crosschecks)} agree")
        for c in bad[:5]:
            lines.append(f"  MISMATCH {c.what}: expected {c.expected}, got {c.actual} ({c.source})")
        if self.witness:
            why = self.witness.get("why_not", "")
            lines.append("  " + (self.witness.get("summary") or f"in-guest witness: did not run ({why})"))
        lines += self._errors_and_timings()
        return "\n".join(lines)

    def _errors_and_timings(self) -> list[str]:
        """The summary's last lines, for a memory dump and a textdump alike."""
        lines = [f"  ERROR {e}" for e in self.errors]
        t = {k: v for k, v in self.timings.items() if v is not None}
        if t:
            lines.append("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
        return lines

    def _textdump_summary(self, verdict: str) -> str:
        """A textdump's verdict: every member check with its evidence."""
        members = ", ".join(f"{n} {b} B" for n, b in self.textdump.get("members", {}).items())
        lines = [f"verification {verdict}: textdump ({members or 'no members'}), {self.flow} flow"]
        for c in self.crosschecks:
            lines.append(f"  {'ok ' if c.ok else 'BAD'} {c.what}")
            lines.append(f"        expected {c.expected}; got {c.actual} ({c.source})")
        lines += self._errors_and_timings()
        return "\n".join(lines)


def _where(entry: dict[str, Any], key: str = "address") -> str:
    """An address of a JSON entry, with the kernel symbol naming it when the report has one."""
    symbol = entry.get("symbol")
    return f"{entry.get(key)} [{symbol}]" if symbol else str(entry.get(key))
