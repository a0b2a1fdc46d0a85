/*
 * MockFreeBSDKernel: what the in-guest witness types in the single-user shell. A STAND-IN, not FreeBSD.
 *
 * Included by mock_sh.h (one translation unit with mock.c). fbsd-hil's witness reads kernel pages from
 * inside the guest before a dump, with the tools of a FreeBSD 12.1 single-user root (/bin/dd, /sbin/sha256):
 *
 *   dd if=/dev/kmem bs=4096 skip=<VA/4096> count=1 2>/dev/null | sha256
 *   dd if=/dev/mem bs=4096 skip=<PFN> count=1 2>/dev/null | sha256
 *   dd if=/dev/kmem bs=4096 skip=<VA/4096> count=1 of=/dev/null      (dd's own words when a read fails)
 *
 * This header imitates exactly that:
 *  - a two-stage pipeline `A | B`: A's standard output is buffered (at most WITNESS_PIPE_MAX bytes) and is
 *    B's standard input; A's standard error is not shown (the shell stand-in drops `2>/dev/null`, and fbsd-hil
 *    always redirects it there in a pipeline); the status is B's, as in sh(1);
 *  - dd with if=, of=/dev/null, bs=, skip=, count= (decimal). The file offset is skip*bs as a 64-bit unsigned
 *    product, which is how FreeBSD 12's dd reaches kernel addresses >= 2^63 on a character device (its
 *    seek_offset(): "Some such files (e.g. /dev/kmem) permit negative offsets"). /dev/kmem reads a kernel
 *    virtual address through this kernel's own page tables (KPML4phys; 1 GiB / 2 MiB / 4 KiB leaves); an
 *    unmapped page fails the read with EFAULT, as amd64's memrw() does: "dd: /dev/kmem: Bad address", status 1.
 *    /dev/mem reads physical memory through the direct map; beyond the end of RAM the stand-in answers EFAULT
 *    too. Without of=, dd's output is a pipeline's input only (binary data is never written to the console).
 *    On success dd reports "N+0 records in", "N+0 records out", "B bytes transferred in 0.000000 secs (0
 *    bytes/sec)" (no clock in the stand-in);
 *  - sha256 of its standard input: the 64 hex digits alone, as FreeBSD's md5(1) family prints for stdin.
 *    The digest is computed here from FIPS 180-4 (section 6.2); file operands are refused (no file system).
 *
 * Fault injection: kenv `mock.witness_lie=1` flips one byte (offset WITNESS_LIE_OFFSET) of every page
 * /dev/kmem returns, while memory itself and /dev/mem keep the right bytes: the harness's witness must then
 * fail the cross-check for each /dev/kmem page, naming it.
 */

#define WITNESS_PIPE_MAX 16384
#define WITNESS_LIE_OFFSET 7
#define EFAULT_TEXT "Bad address"

static int mock_witness_lie; /* kenv mock.witness_lie=1 */
static u8 witness_pipe[WITNESS_PIPE_MAX];

static void mock_witness_knobs(void)
{
	const char *wl = kern_getenv("mock.witness_lie");
	if (wl && wl[0] == '1' && wl[1] == 0) {
		mock_witness_lie = 1;
		kprintf("mock: /dev/kmem will return every page with byte %d flipped (mock.witness_lie=1)\n",
			WITNESS_LIE_OFFSET);
	}
}

/* ------------------------------------------------------------------ SHA-256 (FIPS 180-4, section 6.2) */
struct sha256_state { u32 h[8]; u8 block[64]; u64 total; int used; };

