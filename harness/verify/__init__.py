"""Verification of kernel dumps against the guest's live physical memory (the heart of fbsd-hil).

Entry point: `verify_dump(vmcore, live_image, ...) -> VerificationReport`. See docs/verification.md.
"""

from harness.verify.dumpdevice import DumpDeviceState
from harness.verify.engine import (
    crosscheck_registers,
    crosscheck_symbols,
    dump_avail_ranges,
    find_page_table_root,
    parse_ddb_registers,
    verify_dump,
)
from harness.verify.live import LiveMemory, LiveMemoryError, write_raw_image
from harness.verify.report import CrossCheck, Difference, VerificationReport

__all__ = [
    "CrossCheck",
    "Difference",
    "DumpDeviceState",
    "LiveMemory",
    "LiveMemoryError",
    "VerificationReport",
    "crosscheck_registers",
    "crosscheck_symbols",
    "dump_avail_ranges",
    "find_page_table_root",
    "parse_ddb_registers",
    "verify_dump",
    "write_raw_image",
]
