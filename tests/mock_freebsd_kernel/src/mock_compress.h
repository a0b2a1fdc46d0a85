/* mock_compress.h - compressed kernel dumps for the MockFreeBSDKernel (a STAND-IN, NOT FreeBSD).
 *
 * Imitates a FreeBSD 12.1 kernel built with `options GZIO` and `options ZSTDIO` after `dumpon -z` (gzip)
 * or `dumpon -Z` (zstd): every byte the dump code appends (dump_append_pa) goes through a streaming
 * compressor whose output is written in whole 512-byte blocks from the start offset computed for the
 * UNCOMPRESSED extent (kern_shutdown.c dump_start(): dumpoff = mediasize - blocksize - dumpextent, with
 * dumpextent = the uncompressed size, or the rest of the device when that does not fit); dump_finish()
 * flushes the stream, pads the last block with zeros, rewrites `dumplength` to the exact compressed byte
 * count, sets `compression` (1 gzip, 2 zstd) and writes leader + trailer where the extent puts them.
 * Output that would reach the trailer block fails the dump with "Compressed dump failed to fit in device
 * boundaries." (the text of kern_shutdown.c; the error number is this mock's choice).
 *
 * The encoders are this project's own code, written from the public format specifications only:
 *  - gzip (RFC 1952): the 10-byte header subr_compressor.c's gz_reset() writes (no name, mtime 0, OS 3),
 *    raw deflate (RFC 1951) with the fixed Huffman codes, CRC-32 and ISIZE. Runs of one byte value are
 *    encoded as a literal plus length/distance-1 matches (zero pages shrink ~150x); other bytes are
 *    literals. One non-final fixed block for the whole stream, closed by an empty final fixed block.
 *  - zstd (RFC 8878): one frame, no content size, window 128 KiB, content checksum flag set (the low 32
 *    bits of XXH64 of the content, seed 0; FreeBSD's zstd dump stream sets ZSTD_p_checksumFlag), runs of
 *    >= 32 equal bytes as RLE blocks, everything else as raw blocks of at most 128 KiB, closed by an
 *    empty last raw block and the checksum.
 * Not imitated: the real compression levels (kern.kerneldump_gzlevel), Huffman-coded literals, long
 * matches, compressed zstd blocks; `mock.no_compression=1` boots a kernel without GZIO/ZSTDIO, whose
 * `dumpon -z/-Z` fails as set_dumper()'s EINVAL does.
 */

#define KERNELDUMP_COMP_NONE 0
#define KERNELDUMP_COMP_GZIP 1
#define KERNELDUMP_COMP_ZSTD 2
#define COMP_OUTBUF 32768UL         /* staging for device writes (a multiple of 512, <= VTBLK_MAXIO) */
#define ZSTD_BLOCK_MAX 131072UL     /* Block_Maximum_Size = min(Window_Size, 128 KiB) */
#define ZSTD_RLE_MIN 32             /* shorter runs stay in the raw block */

int dump_compression;               /* what `dumpon -z/-Z` configured (FreeBSD: di->kdcomp != NULL) */
int mock_no_compression;            /* kenv mock.no_compression=1: a kernel without GZIO/ZSTDIO */

static struct {
	int kind, err;
	u64 outoff, limit, outlen;      /* next device offset, first byte past the usable area, bytes made */
	u32 fill;                       /* bytes staged in outbuf */
	u64 bits; int nbits;            /* deflate bit writer (LSB first) */
	u32 crc; u64 isize;
	u8 run_byte; u64 run_len;       /* the run of equal bytes not yet encoded */
	u32 rawlen;                     /* zstd: bytes waiting in rawbuf */
	u64 xv[4], xtotal; u8 xbuf[32]; u32 xfill; /* XXH64 streaming state */
} kerneldumpcomp;
static u8 kerneldumpcomp_buf[COMP_OUTBUF] __attribute__((aligned(4096)));
static u8 kerneldumpcomp_raw[ZSTD_BLOCK_MAX];
static u8 kerneldumpcomp_in[4096] __attribute__((aligned(4096))); /* the page being encoded */

