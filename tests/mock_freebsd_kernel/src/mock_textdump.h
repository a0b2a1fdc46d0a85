/* mock_textdump.h - the stand-in's ddb output capture and textdumps (included by mock.c).
 *
 * Imitates, from the outside, FreeBSD 12.1's sys/ddb/db_capture.c and sys/ddb/db_textdump.c as
 * /work/shared/reference/freebsd-dump-formats.md sections 6 and 7.4 describe them (this is the
 * mock's own code, not FreeBSD's):
 *   capture on|off|reset|status  ddb output (prompt, the command line as typed, what the command
 *                                prints; not the echo, not kernel printf) goes into a 48 KiB buffer
 *                                while on; "Capture already started" / "Capture not started";
 *                                status "N/M bytes used" + "capture is on|off"
 *   textdump set|unset|status|dump   "textdump set", "textdump is set" / "textdump is not set",
 *                                "textdump unset"; `dump` makes the next dump a textdump and dumps now
 *   dump                         refused while a textdump is pending ("textdump_pending set." ...)
 *   show panic                   "panicstr not set" / "panic: <msg>"
 * A pending textdump (ddb `textdump set`, or `sysctl debug.ddb.textdump.pending=1` in the shell) is
 * what doadump() writes instead of a minidump/full dump, also on the panic path: ustar members
 * ddb.txt (the capture buffer, then emptied), msgbuf.txt (the message buffer, NULs dropped),
 * panic.txt (panicstr, if panicking), version.txt (`version`), 512-byte blocks written backwards from
 * the end of the dump device between a "FreeBSD Text Dump" trailer (last sector) and leader, no
 * end-of-archive blocks; "Textdump complete." (or "Textdump: Insufficient space on dump partition" /
 * "Textdump: Error N writing dump"). No config.txt (the mock is no INCLUDE_CONFIG_FILE kernel).
 *
 * Perturbation knob: kenv mock.corrupt_textdump=ddb writes ddb.txt with the first character of its
 * second line replaced by '#' (the console shows the right text): the harness must fail the ddb.txt
 * check, naming that line.
 */

#define TEXTDUMP_BLOCKSIZE 512
#define TEXTDUMP_SIZEOF_METADATA (64 * 1024) /* never written: the start of the dump device */
#define DB_CAPTURE_BUFSIZE (48 * 1024)        /* debug.ddb.capture.bufsize's default */

static int textdump_pending; /* sysctl debug.ddb.textdump.pending (the shell's knob table names it too) */
static char db_capture_buf[DB_CAPTURE_BUFSIZE] __attribute__((aligned(512)));
static u32 db_capture_bufoff, db_capture_bufpadding;
static int db_capture_inprogress;
static int db_capture_in_echo; /* db_readline echoes what is typed: the line itself is captured at its end */
static char textdump_block_buffer[TEXTDUMP_BLOCKSIZE] __attribute__((aligned(512)));
static u64 textdump_offset, textdump_mediasize;
static int textdump_error;
static int mock_corrupt_textdump_ddb; /* kenv mock.corrupt_textdump=ddb */

static void textdump_knobs(const char *corrupt)
{
	if (!corrupt || !seq(corrupt, "ddb")) return;
	mock_corrupt_textdump_ddb = 1;
	kprintf("mock: will write ddb.txt with its second line changed (mock.corrupt_textdump=ddb)\n");
}

/* ---------------------------------------------------------------- capture (db_capture.c's shape) */
static void db_capture_write(const char *s, u32 n)
{
	if (!db_capture_inprogress) return;
	if (n > DB_CAPTURE_BUFSIZE - db_capture_bufoff) n = DB_CAPTURE_BUFSIZE - db_capture_bufoff;
	memcpy(db_capture_buf + db_capture_bufoff, s, n);
	db_capture_bufoff += n;
}

/* putc_'s hook: ddb's own output only (kdb_frame is set while ddb runs; kernel printf is not ddb's).
 * A tab is captured as the spaces the console gets (12.1's db_force_whitespace writes spaces to both). */
static void db_capture_writech(char c)
{
	if (!kdb_frame || db_capture_in_echo) return;
	if (c != '\t') { db_capture_write(&c, 1); return; }
	for (int col = db_output_position; col == db_output_position || col % 8; col++) db_capture_write(" ", 1);
}

/* db_readline's hooks: the echo is not captured, the finished line is (before its newline) */
static void db_capture_line_start(void) { db_capture_in_echo = 1; }
static void db_capture_line_end(const char *line, int n)
{
	db_capture_in_echo = 0;
	if (kdb_frame) db_capture_write(line, (u32)n);
}