static const u32 sha256_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline u32 rotr32(u32 x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(struct sha256_state *s, const u8 *m)
{
	u32 w[64];
	for (int t = 0; t < 16; t++)
		w[t] = (u32)m[4 * t] << 24 | (u32)m[4 * t + 1] << 16 | (u32)m[4 * t + 2] << 8 | m[4 * t + 3];
	for (int t = 16; t < 64; t++) {
		u32 s0 = rotr32(w[t - 15], 7) ^ rotr32(w[t - 15], 18) ^ (w[t - 15] >> 3);
		u32 s1 = rotr32(w[t - 2], 17) ^ rotr32(w[t - 2], 19) ^ (w[t - 2] >> 10);
		w[t] = w[t - 16] + s0 + w[t - 7] + s1;
	}
	u32 a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (int t = 0; t < 64; t++) {
		u32 t1 = h + (rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[t] + w[t];
		u32 t2 = (rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
	}
	s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
	s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha256_digest(const u8 *data, u64 len, u8 out[32])
{
	static const u32 h0[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
				   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	struct sha256_state s;
	memcpy(s.h, h0, sizeof(h0));
	s.used = 0;
	s.total = len;
	for (; len >= 64; len -= 64, data += 64) sha256_block(&s, data);
	memset(s.block, 0, 64);
	memcpy(s.block, data, len);
	s.block[len] = 0x80; /* the 1 bit, then zeros, then the length in bits (big-endian) */
	if (len >= 56) { sha256_block(&s, s.block); memset(s.block, 0, 64); }
	for (int i = 0; i < 8; i++) s.block[63 - i] = (u8)((s.total * 8) >> (8 * i));
	sha256_block(&s, s.block);
	for (int i = 0; i < 8; i++)
		for (int j = 0; j < 4; j++) out[4 * i + j] = (u8)(s.h[i] >> (24 - 8 * j));
}

static int sh_sha256(int argc, char **argv, const u8 *in, u64 in_len)
{
	if (argc > 1) {
		printf_("sha256: %s: No such file or directory\n", argv[1]);
		return 1;
	}
	u8 d[32];
	sha256_digest(in, in_len, d);
	for (int i = 0; i < 32; i++) printf_("%02x", d[i]);
	printf_("\n");
	return 0;
}

/* ------------------------------------------------------------------ /dev/kmem, /dev/mem, dd */
/* pmap_extract(kernel_pmap, va) through this kernel's own tables; ~0: not mapped */
static u64 witness_kextract(u64 va)
{
	u64 *t = pa_to_dmap(KPML4phys);
	u64 e = t[(va >> 39) & 511];
	if (!(e & PG_V)) return ~0UL;
	e = ((u64 *)pa_to_dmap(e & PG_FRAME))[(va >> 30) & 511];
	if (!(e & PG_V)) return ~0UL;
	if (e & PG_PS) return (e & 0x000fffffc0000000UL) + (va & ((1UL << 30) - 1));
	e = ((u64 *)pa_to_dmap(e & PG_FRAME))[(va >> 21) & 511];
	if (!(e & PG_V)) return ~0UL;
	if (e & PG_PS) return (e & PG_PS_FRAME) + (va & ((1UL << 21) - 1));
	e = ((u64 *)pa_to_dmap(e & PG_FRAME))[(va >> 12) & 511];
	if (!(e & PG_V)) return ~0UL;
	return (e & PG_FRAME) + (va & (PAGE - 1));
}

/* one read(2) of `len` bytes at `off` of /dev/kmem (kmem=1) or /dev/mem; 0 or EFAULT (-1) */
static int witness_read(int kmem, u64 off, u8 *to, u64 len)
{
	for (u64 done = 0; done < len;) {
		u64 at = off + done, n = PAGE - (at & (PAGE - 1));
		if (n > len - done) n = len - done;
		u64 pa = kmem ? witness_kextract(at) : at;
		if (pa == ~0UL || pa + n > ram_top) return -1;
		memcpy(to + done, pa_to_dmap(pa), n);
		if (kmem && mock_witness_lie && ((at & (PAGE - 1)) <= WITNESS_LIE_OFFSET) &&
		    ((at & (PAGE - 1)) + n > WITNESS_LIE_OFFSET))
			to[done + WITNESS_LIE_OFFSET - (at & (PAGE - 1))] ^= 0xff;
		done += n;
	}
	return 0;
}

static int witness_u64(const char *s, u64 *out)
{
	u64 v = 0;
	if (!*s) return 0;
	for (; *s; s++) { if (*s < '0' || *s > '9') return 0; v = v * 10 + (u64)(*s - '0'); }
	*out = v;
	return 1;
}

/* dd; `out`: the pipeline's buffer (dd's stderr is then not shown), or 0 (dd alone) */
static int sh_dd(int argc, char **argv, u8 *out, u64 *out_len)
{
	const char *in = 0, *of = 0;
	u64 bs = 512, skip = 0, count = ~0UL;
	for (int i = 1; i < argc; i++) {
		char *a = argv[i];
		if (sprefix(a, "if=")) in = a + 3;
		else if (sprefix(a, "of=")) of = a + 3;
		else if (sprefix(a, "bs=") && witness_u64(a + 3, &bs) && bs > 0) continue;
		else if (sprefix(a, "skip=") && witness_u64(a + 5, &skip)) continue;
		else if (sprefix(a, "count=") && witness_u64(a + 6, &count)) continue;
		else { if (!out) printf_("dd: %s: operand not imitated by this stand-in\n", a); return 1; }
	}
	int kmem = in && seq(in, "/dev/kmem");
	if (!in || !(kmem || seq(in, "/dev/mem"))) {
		if (!out) printf_("dd: %s: only /dev/kmem and /dev/mem are imitated by this stand-in\n", in ? in : "stdin");
		return 1;
	}
	if (of && !seq(of, "/dev/null")) { printf_("dd: %s: only of=/dev/null is imitated\n", of); return 1; }
	if (!of && !out) { printf_("dd: the stand-in writes dd's data only into a pipe or /dev/null\n"); return 1; }
	if (count == ~0UL || bs > WITNESS_PIPE_MAX) {
		if (!out) printf_("dd: the stand-in needs count= and bs <= %d\n", WITNESS_PIPE_MAX);
		return 1;
	}
	static u8 block[WITNESS_PIPE_MAX];
	u64 records = 0, bytes = 0, off = skip * bs; /* dd's seek_offset(): unsigned product, "negative" off_t */
	int status = 0;
	for (; records < count; records++) {
		if (witness_read(kmem, off + records * bs, block, bs) != 0) {
			if (!out) printf_("dd: %s: %s\n", in, EFAULT_TEXT);
			status = 1;
			break;
		}
		if (out) {
			if (*out_len + bs > WITNESS_PIPE_MAX) { status = 1; break; }
			memcpy(out + *out_len, block, bs);
			*out_len += bs;
		}
		bytes += bs;
	}
	if (!out)
		printf_("%lu+0 records in\n%lu+0 records out\n%lu bytes transferred in 0.000000 secs (0 bytes/sec)\n",
			records, records, bytes);
	return status;
}

/* The hook in sh_simple: a pipeline `A | B` (A = dd, B = sha256), dd alone, sha256 alone (empty stdin).
 * Returns 1 when it ran the command line (its status in *status), 0 when the line is not one of these. */
static int mock_witness_command(int argc, char **argv, int *status)
{
	int bar = -1;
	for (int i = 0; i < argc; i++) if (seq(argv[i], "|")) { bar = i; break; }
	if (bar < 0) {
		if (argc && seq(argv[0], "dd")) { *status = sh_dd(argc, argv, 0, 0); return 1; }
		if (argc && seq(argv[0], "sha256")) { *status = sh_sha256(argc, argv, (const u8 *)"", 0); return 1; }
		return 0;
	}
	char **b = argv + bar + 1;
	int bc = argc - bar - 1;
	u64 len = 0;
	if (bar == 0 || bc == 0) { printf_("sh: syntax error: `|' unexpected\n"); *status = 2; return 1; }
	for (int i = 0; i < bc; i++) if (seq(b[i], "|")) { printf_("sh: the stand-in imitates two-stage pipelines only\n"); *status = 2; return 1; }
	if (seq(argv[0], "dd")) (void)sh_dd(bar, argv, witness_pipe, &len);
	else if (!seq(argv[0], "echo")) { printf_("sh: %s: not found\n", argv[0]); }
	else for (int i = 1; i < bar; i++) { /* echo WORDS | B */
		unsigned long l = slen(argv[i]);
		if (len + l + 1 >= WITNESS_PIPE_MAX) break;
		if (i > 1) witness_pipe[len++] = ' ';
		memcpy(witness_pipe + len, argv[i], l);
		len += l;
	}
	if (seq(argv[0], "echo")) witness_pipe[len++] = '\n';
	if (seq(b[0], "sha256")) *status = sh_sha256(bc, b, witness_pipe, len);
	else { printf_("sh: %s: not found\n", b[0]); *status = 127; }
	return 1;
}
