"""Addresses in harness JSON are "0x..." strings: a 64-bit value as a JSON number is lost by readers
that hold numbers as doubles (JavaScript, jq 1.6)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from harness.util.json_addresses import hex_addresses
from harness.verify.report import VerificationReport

KVA = 0xFFFFFFFF81CD4C0C


def test_address_keys_and_huge_integers_become_hex_and_counts_stay_numbers():
    data = {
        "pa": 0x27BE000,
        "kernbase": 0xFFFFFFFF80000000,
        "io_ranges": [{"address": 0x1000, "size": 0x200, "label": "ring"}],
        "registers": {"rip": KVA, "rsp": 0xFFFFFE0012345678},
        "pages_compared": 32634,
        "first_differing_offset": 16,
        "passed": True,
        "anything": KVA,
        "negative": -(2**60),
        "label": "0x10",
    }
    out = hex_addresses(data)
    assert out["pa"] == "0x27be000" and out["kernbase"] == "0xffffffff80000000"
    assert out["io_ranges"] == [{"address": "0x1000", "size": 0x200, "label": "ring"}]
    assert out["registers"] == {"rip": "0xffffffff81cd4c0c", "rsp": "0xfffffe0012345678"}
    assert out["pages_compared"] == 32634 and out["first_differing_offset"] == 16 and out["passed"] is True
    assert out["anything"] == "0xffffffff81cd4c0c"  # no double holds it exactly, whatever its key
    assert out["negative"] == "-0x1000000000000000" and out["label"] == "0x10"
    assert data["pa"] == 0x27BE000  # a copy: the caller's data is not changed


@dataclass
class _ReportWithAnAddressField(VerificationReport):
    """Stands for fields other changes add to the report (e.g. the dump device's facts)."""

    dump_device_pa: int = 0xFEBF0000
    somewhere: int = KVA


def test_report_json_writes_addresses_as_strings(tmp_path):
    r = _ReportWithAnAddressField()
    data = json.loads(r.write(tmp_path / "report.json").read_text())
    assert data["dump_device_pa"] == "0xfebf0000"
    assert data["somewhere"] == "0xffffffff81cd4c0c"
    assert data["pages_compared"] == 0 and data["timings"]["boot"] is None