static void db_capture_cmd(const char *arg)
{
	if (seq(arg, "on")) {
		if (db_capture_inprogress) printf_("Capture already started\n");
		db_capture_inprogress = 1;
	} else if (seq(arg, "off")) {
		if (!db_capture_inprogress) printf_("Capture not started\n");
		db_capture_inprogress = 0;
	} else if (seq(arg, "reset")) {
		db_capture_inprogress = 0;
		db_capture_bufoff = db_capture_bufpadding = 0;
	} else if (seq(arg, "status")) {
		printf_("%u/%u bytes used\n", db_capture_bufoff, (u32)DB_CAPTURE_BUFSIZE);
		printf_(db_capture_inprogress ? "capture is on\n" : "capture is off\n");
	} else {
		printf_("capture [on|off|reset|status]\n");
	}
}

/* ---------------------------------------------------------------- the ustar stream, block by block */
static void td_octal(char *dst, int width, u64 v, int pad)
{
	char tmp[24]; int n = 0;
	do { tmp[n++] = (char)('0' + (v & 7)); v >>= 3; } while (v);
	int i = 0;
	for (; pad && i < pad - n; i++) dst[i] = ' ';
	while (n && i < width - 1) dst[i++] = tmp[--n];
	dst[i] = 0;
}

static void textdump_mkustar(char *b, const char *name, u32 size)
{
	memset(b, 0, TEXTDUMP_BLOCKSIZE);
	memcpy(b, name, slen(name));
	memcpy(b + 100, "0600", 4);            /* mode */
	b[108] = '0'; b[116] = '0';            /* uid, gid */
	td_octal(b + 124, 12, size, 0);
	td_octal(b + 136, 12, (u64)time_second, 0);
	b[156] = 0;                            /* typeflag: regular file (a NUL, as the kernel writes it) */
	memcpy(b + 257, "ustar", 5);
	memcpy(b + 265, "root", 4);
	memcpy(b + 297, "wheel", 5);
	memset(b + 148, ' ', 8);
	u32 sum = 0;
	for (int i = 0; i < TEXTDUMP_BLOCKSIZE; i++) sum += (u8)b[i];
	td_octal(b + 148, 7, sum, 6);          /* "%6o" and its NUL; the eighth byte stays a space */
}

static void textdump_writenextblock(const void *buf)
{
	u64 off = textdump_offset;
	textdump_offset -= TEXTDUMP_BLOCKSIZE;
	if (textdump_error) return;
	if (off + TEXTDUMP_BLOCKSIZE > textdump_mediasize) { textdump_error = 5; return; }   /* EIO */
	if (off < TEXTDUMP_SIZEOF_METADATA) { textdump_error = 28; return; }               /* ENOSPC */
	/* offsets are the dump medium's (a GPT partition with dumpon /dev/vtbdNpM starts at mediaoffset) */
	textdump_error = vtblk_dump(dumper.priv, kva_to_pa(buf), dumper.mediaoffset + off, TEXTDUMP_BLOCKSIZE) ? 5 : 0;
}

static void textdump_mkdumpheader(u64 dumplen)
{
	struct kerneldumpheader *h = (struct kerneldumpheader *)textdump_block_buffer;
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, "FreeBSD Text Dump", 17);
	memcpy(h->architecture, "amd64", 5);
	h->version = be32(4);                  /* KERNELDUMPVERSION */
	h->architectureversion = be32(4);      /* KERNELDUMP_TEXT_VERSION */
	h->dumplength = be64(dumplen);
	h->dumpextent = be64(dumplen);
	h->dumptime = be64((u64)time_second);
	h->blocksize = be32(TEXTDUMP_BLOCKSIZE);
	memcpy(h->hostname, hostname, slen(hostname));
	unsigned long vl = slen(version);
	memcpy(h->versionstring, version, vl < 191 ? vl : 191);
	if (panicstr) {
		unsigned long pl = slen(panicstr);
		memcpy(h->panicstring, panicstr, pl < 174 ? pl : 174);
	}
	u32 parity = 0;
	for (int i = 0; i < 128; i++) parity ^= ((u32 *)h)[i];
	h->parity = parity;
}

static void textdump_dump_ddb(void)
{
	if (!db_capture_bufoff) return;
	u32 rest = (DB_CAPTURE_BUFSIZE - db_capture_bufoff) % TEXTDUMP_BLOCKSIZE;
	memset(db_capture_buf + db_capture_bufoff, 0, rest);
	db_capture_bufpadding = rest;
	if (mock_corrupt_textdump_ddb) {
		for (u32 i = 0; i + 1 < db_capture_bufoff; i++)
			if (db_capture_buf[i] == '\n') { db_capture_buf[i + 1] = '#'; break; }
	}
	textdump_mkustar(textdump_block_buffer, "ddb.txt", db_capture_bufoff);
	textdump_writenextblock(textdump_block_buffer);
	for (u32 off = 0; off < db_capture_bufoff + db_capture_bufpadding; off += TEXTDUMP_BLOCKSIZE)
		textdump_writenextblock(db_capture_buf + off);
	db_capture_bufoff = db_capture_bufpadding = 0;
}

