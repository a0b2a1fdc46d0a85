/*
 * MockFreeBSDKernel: CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), written from RFC 1952 s. 8
 * and the UEFI specification's GPT checksums. A STAND-IN, not FreeBSD, and no FreeBSD code.
 *
 * One implementation for both users: the gzip trailer of a compressed dump (mock_compress.h) and the
 * GPT header / entry-array checks of a partition as dump device (mock_gpt.h). The table is filled at
 * boot (crc32_init() in mock_init), so it never changes while a dump is written.
 */

static u32 crc32_table[256];

static void crc32_init(void)
{
	for (u32 n = 0; n < 256; n++) {
		u32 c = n;
		for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
		crc32_table[n] = c;
	}
}

/* The CRC-32 of the bytes so far (`crc`, 0 for none) extended by [p, p+n) */
static u32 crc32_update(u32 crc, const u8 *p, u64 n)
{
	crc = ~crc;
	while (n--) crc = crc32_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}
