/*
 * MockFreeBSDKernel: a root image (md root) and a single-user shell dialogue. A STAND-IN, not FreeBSD.
 *
 * Included by mock.c (one translation unit). It imitates, from the serial console only, what a FreeBSD
 * 12.1 kernel booted by GRUB with `kfreebsd_module IMG type=mfs_root`, `vfs.root.mountfrom=ufs:/dev/md0`
 * and `-s` shows (the real console: tests/data/transcripts/freebsd-12.1-mfsroot/boot-test.console.log):
 *
 *   md0: Preloaded image <NAME> N bytes at 0x...
 *   Trying to mount root from ufs:/dev/md0 []...
 *   Enter full pathname of shell or RETURN for /bin/sh:      (init, single-user)
 *   #                                                         (sh as root, no login)
 *
 * The "mount" only checks that the image holds a UFS superblock magic (0x19540119 at byte 65536 + 1372 or
 * 8192 + 1372, where newfs / Debian's makefs put it); without one it prints vfs_mountroot's
 * "Mounting from ufs:/dev/md0 failed with error 19." and sits at "mountroot> ".
 *
 * The "shell" is a line interpreter for exactly the commands fbsd-hil types (no processes, no file
 * system, no userland): `;`, `&&`, `||` lists, single/double quotes, `$?`, redirections ignored; echo,
 * printf (%s and \n), PS1=, export/unset (no-ops), true/false, mount (-u -o rw /), dumpon (off, -v,
 * -z gzip / -Z zstd: mock_compress.h), ddb script/unscript (accepted, not run), and sysctl
 * for the knobs listed in sysctl_knobs[]. `sysctl debug.kdb.enter=1` does what kdb_sysctl_enter() does:
 * "KDB: enter: sysctl debug.kdb.enter" and a breakpoint trap into ddb (the trap frame is the shell's:
 * the mock has no processes, so ddb shows the idle thread as curthread); `sysctl debug.kdb.panic=1`
 * panics with "kdb_sysctl_panic" through the same trap; a serial BREAK and CR ~ ^B / CR ~ ^P typed while
 * the shell waits for a line enter ddb ("Break to debugger") / panic ("Panic sequence on console"). Anything else: "sh: CMD: not found", status 127.
 */

#define MODINFO_ADDR 0x0003
#define MODINFO_SIZE 0x0004
#define MODINFOMD_HOWTO 0x0007
#define RB_SINGLE 0x002

static u64 mfs_root_pa, mfs_root_size;
static char mfs_root_name[64];
static int root_rw;
static int kdb_trap_action; /* the next breakpoint trap: 1 sysctl enter, 2 sysctl panic, 3 break, 4 ALT panic */

#include "mock_witness.h" /* dd of /dev/kmem and /dev/mem, `A | B`, sha256: the in-guest witness */

/* The root image module GRUB loaded (type "mfs_root"), found on GRUB's identity map like the kernel. */
static void find_mfs_root(u64 modulep)
{
	u8 *md = preload_search_by_type((u8 *)modulep, "mfs_root");
	if (!md) return;
	for (int guard = 0; guard < 64; guard++) {
		u32 type = *(u32 *)md, len = *(u32 *)(md + 4);
		if (type == MODINFO_END && len == 0) break;
		if (type == MODINFO_NAME && guard > 0) break;
		if (type == MODINFO_NAME) {
			const char *n = (const char *)(md + 8), *base = n;
			for (const char *q = n; *q; q++) if (*q == '/') base = q + 1;
			unsigned long l = slen(base);
			memcpy(mfs_root_name, base, l < 63 ? l : 63);
		}
		if (type == MODINFO_ADDR) mfs_root_pa = *(u64 *)(md + 8);
		if (type == MODINFO_SIZE) mfs_root_size = *(u64 *)(md + 8);
		md += 8 + ((len + 7) & ~7U);
	}
	if (mfs_root_pa >= KERNBASE) mfs_root_pa -= KERNBASE;
}

static int mfs_root_is_ufs(void)
{
	static const u64 offs[] = { 65536, 8192, 0, 262144 };
	if (!mfs_root_pa || mfs_root_pa + mfs_root_size > (1UL << 30)) return 0;
	for (int i = 0; i < 4; i++) {
		if (offs[i] + 1376 > mfs_root_size) continue;
		if (*(u32 *)pa_to_dmap(mfs_root_pa + offs[i] + 1372) == 0x19540119) return 1;
	}
	return 0;
}