static void textdump_dump_msgbuf(void)
{
	struct msgbuf *m = msgbufp;
	u64 hdr = textdump_offset;
	textdump_mkustar(textdump_block_buffer, "msgbuf.txt", 0);  /* rewritten with the size below */
	textdump_writenextblock(textdump_block_buffer);
	u32 total = 0, fill = 0, pos = m->msg_wseq % m->msg_size;
	for (u32 i = 0; i < m->msg_size; i++) {
		char c = m->msg_ptr[(pos + i) % m->msg_size];
		if (!c) continue;
		textdump_block_buffer[fill++] = c;
		if (fill == TEXTDUMP_BLOCKSIZE) { textdump_writenextblock(textdump_block_buffer); total += fill; fill = 0; }
	}
	total += fill;
	if (fill) {
		memset(textdump_block_buffer + fill, 0, TEXTDUMP_BLOCKSIZE - fill);
		textdump_writenextblock(textdump_block_buffer);
	}
	u64 end = textdump_offset;
	textdump_offset = hdr;
	textdump_mkustar(textdump_block_buffer, "msgbuf.txt", total);
	textdump_writenextblock(textdump_block_buffer);
	textdump_offset = end;
}

/* one member holding at most one block of a string (panic.txt, version.txt) */
static void textdump_dump_string(const char *name, const char *s)
{
	u32 len = (u32)slen(s);
	if (len > TEXTDUMP_BLOCKSIZE) len = TEXTDUMP_BLOCKSIZE;
	textdump_mkustar(textdump_block_buffer, name, len);
	textdump_writenextblock(textdump_block_buffer);
	memset(textdump_block_buffer, 0, TEXTDUMP_BLOCKSIZE);
	memcpy(textdump_block_buffer, s, len);
	textdump_writenextblock(textdump_block_buffer);
}

/* doadump()'s textdump branch (kern_shutdown.c: `if (textdump && textdump_pending)`) */
static void textdump_dumpsys(void)
{
	struct vtblk_softc *sc = dumper.priv;
	if (!sc || !sc->vtblk_vq) return; /* doadump: ENXIO before any output; `textdump dump` ignores it */
	textdump_mediasize = dumper.mediasize; /* the partition's size with dumpon /dev/vtbdNpM */
	if (textdump_mediasize < TEXTDUMP_SIZEOF_METADATA + 2 * TEXTDUMP_BLOCKSIZE) {
		kprintf("Insufficient space on dump partition for minimal textdump.\n");
		return;
	}
	textdump_error = 0;
	u64 trailer = textdump_offset = textdump_mediasize - TEXTDUMP_BLOCKSIZE;
	textdump_mkdumpheader(0);
	textdump_writenextblock(textdump_block_buffer);
	textdump_dump_ddb();
	textdump_dump_msgbuf();
	if (panicstr) textdump_dump_string("panic.txt", panicstr);
	textdump_dump_string("version.txt", version);
	u64 dumplen = trailer - (textdump_offset + TEXTDUMP_BLOCKSIZE);
	textdump_mkdumpheader(dumplen);
	textdump_writenextblock(textdump_block_buffer);
	textdump_offset = trailer;
	textdump_writenextblock(textdump_block_buffer);
	if (!textdump_error && vtblk_dump(sc, 0, 0, 0)) textdump_error = 5; /* the flush */
	if (textdump_error == 28) kprintf("Textdump: Insufficient space on dump partition\n");
	else if (textdump_error) kprintf("Textdump: Error %d writing dump\n", textdump_error);
	else kprintf("Textdump complete.\n");
	textdump_pending = 0;
}

static void doadump(struct trapframe *tf);

/* ddb commands of this header; returns 1 when `cmd args` was one of them (mock.c's command table hook) */
static int db_textdump_command(const char *cmd, const char *args, struct trapframe *tf)
{
	if (seq(cmd, "capture")) {
		db_capture_cmd(args);
	} else if (seq(cmd, "textdump")) {
		if (seq(args, "set")) { textdump_pending = 1; printf_("textdump set\n"); }
		else if (seq(args, "unset")) { textdump_pending = 0; printf_("textdump unset\n"); }
		else if (seq(args, "status")) printf_(textdump_pending ? "textdump is set\n" : "textdump is not set\n");
		else if (seq(args, "dump")) { textdump_pending = 1; doadump(tf); }
		else printf_("textdump [unset|set|status|dump]\n");
	} else if (seq(cmd, "dump") && textdump_pending) {
		printf_("textdump_pending set.\nrun \"textdump unset\" first or \"textdump dump\" for a textdump.\n");
	} else if (seq(cmd, "show") && seq(args, "panic")) {
		if (panicstr) printf_("panic: %s\n", panicstr); else printf_("panicstr not set\n");
	} else {
		return 0;
	}
	return 1;
}
