"""Physical page -> file offset indexes: the minidump bitmap (rank index) and ELF segments.

Both answer the same two questions, scalar and vectorised: where in the payload does physical
frame N live (or is it absent), and which frames are present at all.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

import numpy as np

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


class PhysIndex:
    """Interface: frame number -> payload offset of that 4 KiB page, or None / -1 if absent."""

    def offset_of(self, pfn: int) -> int | None:
        raise NotImplementedError

    def offsets_of(self, pfns: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def present_pfn_chunks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    @property
    def page_count(self) -> int:
        raise NotImplementedError


class BitmapIndex(PhysIndex):
    """A minidump page bitmap with an O(1) rank index (popcount prefix per 64-bit word).

    `ranges` are (first_pfn, end_pfn, first_bit): physical frames [first_pfn, end_pfn) are
    bits first_bit.. of the bitmap (v3 compresses bits through dump_avail; v1/v2 use one
    range starting at frame 0). The page for set bit b lives at data_offset + 4096 * rank(b).
    """

    #: rank is kept per block of 8 words (512 bits): 4 bytes per 64 bitmap bytes
    BLOCK_WORDS = 8

    def __init__(self, bitmap: memoryview, ranges: Sequence[tuple[int, int, int]], data_offset: int):
        if len(bitmap) % 64:
            raise ValueError("bitmap length must be a multiple of 64 bytes")
        self._bytes = bitmap.cast("B") if len(bitmap) else memoryview(b"")
        self._words = np.frombuffer(bitmap, dtype="<u8")
        self._wmv = self._bytes.cast("Q") if len(bitmap) else memoryview(b"").cast("Q")
        nwords = len(self._words)
        nblocks = nwords // self.BLOCK_WORDS
        block_counts = np.empty(nblocks, dtype=np.int64)
        chunk = 1 << 20   # words per pass: bounded temporaries whatever the bitmap size
        for c in range(0, nwords, chunk):
            counts = np.bitwise_count(self._words[c : c + chunk]).reshape(-1, self.BLOCK_WORDS)
            block_counts[c // self.BLOCK_WORDS : (c + chunk) // self.BLOCK_WORDS] = counts.sum(
                axis=1, dtype=np.int64)
        total = int(block_counts.sum())
        rank_dtype = np.uint32 if total < 2**32 else np.int64
        rank = np.zeros(nblocks + 1, dtype=rank_dtype)
        np.cumsum(block_counts, dtype=rank_dtype, out=rank[1:])
        del block_counts
        self._rank = rank
        self._rmv = memoryview(rank).cast("B").cast("I" if rank_dtype == np.uint32 else "q")
        self._total = total
        self.nbits = nwords * 64
        self.ranges = [r for r in ranges if r[1] > r[0]]
        self._starts = np.array([r[0] for r in self.ranges], dtype=np.int64)
        self._ends = np.array([r[1] for r in self.ranges], dtype=np.int64)
        self._bases = np.array([r[2] for r in self.ranges], dtype=np.int64)
        self._start_list = [r[0] for r in self.ranges]
        self.data_offset = data_offset

    @property
    def page_count(self) -> int:
        return self._total

    def _bit_of(self, pfn: int) -> int:
        rs = self.ranges
        if len(rs) == 1:
            s, e, b = rs[0]
            return pfn - s + b if s <= pfn < e else -1
        i = bisect.bisect_right(self._start_list, pfn) - 1
        if i < 0:
            return -1
        s, e, b = rs[i]
        return pfn - s + b if pfn < e else -1

    def offset_of(self, pfn: int) -> int | None:
        bit = self._bit_of(pfn)
        if bit < 0 or bit >= self.nbits:
            return None
        w = bit >> 6
        word = self._wmv[w]
        m = 1 << (bit & 63)
        if not word & m:
            return None
        blk = w >> 3
        r = self._rmv[blk] + (word & (m - 1)).bit_count()
        if w & 7:
            r += int.from_bytes(self._bytes[blk << 6 : w << 3], "little").bit_count()
        return self.data_offset + (r << PAGE_SHIFT)

    def offsets_of(self, pfns: np.ndarray) -> np.ndarray:
        pfns = np.asarray(pfns, dtype=np.int64)
        out = np.full(pfns.shape, -1, dtype=np.int64)
        if not self.ranges or pfns.size == 0:
            return out
        i = np.searchsorted(self._starts, pfns, side="right") - 1
        ok = i >= 0
        ic = np.where(ok, i, 0)
        ok &= pfns < self._ends[ic]
        bits = np.where(ok, pfns - self._starts[ic] + self._bases[ic], 0)
        ok &= bits < self.nbits
        bits = np.where(ok, bits, 0)
        w = bits >> 6
        sh = (bits & 63).astype(np.uint64)
        words = self._words[w]
        setbit = ((words >> sh) & np.uint64(1)).astype(bool) & ok
        w, sh, words = w[setbit], sh[setbit], words[setbit]
        below = words & ((np.uint64(1) << sh) - np.uint64(1))
        blk = w >> 3
        r = self._rank[blk].astype(np.int64) + np.bitwise_count(below).astype(np.int64)
        # whole words before w inside its block
        block = self._words.reshape(-1, self.BLOCK_WORDS)[blk]
        before = np.arange(self.BLOCK_WORDS)[None, :] < (w & 7)[:, None]
        r += np.where(before, np.bitwise_count(block), 0).sum(axis=1, dtype=np.int64)
        out[setbit] = self.data_offset + (r << PAGE_SHIFT)
        return out

    def present_pfn_chunks(self, words_per_chunk: int = 1 << 16) -> Iterator[np.ndarray]:
        """Present frames, ascending, in bounded chunks (never one array per bitmap bit)."""
        bit_pos = np.arange(64, dtype=np.int64)
        for r_first, r_end, r_base in self.ranges:
            first_bit, end_bit = r_base, min(r_base + (r_end - r_first), self.nbits)
            w0, w1 = first_bit >> 6, (end_bit + 63) >> 6
            for c in range(w0, w1, words_per_chunk):
                words = self._words[c : min(c + words_per_chunk, w1)]
                nz = np.flatnonzero(words)
                if nz.size == 0:
                    continue
                bits8 = words[nz].view(np.uint8).reshape(-1, 8)
                unpacked = np.unpackbits(bits8, axis=1, bitorder="little").astype(bool)
                rows, cols = np.nonzero(unpacked)
                bits = (nz[rows] + c) * 64 + bit_pos[cols]
                bits = bits[(bits >= first_bit) & (bits < end_bit)]
                if bits.size:
                    yield bits - r_base + r_first


class SegmentIndex(PhysIndex):
    """Physical memory as page-aligned (pa, size, file offset) runs, e.g. ELF PT_LOADs."""

    def __init__(self, segments: Sequence[tuple[int, int, int]]):
        segs = sorted(segments)
        self.segments = segs
        self._first = np.array([s[0] >> PAGE_SHIFT for s in segs], dtype=np.int64)
        self._end = np.array([(s[0] + s[1]) >> PAGE_SHIFT for s in segs], dtype=np.int64)
        self._off = np.array([s[2] for s in segs], dtype=np.int64)
        self._first_list = self._first.tolist()
        self._end_list = self._end.tolist()
        self._off_list = self._off.tolist()

    @property
    def page_count(self) -> int:
        return int((self._end - self._first).sum())

    def offset_of(self, pfn: int) -> int | None:
        i = bisect.bisect_right(self._first_list, pfn) - 1
        if i < 0 or pfn >= self._end_list[i]:
            return None
        return self._off_list[i] + ((pfn - self._first_list[i]) << PAGE_SHIFT)

    def offsets_of(self, pfns: np.ndarray) -> np.ndarray:
        pfns = np.asarray(pfns, dtype=np.int64)
        out = np.full(pfns.shape, -1, dtype=np.int64)
        if not self.segments or pfns.size == 0:
            return out
        i = np.searchsorted(self._first, pfns, side="right") - 1
        ok = i >= 0
        ic = np.where(ok, i, 0)
        ok &= pfns < self._end[ic]
        out[ok] = self._off[ic[ok]] + ((pfns[ok] - self._first[ic[ok]]) << PAGE_SHIFT)
        return out

    def present_pfn_chunks(self, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
        for first, end in zip(self._first_list, self._end_list, strict=True):
            for c in range(first, end, chunk):
                yield np.arange(c, min(c + chunk, end), dtype=np.int64)
