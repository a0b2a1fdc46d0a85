"""A compressed dump checked against what the kernel said it wrote, for the report.

Why: a gzip/zstd dump (`dumpon -z` / `-Z`) is verified page by page only after the reader decoded it,
so a stream that decodes to fewer bytes than the kernel meant to write, or a header that names another
compressor than the stream's magic, would otherwise show up only as missing pages or not at all. The
facts (FreeBSD 12+ `kern_shutdown.c`, /work/shared/reference/freebsd-dump-formats.md s. 1.4, 2.1):
`compression` names the compressor; `dumplength` is rewritten in `dump_finish()` to the exact number of
compressed bytes; `dumpextent` is what `dump_start()` reserved: the uncompressed size, or the rest of the
device when that does not fit; the console's "Dumping N out of M MB" / "Dumping N MB (k chunks)" gives
the uncompressed size in MiB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.verify.report import CrossCheck


@dataclass(frozen=True)
class CompressionFacts:
    """How the dump was compressed and its sizes (bytes) on either side of the compressor."""

    kind: str  # "gzip" | "zstd"
    compressed_bytes: int  # the compressed payload as retrieved (header `dumplength` on the device)
    uncompressed_bytes: int  # what the reader decoded
    dumpextent: int | None = None  # what the kernel reserved (header), when the header was read

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        size = self.compressed_bytes
        d["ratio"] = round(self.uncompressed_bytes / size, 1) if size else None
        return d

    def describe(self) -> str:
        ratio = self.to_dict()["ratio"]
        return (
            f"{self.kind}-compressed dump: {self.compressed_bytes} bytes compressed, "
            f"{self.uncompressed_bytes} bytes decoded (ratio {ratio}x)"
        )


def stream_kind(container: str) -> str:
    """"gzip"/"zstd" from the reader's container ("gzip", "device+zstd", ...); "none" otherwise."""
    parts = set(container.split("+"))
    return next((k for k in ("gzip", "zstd") if k in parts), "none")


def compression_facts(
    vmcore: Any, path: Path, header: dict[str, Any] | None, console_mb: int | None
) -> tuple[CompressionFacts | None, list[CrossCheck]]:
    """The facts and cross-checks of a compressed dump; (None, []) for an uncompressed one.

    `vmcore` is the open reader object (its `payload_container` / `payload_size`), `path` the retrieved
    file, `header` the kerneldumpheader as extracted from the dump device (None after savecore),
    `console_mb` the MiB the console's "Dumping ..." line announced (None if it was not seen)."""
    kind = stream_kind(str(getattr(vmcore, "payload_container", "plain")))
    said = str(header.get("compression_name", "none")) if header else None
    if kind == "none" and said in (None, "none"):
        return None, []
    decoded = int(getattr(vmcore, "payload_size", 0))
    compressed = Path(path).stat().st_size
    extent = int(header["dumpextent"]) if header and header.get("dumpextent") is not None else None
    facts = CompressionFacts(kind, compressed, decoded, extent)
    checks: list[CrossCheck] = []
    if header is not None:
        checks.append(
            CrossCheck(
                "compression: kerneldumpheader `compression` vs the payload's own magic",
                expected=str(said),
                actual=kind,
                ok=said == kind,
                source="dump header / reader",
            )
        )
        length = int(header.get("dumplength", -1))
        checks.append(
            CrossCheck(
                "compressed size: header `dumplength` (rewritten by dump_finish) vs the retrieved file",
                expected=str(length),
                actual=str(compressed),
                ok=length == compressed,
                source="dump header / host extraction",
            )
        )
    if extent is not None:
        # dump_start() reserves the uncompressed size; only when that does not fit the device is the
        # extent cut to the device's rest, and then the stream decodes to more than the extent
        shrunk = decoded > extent
        checks.append(
            CrossCheck(
                "decoded size vs `dumpextent` (the uncompressed size the kernel reserved)"
                + (" - extent cut to the device's size" if shrunk else ""),
                expected=f">= {extent}" if shrunk else str(extent),
                actual=str(decoded),
                ok=decoded >= extent,
                source="dump header / reader decompression",
            )
        )
    if console_mb is not None:
        checks.append(
            CrossCheck(
                "decoded size vs the console's 'Dumping N ... MB' (the size before compression)",
                expected=f"{console_mb} MiB (+-1)",
                actual=f"{decoded >> 20} MiB ({decoded} bytes)",
                ok=abs((decoded >> 20) - console_mb) <= 1,
                source="console / reader decompression",
            )
        )
    return facts, checks
