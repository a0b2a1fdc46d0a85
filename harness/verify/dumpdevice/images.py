"""The three images a byte of the dump device's state is judged in, behind one small interface.

"before": guest RAM taken in ddb right before `dump` (absent in the panic flow); "dump": the page as the
vmcore holds it; "after": guest RAM taken in ddb after the dump. Kernel virtual addresses are translated
through the caller's translator (the dump's page tables), with the direct map as the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ReadPhys = Callable[[int, int], "bytes | None"]
Translate = Callable[[int], "int | None"]

IMAGES = ("before", "dump", "after")
PAGE = 4096


@dataclass
class ImageSet:
    read_before: ReadPhys | None
    read_dump: ReadPhys
    read_after: ReadPhys
    translate_va: Translate | None = None
    dmap: tuple[int, int] = (0xFFFF_F800_0000_0000, 0xFFFF_FC00_0000_0000)

    def read(self, image: str, pa: int, size: int) -> bytes | None:
        fn = {"before": self.read_before, "dump": self.read_dump, "after": self.read_after}[image]
        if fn is None:
            return None
        out = b""
        while len(out) < size:  # page by page: the dump may lack one page of a straddling object
            cur = pa + len(out)
            n = min(size - len(out), PAGE - cur % PAGE)
            try:
                got = fn(cur, n)
            except Exception:  # noqa: BLE001 - not in that image
                return None
            if got is None or len(got) != n:
                return None
            out += bytes(got)
        return out

    def uint(self, image: str, pa: int, size: int) -> int | None:
        raw = self.read(image, pa, size)
        return int.from_bytes(raw, "little") if raw is not None else None

    def values(self, pa: int, size: int) -> dict[str, int | None]:
        return {img: self.uint(img, pa, size) for img in IMAGES}

    def pa_of(self, va: int) -> int | None:
        """Physical address of a kernel VA: the direct map arithmetically, else the page tables."""
        if self.dmap[0] <= va < self.dmap[1]:
            return va - self.dmap[0]
        if self.translate_va is None:
            return None
        try:
            return self.translate_va(va)
        except Exception:  # noqa: BLE001
            return None

    def read_va(self, image: str, va: int, size: int) -> bytes | None:
        out = b""
        while len(out) < size:
            cur = va + len(out)
            n = min(size - len(out), PAGE - cur % PAGE)
            pa = self.pa_of(cur)
            got = self.read(image, pa, n) if pa is not None else None
            if got is None:
                return None
            out += got
        return out

    def uint_va(self, image: str, va: int, size: int) -> int | None:
        raw = self.read_va(image, va, size)
        return int.from_bytes(raw, "little") if raw is not None else None

    def string_va(self, image: str, va: int, limit: int = 64) -> str | None:
        raw = self.read_va(image, va, limit) or self.read_va(image, va, PAGE - va % PAGE)
        if raw is None:
            return None
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    def same_object(self, va: int, pa: int) -> bool:
        """Whether kernel pointer ``va`` addresses physical ``pa`` (DMAP or any other mapping)."""
        return va != 0 and self.pa_of(va) == pa