/* ---- output: whole blocks to the dump device */
static void comp_flush_out(int final)
{
	if (kerneldumpcomp.err || !kerneldumpcomp.fill) return;
	u32 len = kerneldumpcomp.fill;
	if (final && (len % 512)) { memset(kerneldumpcomp_buf + len, 0, 512 - len % 512); len += 512 - len % 512; }
	if (len % 512) return;
	if (kerneldumpcomp.outoff + len > kerneldumpcomp.limit) {
		kprintf("\nCompressed dump failed to fit in device boundaries.\n");
		kerneldumpcomp.err = 28; /* ENOSPC */
		return;
	}
	kerneldumpcomp.err = vtblk_dump(dump_state.dev, kva_to_pa(kerneldumpcomp_buf), kerneldumpcomp.outoff, len);
	kerneldumpcomp.outoff += len;
	kerneldumpcomp.fill = 0;
}
static void comp_byte(u8 b)
{
	if (kerneldumpcomp.err) return;  /* a failed stream makes no more output */
	kerneldumpcomp_buf[kerneldumpcomp.fill++] = b;
	kerneldumpcomp.outlen++;
	if (kerneldumpcomp.fill == COMP_OUTBUF) comp_flush_out(0);
}
static void comp_bytes(const u8 *p, u64 n) { while (n--) comp_byte(*p++); }
static void comp_le32(u32 v) { for (int i = 0; i < 4; i++) comp_byte((u8)(v >> (8 * i))); }

/* ---- checksums: XXH64 (the xxHash specification); gzip's CRC-32 is crc32_update() (mock_crc32.h) */

#define XP1 0x9E3779B185EBCA87ULL
#define XP2 0xC2B2AE3D27D4EB4FULL
#define XP3 0x165667B19E3779F9ULL
#define XP4 0x85EBCA77C2B2AE63ULL
#define XP5 0x27D4EB2F165667C5ULL
static u64 rotl64(u64 x, int r) { return (x << r) | (x >> (64 - r)); }
static u64 xx_round(u64 acc, u64 in) { acc += in * XP2; acc = rotl64(acc, 31); return acc * XP1; }
static u64 xx_merge(u64 h, u64 v) { h ^= xx_round(0, v); return h * XP1 + XP4; }
static u64 rd64(const u8 *p) { u64 v; memcpy(&v, p, 8); return v; }
static u32 rd32(const u8 *p) { u32 v; memcpy(&v, p, 4); return v; }
static void xx_init(void)
{
	kerneldumpcomp.xv[0] = XP1 + XP2; kerneldumpcomp.xv[1] = XP2; kerneldumpcomp.xv[2] = 0; kerneldumpcomp.xv[3] = 0 - XP1;
	kerneldumpcomp.xtotal = 0; kerneldumpcomp.xfill = 0;
}
static void xx_stripe(const u8 *p) { for (int i = 0; i < 4; i++) kerneldumpcomp.xv[i] = xx_round(kerneldumpcomp.xv[i], rd64(p + 8 * i)); }
static void xx_update(const u8 *p, u64 n)
{
	kerneldumpcomp.xtotal += n;
	if (kerneldumpcomp.xfill) {
		while (n && kerneldumpcomp.xfill < 32) { kerneldumpcomp.xbuf[kerneldumpcomp.xfill++] = *p++; n--; }
		if (kerneldumpcomp.xfill < 32) return;
		xx_stripe(kerneldumpcomp.xbuf);
		kerneldumpcomp.xfill = 0;
	}
	for (; n >= 32; p += 32, n -= 32) xx_stripe(p);
	while (n--) kerneldumpcomp.xbuf[kerneldumpcomp.xfill++] = *p++;
}
static u64 xx_digest(void)
{
	u64 h;
	if (kerneldumpcomp.xtotal >= 32) {
		h = rotl64(kerneldumpcomp.xv[0], 1) + rotl64(kerneldumpcomp.xv[1], 7) + rotl64(kerneldumpcomp.xv[2], 12) + rotl64(kerneldumpcomp.xv[3], 18);
		for (int i = 0; i < 4; i++) h = xx_merge(h, kerneldumpcomp.xv[i]);
	} else {
		h = XP5; /* seed 0 */
	}
	h += kerneldumpcomp.xtotal;
	const u8 *p = kerneldumpcomp.xbuf;
	u32 n = kerneldumpcomp.xfill;
	for (; n >= 8; p += 8, n -= 8) { h ^= xx_round(0, rd64(p)); h = rotl64(h, 27) * XP1 + XP4; }
	if (n >= 4) { h ^= (u64)rd32(p) * XP1; h = rotl64(h, 23) * XP2 + XP3; p += 4; n -= 4; }
	while (n--) { h ^= (*p++) * XP5; h = rotl64(h, 11) * XP1; }
	h ^= h >> 33; h *= XP2; h ^= h >> 29; h *= XP3; h ^= h >> 32;
	return h;
}