/* ---------------------------------------------------------------- sysctl knobs the shell knows */
struct sysctl_knob { const char *name; int *value; int writable; };
static int kdb_enter_knob, kdb_panic_knob, textdump_pending;
static struct sysctl_knob sysctl_knobs[] = {
	{ "debug.minidump", &do_minidump, 1 },
	{ "debug.kdb.enter", &kdb_enter_knob, 1 },
	{ "debug.kdb.panic", &kdb_panic_knob, 1 },
	{ "debug.kdb.break_to_debugger", &break_to_debugger, 1 },
	{ "debug.kdb.alt_break_to_debugger", &alt_break_to_debugger, 1 },
	{ "debug.debugger_on_panic", &debugger_on_panic, 1 },
	{ "kern.panic_reboot_wait_time", &panic_reboot_wait_time, 1 },
	{ "debug.ddb.textdump.pending", &textdump_pending, 1 },
};

static int sh_atoi(const char *s, int *out)
{
	int neg = 0, v = 0;
	if (*s == '-') { neg = 1; s++; }
	if (!*s) return 0;
	for (; *s; s++) { if (*s < '0' || *s > '9') return 0; v = v * 10 + (*s - '0'); }
	*out = neg ? -v : v;
	return 1;
}

static void kdb_breakpoint(int action)
{
	kdb_trap_action = action;
	__asm__ volatile("int3");
	kdb_trap_action = 0;
}

/* kenv mock.no_ddb_sysctls=1: the debug.ddb.* OIDs are absent, as on a kernel built without options DDB
 * (only the shell's sysctl imitates that; the mock keeps its ddb) */
static int mock_no_ddb_sysctls;

static int sh_sysctl(int argc, char **argv)
{
	int quiet = 0, ignore_unknown = 0, status = 0;
	if (!mock_no_ddb_sysctls) mock_no_ddb_sysctls = seq(kern_getenv("mock.no_ddb_sysctls") ?: "", "1") ? 1 : -1;
	for (int i = 1; i < argc; i++) {
		char *a = argv[i];
		if (seq(a, "-n")) { quiet = 1; continue; }
		if (seq(a, "-i")) { ignore_unknown = 1; continue; } /* sysctl(8) -i: unknown OIDs are not errors */
		if (seq(a, "debug.kdb.available")) { printf_(quiet ? "ddb\n" : "debug.kdb.available: ddb\n"); continue; }
		if (seq(a, "debug.kdb.current")) { printf_(quiet ? "ddb\n" : "debug.kdb.current: ddb\n"); continue; }
		char *eq = a;
		while (*eq && *eq != '=') eq++;
		int set = *eq == '=';
		if (set) *eq = 0;
		struct sysctl_knob *k = 0;
		for (unsigned j = 0; j < sizeof(sysctl_knobs) / sizeof(sysctl_knobs[0]); j++)
			if (seq(sysctl_knobs[j].name, a)) k = &sysctl_knobs[j];
		if (k && mock_no_ddb_sysctls == 1 && sprefix(a, "debug.ddb.")) k = 0;
		if (!k && ignore_unknown) continue;
		if (!k) { printf_("sysctl: unknown oid '%s': No such file or directory\n", a); status = 1; continue; }
		int v = 0;
		if (set && !sh_atoi(eq + 1, &v)) { printf_("sysctl: invalid integer '%s'\n", eq + 1); status = 1; continue; }
		if (!set) { printf_(quiet ? "%d\n" : "%s: %d\n", *k->value); if (!quiet) (void)k->name; continue; }
		int old = *k->value;
		if (!quiet) printf_("%s: %d", k->name, old);
		if (k->value == &kdb_enter_knob && v) kdb_breakpoint(1);
		else if (k->value == &kdb_panic_knob && v) kdb_breakpoint(2);
		else *k->value = v;
		if (!quiet) printf_(" -> %d\n", *k->value);
	}
	return status;
}

static int sh_dumpon(int argc, char **argv)
{
	const char *dev = 0;
	int verbose = 0, compression = KERNELDUMP_COMP_NONE;
	for (int i = 1; i < argc; i++) {
		if (seq(argv[i], "-v")) verbose = 1;
		else if (seq(argv[i], "-z") || seq(argv[i], "-Z")) {
			int c = argv[i][1] == 'z' ? KERNELDUMP_COMP_GZIP : KERNELDUMP_COMP_ZSTD;
			if (compression && compression != c) { printf_("dumpon: The -z and -Z options are mutually exclusive.\n"); return 64; }
			compression = c;
		} else if (argv[i][0] == '-') { printf_("dumpon: option %s is not imitated by this stand-in\n", argv[i]); return 1; }
		else dev = argv[i];
	}
	if (!dev) { printf_("usage: dumpon [-v] [-Z] [-z] special_file\n"); return 1; }
	if (seq(dev, "off")) { dumper.dumper = 0; dumper.priv = 0; dump_compression = 0; memset(dumpdev_name, 0, sizeof(dumpdev_name)); return 0; }
	if (compression && mock_no_compression) { printf_("dumpon: ioctl(DIOCSKERNELDUMP): Invalid argument\n"); return 71; }
	struct vtblk_softc *sc; u64 media_off, media_size; /* /dev/vtbdN or a GPT partition /dev/vtbdNpM */
	int open_status = gpt_dumpon_open(dev, verbose, compression != KERNELDUMP_COMP_NONE, &sc, &media_off, &media_size);
	if (open_status) return open_status;
	unsigned long l = slen(dev);
	memset(dumpdev_name, 0, sizeof(dumpdev_name));
	memcpy(dumpdev_name, dev, l < 63 ? l : 63);
	dumper.dumper = (void *)vtblk_dump;
	dumper.priv = sc;
	dumper.blocksize = 512;
	dumper.maxiosize = VTBLK_MAXIO;
	dumper.mediaoffset = media_off;
	dumper.mediasize = media_size;
	dump_compression = compression;
	if (verbose) printf_("kernel dumps on %s\n", dev);
	return 0;
}

