/*
 * MockFreeBSDKernel: dumps onto a GPT partition (`dumpon /dev/vtbdNpM`). A STAND-IN, not FreeBSD, and
 * no FreeBSD code: written from the UEFI specification's GPT layout and from FreeBSD 12.1's observable
 * behaviour (dumpon(8)'s messages and exit codes, the kernel's dump placement and its console words).
 *
 * Included by mock.c (one translation unit) after the virtio-blk driver and the dump state. It imitates:
 *
 *  - GEOM's partition devices: `/dev/vtbdNpM` is GPT entry M of disk N. The table is read like
 *    g_part_gpt tastes it: through the disk's driver (normal reads through vtblk requests, as at attach),
 *    the primary header at LBA 1 ("EFI PART", header CRC32, entry array CRC32), else the backup header
 *    in the disk's last sector. An unused entry, an entry outside the disk or a disk without a valid
 *    table: no such device node, so dumpon(8) says "dumpon: /dev/vtbd0p9: No such file or directory"
 *    (its err(EX_OSFILE) on open, status 72).
 *  - dumpon(8)'s check_size() (12.1): with debug.minidump != 1 a device smaller than physical memory is
 *    refused, exit status 74 (EX_IOERR), "<dev> is smaller than physical memory" printed with -v only;
 *    dumpon skips the check for a compressed dump (-z/-Z), which may well fit a smaller device.
 *  - the partition as the dump medium: `dumper.mediaoffset` / `dumper.mediasize` are the partition's
 *    byte range on the disk (GEOM's kerneldump ioctl on a partition), so dump_start() places the dump
 *    at the END OF THE PARTITION (12.x: data at mediaoffset + mediasize - 512 - extent, trailer in its
 *    last sector), and a dump larger than the partition fails as 12.1 does: "Dump failed. Partition too
 *    small." (dump_start()'s E2BIG, mock.c), with every write checked like dump_check_bounds():
 *    "Attempt to write outside dump device boundaries." (ENOSPC).
 */

#define GPT_ENOSPC 28
#define GPT_EX_OSFILE 72
#define GPT_EX_IOERR 74

static u8 *gpt_sector_buf;
static struct bio gpt_bio;

/* One 512-byte sector of the disk through the driver's normal read path (a request from vtblk_req_free,
 * as at attach): 0 on success. */
static int gpt_read_sector(struct vtblk_softc *sc, u64 lba, u8 *out)
{
	if (!sc->vtblk_vq || lba >= sc->vtblk_mock_sectors) return -1;
	if (!gpt_sector_buf) gpt_sector_buf = malloc_(512);
	memset(&gpt_bio, 0, sizeof(gpt_bio));
	if (vtblk_read_sectors(sc, &lba, 1, gpt_sector_buf, &gpt_bio)) return -1;
	memcpy(out, gpt_sector_buf, 512);
	return 0;
}

static u32 gpt_le32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static u64 gpt_le64(const u8 *p) { return gpt_le32(p) | (u64)gpt_le32(p + 4) << 32; }

/* Entry `index` (1-based) of the GPT whose header is at `hdr_lba`: its byte range; 0 when found. */
static int gpt_entry_from(struct vtblk_softc *sc, u64 hdr_lba, int index, u64 *off, u64 *size)
{
	u8 hdr[512], sec[512];
	if (gpt_read_sector(sc, hdr_lba, hdr)) return -1;
	for (int i = 0; i < 8; i++) if (hdr[i] != (u8)"EFI PART"[i]) return -1;
	u32 hsize = gpt_le32(hdr + 12), hcrc = gpt_le32(hdr + 16);
	if (hsize < 92 || hsize > 512) return -1;
	hdr[16] = hdr[17] = hdr[18] = hdr[19] = 0;
	if (crc32_update(0, hdr, hsize) != hcrc) return -1;
	if (gpt_le64(hdr + 24) != hdr_lba) return -1;
	u64 entries = gpt_le64(hdr + 72);
	u32 count = gpt_le32(hdr + 80), esize = gpt_le32(hdr + 84), ecrc = gpt_le32(hdr + 88);
	if (esize < 128 || esize > 512 || 512 % esize || count == 0 || count > 4096) return -1;
	u64 bytes = (u64)count * esize, want = (u64)(index - 1) * esize;
	u32 crc = 0;
	u8 entry[128];
	int have = 0;
	for (u64 done = 0; done < bytes; done += 512) {
		if (gpt_read_sector(sc, entries + done / 512, sec)) return -1;
		u64 n = bytes - done < 512 ? bytes - done : 512;
		crc = crc32_update(crc, sec, n);
		if (index >= 1 && want >= done && want < done + n) { memcpy(entry, sec + (want - done), 128); have = 1; }
	}
	if (crc != ecrc || !have) return -1;
	int used = 0;
	for (int i = 0; i < 16; i++) used |= entry[i];
	u64 first = gpt_le64(entry + 32), last = gpt_le64(entry + 40);
	if (!used || last < first || last >= sc->vtblk_mock_sectors) return -1;
	*off = first * 512;
	*size = (last - first + 1) * 512;
	return 0;
}

/* The dump medium named by `dev`: `/dev/vtbdN` (the whole disk) or `/dev/vtbdNpM` (GPT entry M, the
 * primary table or else the backup). 0 and the softc, byte offset and size when the device exists. */
static int gpt_dump_medium(const char *dev, struct vtblk_softc **sc, u64 *off, u64 *size)
{
	if (!sprefix(dev, "/dev/vtbd") || dev[9] < '0' || dev[9] > '3' || dev[9] - '0' >= nvblk) return -1;
	*sc = vtblk_softc_of(dev[9] - '0');
	if (!*sc) return -1;
	if (dev[10] == 0) { *off = 0; *size = (*sc)->vtblk_mock_sectors * 512; return 0; }
	if (dev[10] != 'p' || dev[11] < '1' || dev[11] > '9') return -1;
	int index = 0;
	for (const char *p = dev + 11; *p; p++) {
		if (*p < '0' || *p > '9' || index > 1000) return -1;
		index = index * 10 + (*p - '0');
	}
	if (!gpt_entry_from(*sc, 1, index, off, size)) return 0;
	return gpt_entry_from(*sc, (*sc)->vtblk_mock_sectors - 1, index, off, size);
}

/* dumpon(8) 12.1 on `dev` up to the kernel ioctl: open (No such file or directory), check_size();
 * returns the exit status, 0 with the medium filled in */
static int gpt_dumpon_open(const char *dev, int verbose, int compressed, struct vtblk_softc **sc, u64 *off,
			   u64 *size)
{
	if (gpt_dump_medium(dev, sc, off, size)) {
		printf_("dumpon: %s: No such file or directory\n", dev);
		return GPT_EX_OSFILE;
	}
	if (!compressed && do_minidump != 1 && *size < physmem * PAGE) {
		if (verbose) printf_("%s is smaller than physical memory\n", dev);
		return GPT_EX_IOERR;
	}
	return 0;
}

/* dump_check_bounds(): every dump write must lie inside [mediaoffset, mediaoffset + mediasize) */
static int gpt_dump_check_bounds(u64 offset, u64 len)
{
	if (len != 0 && (offset < dumper.mediaoffset || offset - dumper.mediaoffset + len > dumper.mediasize)) {
		kprintf("Attempt to write outside dump device boundaries.\n");
		return GPT_ENOSPC;
	}
	return 0;
}