/* ---- deflate with the fixed Huffman codes (RFC 1951 s. 3.2.6) */
static void defl_bits(u32 v, int n)
{
	kerneldumpcomp.bits |= (u64)v << kerneldumpcomp.nbits;
	kerneldumpcomp.nbits += n;
	while (kerneldumpcomp.nbits >= 8) { comp_byte((u8)kerneldumpcomp.bits); kerneldumpcomp.bits >>= 8; kerneldumpcomp.nbits -= 8; }
}
/* a Huffman code goes out most-significant bit first */
static void defl_code(u32 code, int len)
{
	u32 r = 0;
	for (int i = 0; i < len; i++) r |= ((code >> i) & 1) << (len - 1 - i);
	defl_bits(r, len);
}
static void defl_symbol(u32 sym)
{
	if (sym < 144) defl_code(0x30 + sym, 8);
	else if (sym < 256) defl_code(0x190 + sym - 144, 9);
	else if (sym < 280) defl_code(sym - 256, 7);
	else defl_code(0xc0 + sym - 280, 8);
}
static const u16 len_base[29] = { 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
	67, 83, 99, 115, 131, 163, 195, 227, 258 };
static const u8 len_extra[29] = { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5,
	5, 5, 0 };
/* a match of `len` (3..258) bytes at distance 1 (distance code 0, five bits, no extra bits) */
static void defl_match1(u32 len)
{
	int i = 28;
	while (len_base[i] > len) i--;
	defl_symbol(257 + (u32)i);
	if (len_extra[i]) defl_bits(len - len_base[i], len_extra[i]);
	defl_code(0, 5);
}
static void defl_run(u8 b, u64 n)
{
	defl_symbol(b);
	n--;
	while (n >= 3) { u32 k = n > 258 ? 258 : (u32)n; defl_match1(k); n -= k; }
	while (n--) defl_symbol(b);
}

/* ---- zstd frame (RFC 8878 s. 3.1): raw and RLE blocks */
static void zstd_block_header(int last, int type, u32 size)
{
	u32 h = (u32)last | ((u32)type << 1) | (size << 3);
	comp_byte((u8)h); comp_byte((u8)(h >> 8)); comp_byte((u8)(h >> 16));
}
static void zstd_flush_raw(void)
{
	if (!kerneldumpcomp.rawlen) return;
	zstd_block_header(0, 0, kerneldumpcomp.rawlen);
	comp_bytes(kerneldumpcomp_raw, kerneldumpcomp.rawlen);
	kerneldumpcomp.rawlen = 0;
}
static void zstd_raw(u8 b)
{
	kerneldumpcomp_raw[kerneldumpcomp.rawlen++] = b;
	if (kerneldumpcomp.rawlen == ZSTD_BLOCK_MAX) zstd_flush_raw();
}
static void zstd_run(u8 b, u64 n)
{
	if (n < ZSTD_RLE_MIN) { while (n--) zstd_raw(b); return; }
	zstd_flush_raw();
	while (n) {
		u32 k = n > ZSTD_BLOCK_MAX ? (u32)ZSTD_BLOCK_MAX : (u32)n;
		zstd_block_header(0, 1, k);
		comp_byte(b);
		n -= k;
	}
}