/* printf FORMAT [ARG]: %s and the escapes \n, \t, \\ */
static int sh_printf(int argc, char **argv)
{
	if (argc < 2) return 1;
	int ai = 2;
	for (const char *f = argv[1]; *f; f++) {
		if (*f == '\\' && f[1]) {
			f++;
			putc_(*f == 'n' ? '\n' : *f == 't' ? '\t' : *f);
		} else if (*f == '%' && f[1] == 's') {
			f++;
			if (ai < argc) puts_(argv[ai++]);
		} else putc_(*f);
	}
	return 0;
}

static int sh_simple(int argc, char **argv, char **prompt)
{
	if (argc == 0) return 0;
	char *c = argv[0];
	int witness_status; if (mock_witness_command(argc, argv, &witness_status)) return witness_status;
	if (sprefix(c, "PS1=")) { *prompt = c + 4; return 0; }
	if (seq(c, "true") || seq(c, "export") || seq(c, "unset") || seq(c, ":")) return 0;
	if (seq(c, "false")) return 1;
	if (seq(c, "echo")) {
		for (int i = 1; i < argc; i++) { if (i > 1) putc_(' '); puts_(argv[i]); }
		putc_('\n');
		return 0;
	}
	if (seq(c, "printf")) return sh_printf(argc, argv);
	if (seq(c, "sysctl")) return sh_sysctl(argc, argv);
	if (seq(c, "dumpon")) return sh_dumpon(argc, argv);
	if (seq(c, "ddb")) return 0; /* `ddb script` / `ddb unscript`: accepted; the stand-in runs no ddb scripts */
	if (seq(c, "mount")) {
		if (argc == 1) {
			printf_("/dev/md0 on / (ufs, local%s)\ndevfs on /dev (devfs, local, multilabel)\n", root_rw ? "" : ", read-only");
			return 0;
		}
		if (argc == 5 && seq(argv[1], "-u") && seq(argv[2], "-o") && seq(argv[3], "rw") && seq(argv[4], "/")) {
			root_rw = 1;
			return 0;
		}
		printf_("mount: this stand-in only imitates `mount` and `mount -u -o rw /`\n");
		return 1;
	}
	printf_("sh: %s: not found\n", c);
	return 127;
}

static int fmt_status(char *out, int v)
{
	char tmp[12];
	int n = 0, len = 0;
	if (v < 0) { out[len++] = '-'; v = -v; }
	do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v && n < 11);
	while (n) out[len++] = tmp[--n];
	return len;
}

/* One command line: words split on blanks with quotes, `;` `&&` `||`, `$?`, redirections dropped. */
static int sh_line(char *line, int status, char **prompt)
{
	static char words[512];
	char *argv[24];
	int argc = 0, skip = 0, pending = 0; /* pending: 1 after &&, 2 after || */
	char *w = words, *end = words + sizeof(words) - 8;
	char *p = line;
	for (;;) {
		while (*p == ' ' || *p == '\t') p++;
		int sep = 0;
		if (!*p) sep = 3;
		else if (*p == ';') { sep = 3; p++; }
		else if (p[0] == '&' && p[1] == '&') { sep = 1; p += 2; }
		else if (p[0] == '|' && p[1] == '|') { sep = 2; p += 2; }
		if (sep) {
			if (argc && !skip) status = sh_simple(argc, argv, prompt);
			argc = 0;
			skip = 0;
			pending = sep == 3 ? 0 : sep;
			if (pending == 1 && status != 0) skip = 1;
			if (pending == 2 && status == 0) skip = 1;
			if (!*p) return status;
			continue;
		}
		/* one word */
		char *start = w;
		int redirect = *p == '>' || (p[0] == '2' && p[1] == '>');
		while (*p && *p != ' ' && *p != '\t' && *p != ';' && !(p[0] == '&' && p[1] == '&') && !(p[0] == '|' && p[1] == '|')) {
			if (*p == '\'' || *p == '"') {
				char q = *p++;
				while (*p && *p != q && w < end) {
					if (q == '"' && p[0] == '$' && p[1] == '?') { w += (int)(fmt_status(w, status)); p += 2; continue; }
					*w++ = *p++;
				}
				if (*p) p++;
			} else if (p[0] == '$' && p[1] == '?') {
				w += fmt_status(w, status);
				p += 2;
			} else if (p[0] == '>' && p[1] == '&') { /* 2>&1 */
				*w++ = *p++; *w++ = *p++;
			} else if (w < end) *w++ = *p++;
			else p++;
		}
		*w++ = 0;
		if (!redirect && argc < 23) argv[argc++] = start;
	}
}