/* ---- the stream */
static void comp_close_run(void)
{
	if (!kerneldumpcomp.run_len) return;
	if (kerneldumpcomp.kind == KERNELDUMP_COMP_GZIP) defl_run(kerneldumpcomp.run_byte, kerneldumpcomp.run_len);
	else zstd_run(kerneldumpcomp.run_byte, kerneldumpcomp.run_len);
	kerneldumpcomp.run_len = 0;
}

/* dump_start(): the stream begins at the data offset of the (uncompressed) extent */
static void comp_start(u64 dumpoff, u64 limit)
{
	memset(&kerneldumpcomp, 0, sizeof(kerneldumpcomp));
	kerneldumpcomp.kind = dump_compression;
	kerneldumpcomp.outoff = dumpoff;
	kerneldumpcomp.limit = limit;
	if (kerneldumpcomp.kind == KERNELDUMP_COMP_GZIP) {
		static const u8 gzhdr[10] = { 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3 };
		kerneldumpcomp.crc = 0;  /* crc32_update()'s "no bytes yet" (mock_crc32.h) */
		comp_bytes(gzhdr, sizeof(gzhdr));
		defl_bits(0, 1);  /* BFINAL 0 */
		defl_bits(1, 2);  /* BTYPE 01: fixed Huffman codes */
	} else {
		static const u8 zhdr[6] = { 0x28, 0xb5, 0x2f, 0xfd,
			0x04,   /* Frame_Header_Descriptor: Content_Checksum_flag, no FCS, not single segment */
			0x38 }; /* Window_Descriptor: exponent 7, mantissa 0 -> 2^17 */
		xx_init();
		comp_bytes(zhdr, sizeof(zhdr));
	}
}

static void comp_encode(const u8 *p, u64 len)
{
	if (kerneldumpcomp.kind == KERNELDUMP_COMP_GZIP) kerneldumpcomp.crc = crc32_update(kerneldumpcomp.crc, p, len);
	else xx_update(p, len);
	kerneldumpcomp.isize += len;
	u64 i = 0;
	while (i < len && !kerneldumpcomp.err) {
		if (kerneldumpcomp.run_len && p[i] == kerneldumpcomp.run_byte) {
			u64 j = i + 1;
			u64 pat = 0x0101010101010101ULL * kerneldumpcomp.run_byte;
			while (j + 8 <= len && rd64(p + j) == pat) j += 8;
			while (j < len && p[j] == kerneldumpcomp.run_byte) j++;
			kerneldumpcomp.run_len += j - i;
			i = j;
			continue;
		}
		comp_close_run();
		kerneldumpcomp.run_byte = p[i++];
		kerneldumpcomp.run_len = 1;
	}
}

/* dump_append(): bytes of physical memory [pa, pa+len) into the stream, a page at a time through a
 * bounce page, so that the checksum and the encoder see the same bytes even where the dumped page is one
 * the compressor itself is writing (its own state is kernel .bss, in the dump like any other page) */
static int comp_append_pa(u64 pa, u64 len)
{
	while (len && !kerneldumpcomp.err) {
		u64 n = len > PAGE ? PAGE : len;
		memcpy(kerneldumpcomp_in, pa_to_dmap(pa), n);
		comp_encode(kerneldumpcomp_in, n);
		pa += n; len -= n;
	}
	return kerneldumpcomp.err;
}

/* dump_finish(): close the stream, write the last (zero-padded) block; *length = compressed bytes */
static int comp_finish(u64 *length)
{
	comp_close_run();
	if (kerneldumpcomp.kind == KERNELDUMP_COMP_GZIP) {
		defl_symbol(256);                    /* end of the open block */
		defl_bits(1, 1); defl_bits(1, 2);    /* an empty final fixed block */
		defl_symbol(256);
		if (kerneldumpcomp.nbits) defl_bits(0, 8 - kerneldumpcomp.nbits);
		comp_le32(kerneldumpcomp.crc);
		comp_le32((u32)kerneldumpcomp.isize);
	} else {
		zstd_flush_raw();
		zstd_block_header(1, 0, 0);          /* an empty last raw block */
		comp_le32((u32)xx_digest());
	}
	comp_flush_out(1);
	*length = kerneldumpcomp.outlen;
	return kerneldumpcomp.err;
}