/* The console while the shell reads a line: a serial BREAK and the ALT break / ALT panic sequences
 * (CR ~ ^B, CR ~ ^P) reach the debugger as they do through FreeBSD's uart driver at any time; the other
 * characters go to the shell (the CR of the sequence ends a line, as on a real tty). */
static int sh_alt_state;
static int sh_getc(void)
{
	for (;;) {
		u8 lsr = inb(COM1 + 5);
		if (!(lsr & 0x11)) { __asm__ volatile("pause"); continue; }
		u8 c = inb(COM1);
		if ((lsr & 0x10) && break_to_debugger) { kdb_breakpoint(3); continue; }
		if (!(lsr & 1)) continue;
		if (alt_break_to_debugger) {
			if (sh_alt_state == 2 && c == 0x02) { sh_alt_state = 0; kdb_breakpoint(3); continue; }
			if (sh_alt_state == 2 && c == 0x10) { sh_alt_state = 0; kdb_breakpoint(4); continue; }
			sh_alt_state = c == '\r' ? 1 : (sh_alt_state == 1 && c == '~') ? 2 : 0;
		}
		return c;
	}
}

static int sh_readline(char *buf, int max)
{
	static int last_cr;
	int n = 0;
	for (;;) {
		int c = sh_getc();
		if (c == '\n' && last_cr) { last_cr = 0; continue; }
		last_cr = c == '\r';
		if (c == '\r' || c == '\n') { printf_("\n"); buf[n] = 0; return n; }
		if ((c == 8 || c == 127) && n > 0) { n--; printf_("\b \b"); continue; }
		if (c >= 32 && c < 127 && n < max - 1) { buf[n++] = (char)c; putc_((char)c); }
	}
}

/* init(8) single-user: "Enter full pathname of shell or RETURN for /bin/sh: ", then sh's "# " prompt */
static void __attribute__((noreturn)) mock_single_user(void)
{
	static char line[1024];
	static char prompt_buf[128];
	char *prompt = "# ";
	int status = 0;
	outb(COM1 + 1, 0); /* the shell polls the UART: no receive interrupts (ALT break is not watched here) */
	for (;;) {
		printf_("Enter full pathname of shell or RETURN for /bin/sh: ");
		int n = db_readline(line, sizeof(line));
		if (n == 0) break;
		printf_("mock: only /bin/sh is imitated\n");
	}
	for (;;) {
		puts_(prompt);
		sh_readline(line, sizeof(line));
		char *newprompt = 0;
		status = sh_line(line, status, &newprompt);
		if (newprompt) {
			unsigned long l = slen(newprompt);
			if (l > sizeof(prompt_buf) - 1) l = sizeof(prompt_buf) - 1;
			memset(prompt_buf, 0, sizeof(prompt_buf));
			memcpy(prompt_buf, newprompt, l);
			prompt = prompt_buf;
		}
	}
}

/* The root file system: md0 from the preloaded image, or vfs_mountroot's failure and "mountroot> ". */
static void mount_md_root(const char *root)
{
	if (mfs_root_pa)
		kprintf("md0: Preloaded image <%s> %lu bytes at %#lx\n", mfs_root_name, mfs_root_size, mfs_root_pa + KERNBASE);
	kprintf("Trying to mount root from %s []...\n", root);
	if (!mfs_root_is_ufs()) {
		kprintf("Mounting from %s failed with error 19.\n", root);
		kprintf("\nLoader variables:\n  vfs.root.mountfrom=%s\n\n", root);
		kprintf("Manual root filesystem specification:\n  <fstype>:<device> [options]\n\n");
		kprintf("mountroot> ");
		mock_idle();
	}
	if (!(boothowto & RB_SINGLE)) {
		kprintf("mock: the root image is mounted, but a multi-user boot (rc, getty) is not imitated; idle\n");
		mock_idle();
	}
	mock_single_user();
}
