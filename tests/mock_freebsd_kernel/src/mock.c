/*
 * MockFreeBSDKernel -- a test stand-in for fbsd-hil. It is NOT FreeBSD and contains no FreeBSD code.
 *
 * A freestanding x86-64 program that GRUB's `kfreebsd` boots like a FreeBSD amd64 kernel and that
 * imitates, from the outside, what the harness talks to: the console protocol (boot banner, the
 * "mountroot: waiting for device" wait, NMI -> ddb prompt, the ddb commands the harness sends) and the
 * crash dump formats (kerneldumpheader v4 leader/trailer on a raw dump disk around an amd64 minidump v2
 * or an ELF full dump), built from its own real 4-level page tables and memory. Formats follow
 * /work/shared/reference/freebsd-dump-formats.md.
 *
 * The dump is written by the guest over a legacy virtio-blk driver that keeps the kinds of state FreeBSD
 * 12.1's vtblk keeps (/work/shared/freebsd-12.1-amd64/evidence/virtio-blk-dump-state.md), in C structs
 * with FreeBSD's type and member names so DWARF-based tools find them (the code and the layouts of the
 * stand-in's own members are its own): a malloc'ed struct vtblk_softc reached from `vtblk_devclass`,
 * its lock word owned by the thread ddb runs on while dumping, the request embedded in it used for every
 * dump write (header {1, 1, sector}, status 0xff until the device answers, vbr_bp into the dump's stack),
 * the softc's struct sglist, a struct virtqueue outside the direct map whose counters move and return,
 * one indirect descriptor table per ring entry, writes of up to 64 KiB polled to completion one at a time
 * (mock.vtblk_inflight=N: N at once), a closing flush; normal reads at attach leave "before" state.
 * Its ddb answers `ps` and `show threads` in 12.1's format for a process list like a 1-CPU 12.1 kernel
 * waiting in mountroot.
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;

#define KERNBASE 0xffffffff80000000UL
#define DMAP_BASE 0xfffff80000000000UL
#define DMAP_END 0xfffffc0000000000UL
#define VM_MIN_KERNEL_ADDRESS 0xfffffe0000000000UL
#define PAGE 4096UL
#define PG_V 0x1UL
#define PG_RW 0x2UL
#define PG_PS 0x80UL
#define PG_FRAME 0x000ffffffffff000UL
#define PG_PS_FRAME 0x000fffffffe00000UL
#define NBPDR (2UL << 20)
#define NBPDP (1UL << 30)

/* kernel "heap": physical 0x400000.., mapped at KERNBASE+0x400000 through one 4 KiB page table, except the
 * malloc arena, which (like UMA's small allocations on amd64) is reached only through the direct map */
#define KHEAP_OFF 0x400000UL
#define KHEAP_VA (KERNBASE + KHEAP_OFF)
#define KH_STACK 0      /* pages 0-3: the idle/ddb stack (thread "idle: cpu0") */
#define KH_GUARD 4      /* page 4: not mapped (stack guard) */
#define KH_VRING 5      /* pages 5-7: vtblk0's ring (descriptors, avail, used: one page each) */
#define KH_MSGBUF 8     /* pages 8-23: message buffer */
#define KH_MSGBUF_PAGES 16
#define KH_PATTERN 24   /* a page of known content (the perturbation test corrupts it in the dump) */
#define KH_BOUNCE 25    /* bounce page for the corrupted copy */
#define KH_VQ 26        /* pages 26-28: vtblk0's struct virtqueue (a kernel VA outside the direct map) */
#define KH_VRING_MORE 29 /* pages 29-37: rings of vtblk1-3 */
#define KH_VQ_MORE 38   /* pages 38-46: virtqueues of vtblk1-3 */
#define KH_KSTACKS 47   /* pages 47-70: one-page kernel stacks of the sleeping kernel threads */
#define KH_KSTACK_PAGES 24
#define KH_ARENA 71     /* pages 71-262: the malloc arena (direct map only, not in the heap page table) */
#define KH_ARENA_PAGES 192
#define KH_PAGES (KH_ARENA + KH_ARENA_PAGES)
#define MAXPFN (1UL << 18) /* the direct map covers 1 GiB */
#define VTBLK_MAX 4
#define RING_PAGES 3

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u16 inw(u16 p) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

void *memset(void *d, int c, unsigned long n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, unsigned long n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
static unsigned long slen(const char *s) { unsigned long n = 0; while (s[n]) n++; return n; }
static int seq(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return *a == *b; }
static int sprefix(const char *s, const char *p) { while (*p) if (*s++ != *p++) return 0; return 1; }

/* ------------------------------------------------------------------ symbols the tools look for */
struct trapframe {
	u64 tf_rdi, tf_rsi, tf_rdx, tf_rcx, tf_r8, tf_r9, tf_rax, tf_rbx, tf_rbp, tf_r10, tf_r11, tf_r12,
	    tf_r13, tf_r14, tf_r15;
	u32 tf_trapno; u16 tf_fs, tf_gs; u64 tf_addr; u32 tf_flags; u16 tf_es, tf_ds;
	u64 tf_err, tf_rip, tf_cs, tf_rflags, tf_rsp, tf_ss;
};
_Static_assert(sizeof(struct trapframe) == 192, "trapframe");

struct msgbuf {
	char *msg_ptr; u32 msg_magic, msg_size, msg_wseq, msg_rseq, msg_cksum, msg_seqmod;
	int msg_lastpri; u32 msg_flags; u64 msg_lock[4];
};
struct pcb { u64 pcb_r15, pcb_r14, pcb_r13, pcb_r12, pcb_rbp, pcb_rsp, pcb_rbx, pcb_rip; u64 rest[48]; };
struct dumperinfo { void *dumper; void *priv; u32 blocksize; u32 maxiosize; u64 mediaoffset, mediasize; };

#include "mock_release.h" /* MOCK_CURRENT_KERNEL: a 13+ kernel at hand-over (find_kernel_metadata()) */
char version[] = "FreeBSD " MOCK_RELEASE " mock_freebsd_kernel amd64 (fbsd-hil MockFreeBSDKernel stand-in, not FreeBSD)\n";
char ostype[] = "FreeBSD";
char osrelease[] = MOCK_RELEASE;
int osreldate = MOCK_OSRELDATE;
char hostname[] = "mock-freebsd-kernel";
int hz = 100;
u64 KPML4phys;
struct msgbuf msgbuf0;
struct msgbuf *msgbufp;
struct pcb dumppcb;
int dumptid; /* set by doadump: the thread the dump runs on (curthread) */
int pcb_size = sizeof(struct pcb);
int do_minidump = 1;
int dumping;
struct dumperinfo dumper;
struct trapframe *kdb_frame;
char *panicstr;
i64 time_second;
u64 physmem; /* pages */
u64 dump_avail[2 * 16 + 2];
u64 vm_page_dump[MAXPFN / 64];
static u64 vm_page_dump_v3[MAXPFN / 64]; /* v3: bit indices compressed through dump_avail */
u64 vm_page_dump_size;
/* Processes and threads, walkable the way debuggers walk FreeBSD's allproc: struct and member names are
 * FreeBSD's (so a DWARF-based tool finds them), the layouts are this stand-in's own; the offsets a
 * debugger needs without DWARF are exported as const ints as kern_proc.c does. */
#define MAXCOMLEN 19
#define NOCPU (-1)
#define P_SYSTEM 0x00200
#define P_HADTHREADS 0x00080
#define TDF_SINTR 0x00000008
#define TDI_SLEEPING 0x0002
#define TDI_IWAIT 0x0010
enum td_states { TDS_INACTIVE = 0, TDS_INHIBITED, TDS_CAN_RUN, TDS_RUNQ, TDS_RUNNING };
struct session { struct proc *s_leader; int s_count; };
struct thread {
	struct proc *td_proc;
	struct { struct thread *tqe_next; struct thread **tqe_prev; } td_plist;
	int td_flags;
	int td_inhibitors;
	int td_tid;
	enum td_states td_state;
	const void *td_wchan;
	const char *td_wmesg;
	char td_name[MAXCOMLEN + 1];
	int td_oncpu;
	struct pcb *td_pcb;
	u64 td_kstack;
	int td_kstack_pages;
};
struct proc {
	struct { struct proc *le_next; struct proc **le_prev; } p_list;
	struct { struct thread *tqh_first; struct thread **tqh_last; } p_threads;
	int p_flag;
	int p_numthreads;
	int p_pid;
	struct proc *p_pptr;
	struct session *p_session;
	char p_comm[MAXCOMLEN + 1];
};
/* the per-CPU data of the only CPU (FreeBSD: __pcpu[MAXCPU], curthread = __pcpu[cpu].pc_curthread) */
struct pcpu { struct thread *pc_curthread; struct thread *pc_idlethread; u32 pc_cpuid; };
struct pcpu __pcpu[1];
#define curthread (__pcpu[0].pc_curthread)
static struct session session0 = { 0, 1 };
struct thread thread0 = { .td_tid = 100000, .td_state = TDS_INHIBITED, .td_inhibitors = TDI_SLEEPING,
			  .td_wmesg = "swapin", .td_name = "swapper", .td_oncpu = NOCPU };
struct proc proc0 = { .p_flag = P_SYSTEM | P_HADTHREADS, .p_pid = 0, .p_session = &session0, .p_comm = "kernel" };
struct proclist { struct proc *lh_first; } allproc; /* LIST_HEAD, newest process first */
struct thread *kdb_thread;  /* the thread ddb runs on (set on entry to ddb, as subr_kdb.c's kdb_trap does) */
struct proc *idleproc;
const int proc_off_p_pid = __builtin_offsetof(struct proc, p_pid);
const int proc_off_p_comm = __builtin_offsetof(struct proc, p_comm);
const int proc_off_p_list = __builtin_offsetof(struct proc, p_list);
const int proc_off_p_threads = __builtin_offsetof(struct proc, p_threads);
const int thread_off_td_tid = __builtin_offsetof(struct thread, td_tid);
const int thread_off_td_name = __builtin_offsetof(struct thread, td_name);
const int thread_off_td_oncpu = __builtin_offsetof(struct thread, td_oncpu);
const int thread_off_td_pcb = __builtin_offsetof(struct thread, td_pcb);
const int thread_off_td_plist = __builtin_offsetof(struct thread, td_plist);
int mock_minidump_version = 2; /* kenv mock.minidump_version=3: 13.0+ layout (dump_avail section) */
int mock_corrupt_dump_page; /* kenv mock.corrupt_dump_page=1 (the pattern page) or =0x<PA>: perturbation tests */
u64 mock_corrupt_pa;
u64 mock_drop_pa;        /* kenv mock.drop_dump_page=0x<PA>: leave that page out of a minidump */
int mock_bad_parity;     /* kenv mock.bad_dump_header=parity: both headers fail the parity check */
int mock_fault_in_dump;  /* kenv mock.fault_in_dump=hang|reset: halfway through a dump, hang or reset */
u64 mock_pattern_pa;

/* page tables (page aligned, in .bss) */
static u64 pml4[512] __attribute__((aligned(4096)));
static u64 pdpt_kern[512] __attribute__((aligned(4096)));
static u64 pd_kern[512] __attribute__((aligned(4096)));
static u64 pt_kheap[512] __attribute__((aligned(4096)));
static u64 pdpt_dmap[512] __attribute__((aligned(4096)));
static u64 pd_dmap[512] __attribute__((aligned(4096)));
static u8 zeroes[65536] __attribute__((aligned(4096)));
static u8 fakepd[4096] __attribute__((aligned(4096))); /* dump header/page buffer, as minidump_machdep.c's fakepd */
u8 boot_stack[16384] __attribute__((aligned(16)));
extern u8 boot_stack_top[];
__asm__(".globl boot_stack_top\n.set boot_stack_top, boot_stack + 16384\n");

static char kenv_buf[4096];
static struct { u64 base, len; u32 type; } smap[32];
static int nsmap;

extern void load_gdt_and_segments(void *);
extern void switch_stack(u64 top, void (*fn)(void)) __attribute__((noreturn));
extern void mock_idle(void);
extern void btext(void);
extern const u64 trap_stubs[34]; /* 0-31, 32 (any other vector), 36 (IRQ4: COM1) */
extern char __bss_start[], _end[];

static inline u64 kva_to_pa(const void *va) { return (u64)va - KERNBASE; }
static inline void *pa_to_dmap(u64 pa) { return (void *)(pa + DMAP_BASE); }
static inline u8 *kheap_page(int i) { return (u8 *)(KHEAP_VA + (u64)i * PAGE); }

/* ------------------------------------------------------------------ console */
#define COM1 0x3f8
static int db_output_position; /* output column (ddb: db_output.c); the mock's printf shares it */
static void uart_putc(char c) { while (!(inb(COM1 + 5) & 0x20)); outb(COM1, (u8)c); }
static void msgbuf_putc(char c)
{
	struct msgbuf *m = msgbufp;
	if (!m || c == '\r') return;
	m->msg_ptr[m->msg_wseq % m->msg_size] = c;
	m->msg_wseq = (m->msg_wseq + 1) % m->msg_seqmod;
}
static int to_msgbuf; /* kernel printf goes to the message buffer too; ddb output does not */
static void db_capture_writech(char c); /* mock_textdump.h: ddb's output capture */
static void putc_(char c)
{
	if (to_msgbuf) msgbuf_putc(c);
	else db_capture_writech(c);
	if (c == '\n') { uart_putc('\r'); uart_putc('\n'); db_output_position = 0; return; }
	if (c == '\t') { do { uart_putc(' '); db_output_position++; } while (db_output_position % 8); return; } /* ddb expands tabs */
	uart_putc(c); db_output_position++;
}
static void puts_(const char *s) { while (*s) putc_(*s++); }

static void fmt_num(u64 v, int base, int width, int zero, int left, int alt, int neg)
{
	char tmp[32]; int n = 0; const char *dig = "0123456789abcdef";
	do { tmp[n++] = dig[v % base]; v /= base; } while (v);
	int len = n + neg + (alt ? 2 : 0);
	if (!left && !zero) for (int i = len; i < width; i++) putc_(' ');
	if (neg) putc_('-');
	if (alt) { putc_('0'); putc_('x'); }
	if (!left && zero) for (int i = len; i < width; i++) putc_('0');
	while (n) putc_(tmp[--n]);
	if (left) for (int i = len; i < width; i++) putc_(' ');
}

/* a small printf: %s %c %d %u %x %p with l/ll/j, width, '0', '-', '#' */
static void vprintf_(const char *f, __builtin_va_list ap)
{
	for (; *f; f++) {
		if (*f != '%') { putc_(*f); continue; }
		int zero = 0, left = 0, alt = 0, width = 0, lng = 0;
		for (;; f++) {
			if (f[1] == '0') zero = 1; else if (f[1] == '-') left = 1; else if (f[1] == '#') alt = 1; else break;
		}
		while (f[1] >= '0' && f[1] <= '9') width = width * 10 + (*++f - '0');
		while (f[1] == 'l' || f[1] == 'j') { lng = 1; f++; }
		char c = *++f;
		if (c == 's') {
			const char *s = __builtin_va_arg(ap, const char *);
			int n = (int)slen(s);
			if (!left) for (int i = n; i < width; i++) putc_(' ');
			puts_(s);
			if (left) for (int i = n; i < width; i++) putc_(' ');
		} else if (c == 'c') {
			putc_((char)__builtin_va_arg(ap, int));
		} else if (c == 'd') {
			i64 v = lng ? __builtin_va_arg(ap, i64) : __builtin_va_arg(ap, int);
			fmt_num(v < 0 ? (u64)-v : (u64)v, 10, width, zero, left, 0, v < 0);
		} else if (c == 'u' || c == 'x' || c == 'p') {
			u64 v = (lng || c == 'p') ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32);
			fmt_num(v, c == 'u' ? 10 : 16, width, zero, left, (alt || c == 'p') && v != 0, 0);
		} else if (c == '%') {
			putc_('%');
		}
	}
}
static void printf_(const char *f, ...) { __builtin_va_list ap; __builtin_va_start(ap, f); vprintf_(f, ap); __builtin_va_end(ap); }
/* kernel printf: console + message buffer */
static void kprintf(const char *f, ...)
{
	__builtin_va_list ap; __builtin_va_start(ap, f);
	to_msgbuf = 1; vprintf_(f, ap); to_msgbuf = 0;
	__builtin_va_end(ap);
}

static void mock_fatal(const char *why)
{
	kprintf("panic: mock kernel: %s\n", why);
	for (;;) __asm__ volatile("cli; hlt");
}

/* ------------------------------------------------------------------ kernel environment (GRUB metadata) */
#define MODINFO_END 0x0000
#define MODINFO_METADATA 0x8000
#define MODINFOMD_ENVP 0x0006
#define MODINFOMD_SMAP 0x1001

static const char *kern_getenv(const char *name)
{
	for (const char *p = kenv_buf; *p; p += slen(p) + 1) {
		unsigned long n = slen(name);
		if (sprefix(p, name) && p[n] == '=') return p + n + 1;
	}
	return 0;
}

#define MODINFO_NAME 0x0001
#define MODINFO_TYPE 0x0002

/*
 * The kernel's own entry in the preload metadata: the records from a MODINFO_NAME whose MODINFO_TYPE
 * is `type` up to the next MODINFO_NAME. FreeBSD's loader(8) registers the kernel as "elf kernel";
 * Debian 12's GRUB 2.06 kfreebsd registers an amd64 kernel as "elf64 kernel". 12.x kernels
 * (hammer_time) accept either; kernels with preload_initkmdp() accept only "elf kernel" and panic
 * "unable to find kernel metadata" before their console exists. MOCK_CURRENT_KERNEL imitates those.
 */
static u8 *preload_search_by_type(u8 *md, const char *type)
{
	u8 *module = 0;
	for (int guard = 0; guard < 4096; guard++) {
		u32 rtype = *(u32 *)md, len = *(u32 *)(md + 4);
		if (rtype == MODINFO_END && len == 0) break;
		if (rtype == MODINFO_NAME) module = md;
		if (rtype == MODINFO_TYPE && module && seq((const char *)(md + 8), type)) return module;
		md += 8 + ((len + 7) & ~7U);
	}
	return 0;
}

#ifdef MOCK_CURRENT_KERNEL
/* An empty IDT and an exception: the CPU cannot deliver it, nor the double fault -> triple fault,
 * QEMU resets the machine. A real kernel's early panic (no console, no IDT yet) ends the same way. */
static void __attribute__((noreturn)) early_fault(const char *why)
{
	static struct __attribute__((packed)) { u16 limit; u64 base; } no_idt;
	panicstr = (char *)why;
	__asm__ volatile("lidt %0; ud2" : : "m"(no_idt));
	for (;;) __asm__ volatile("cli; hlt");
}
#endif

/* Called on GRUB's identity map before anything is printed; returns the kernel's metadata entry. */
static u8 *find_kernel_metadata(u64 modulep)
{
	u8 *kmdp = preload_search_by_type((u8 *)modulep, "elf kernel");
#ifdef MOCK_CURRENT_KERNEL
	if (kmdp == 0) early_fault("unable to find kernel metadata");
#else
	if (kmdp == 0) kmdp = preload_search_by_type((u8 *)modulep, "elf64 kernel");
	if (kmdp == 0) kmdp = (u8 *)modulep; /* the mock's old behaviour: walk everything */
#endif
	return kmdp;
}

static u32 boothowto; /* MODINFOMD_HOWTO (RB_SINGLE for -s) */

/* Walk the kernel's preload metadata GRUB built (struct {u32 type; u32 len;} + data, 8-byte aligned for
 * amd64), from its MODINFO_NAME record (physical `kmdp`) to the next module's. */
static void parse_metadata(u64 kmdp)
{
	u8 *p = pa_to_dmap(kmdp);
	for (int guard = 0; guard < 4096; guard++) {
		u32 type = *(u32 *)p, len = *(u32 *)(p + 4);
		u8 *data = p + 8;
		if (type == MODINFO_END && len == 0) break;
		if (type == MODINFO_NAME && p != pa_to_dmap(kmdp)) break;
		if (type == (MODINFO_METADATA | MODINFOMD_ENVP)) {
			const char *env = pa_to_dmap(*(u64 *)data);
			unsigned long n = 0;
			while (n + 2 < sizeof(kenv_buf) && (env[n] || env[n + 1])) { kenv_buf[n] = env[n]; n++; }
			kenv_buf[n] = env[n];
		} else if (type == (MODINFO_METADATA | 0x0007)) { /* MODINFOMD_HOWTO: boot flags (-s: RB_SINGLE) */
			boothowto = *(u32 *)data;
		} else if (type == (MODINFO_METADATA | MODINFOMD_SMAP)) {
			for (u32 off = 0; off + 20 <= len && nsmap < 32; off += 20, nsmap++) {
				smap[nsmap].base = *(u64 *)(data + off);
				smap[nsmap].len = *(u64 *)(data + off + 8);
				smap[nsmap].type = *(u32 *)(data + off + 16);
			}
		}
		p = data + ((len + 7) & ~7U);
	}
}

/* ------------------------------------------------------------------ page tables, GDT, IDT */
static u64 gdt[6] = { 0, 0, 0, 0, 0x00af9b000000ffffUL /* 0x20: code64 */, 0x00cf93000000ffffUL /* 0x28: data */ };
static struct __attribute__((packed)) { u16 limit; u64 base; } gdtr, idtr;
static u64 idt[512] __attribute__((aligned(16)));

static void set_gate(int vec, u64 handler)
{
	idt[vec * 2] = (handler & 0xffff) | (0x20UL << 16) | (0x8eUL << 40) | (((handler >> 16) & 0xffff) << 48);
	idt[vec * 2 + 1] = handler >> 32;
}

static u64 ram_top;

static void build_page_tables(void)
{
	pml4[511] = kva_to_pa(pdpt_kern) | PG_V | PG_RW;
	pdpt_kern[510] = kva_to_pa(pd_kern) | PG_V | PG_RW;
	pd_kern[0] = 0x000000 | PG_V | PG_RW | PG_PS;   /* KERNBASE -> physical 0, as FreeBSD */
	pd_kern[1] = 0x200000 | PG_V | PG_RW | PG_PS;   /* the kernel image */
	pd_kern[2] = kva_to_pa(pt_kheap) | PG_V | PG_RW; /* 4 KiB pages: stack, virtqueue, msgbuf ... */
	for (int i = 0; i < KH_ARENA; i++) /* the arena is reached through the direct map only */
		if (i != KH_GUARD) pt_kheap[i] = (KHEAP_OFF + (u64)i * PAGE) | PG_V | PG_RW;
	pml4[(DMAP_BASE >> 39) & 511] = kva_to_pa(pdpt_dmap) | PG_V | PG_RW;
	pdpt_dmap[0] = kva_to_pa(pd_dmap) | PG_V | PG_RW;
	for (u64 i = 0; i < 512 && i * NBPDR < ram_top; i++)
		pd_dmap[i] = (i * NBPDR) | PG_V | PG_RW | PG_PS;
	KPML4phys = kva_to_pa(pml4);
	__asm__ volatile("mov %0, %%cr3" : : "r"(KPML4phys) : "memory");
}

/* ------------------------------------------------------------------ malloc: UMA-like buckets in direct-map pages
 * A FreeBSD driver's softc, sglist, requests and indirect descriptor tables come from malloc(9): small
 * allocations share pages of one bucket size and are reached only through direct-map pointers. */
static int arena_used;
static struct { u8 *page; u32 used; } arena_buckets[8]; /* 16, 32, ..., 2048 bytes */
static void mock_fatal(const char *why);
static u8 *arena_pages(int n)
{
	if (arena_used + n > KH_ARENA_PAGES) mock_fatal("malloc arena exhausted");
	u8 *p = pa_to_dmap(KHEAP_OFF + (u64)(KH_ARENA + arena_used) * PAGE);
	arena_used += n;
	memset(p, 0, (u64)n * PAGE);
	return p;
}
static void *malloc_(u64 size)
{
	if (size > 2048) return arena_pages((int)((size + PAGE - 1) / PAGE));
	int b = 0;
	while ((16UL << b) < size) b++;
	u32 bs = 16U << b;
	if (!arena_buckets[b].page || arena_buckets[b].used + bs > PAGE) {
		arena_buckets[b].page = arena_pages(1);
		arena_buckets[b].used = 0;
	}
	void *p = arena_buckets[b].page + arena_buckets[b].used;
	arena_buckets[b].used += bs;
	return p;
}
/* physical address of a direct-map, kernel-image or kernel-heap address (pmap_kextract) */
static u64 vtophys(const void *va)
{
	u64 v = (u64)va;
	return v >= DMAP_BASE && v < DMAP_END ? v - DMAP_BASE : v - KERNBASE;
}

/* ------------------------------------------------------------------ PCI + legacy virtio-blk */
static u32 pci_read(int bus, int dev, int fn, int off)
{
	outl(0xcf8, 0x80000000U | (bus << 16) | (dev << 11) | (fn << 8) | (off & 0xfc));
	return inl(0xcfc);
}
static void pci_write(int bus, int dev, int fn, int off, u32 v)
{
	outl(0xcf8, 0x80000000U | (bus << 16) | (dev << 11) | (fn << 8) | (off & 0xfc));
	outl(0xcfc, v);
}

/* newbus: devclasses and devices. Member names are FreeBSD's (subr_bus.c), so a tool can go from the
 * symbol `vtblk_devclass` to the softc with DWARF; struct device has the stand-in's own member order, so
 * its offsets differ from any FreeBSD release's (a tool must read them from DWARF). */
typedef struct device *device_t;
typedef struct devclass *devclass_t;
struct devclass {
	struct { struct devclass *tqe_next; struct devclass **tqe_prev; } link;
	devclass_t parent;
	struct { void *tqh_first; void **tqh_last; } drivers;
	char *name;
	device_t *devices;
	int maxunit;
	int flags;
	struct { void *tqh_first; void **tqh_last; } sysctl_ctx;
	void *sysctl_tree;
};
struct device {
	struct { struct device *tqe_next; struct device **tqe_prev; } link;
	u64 mock_pad[2];          /* the stand-in's own: keeps the offsets below unlike FreeBSD's */
	char *nameunit;
	char *desc;
	device_t parent;
	void *softc;
	devclass_t devclass;
	int unit;
	int flags;
	char *name;
	void *ivars;
};
struct devclass_list { struct devclass *tqh_first; struct devclass **tqh_last; } devclasses;
static devclass_t vtblk_devclass __attribute__((used));
static devclass_t virtio_pci_devclass __attribute__((used));

static devclass_t devclass_create(const char *name)
{
	struct devclass *dc = malloc_(sizeof(*dc) + 16);
	dc->name = (char *)(dc + 1);
	memcpy(dc->name, name, slen(name) + 1);
	dc->drivers.tqh_last = &dc->drivers.tqh_first;
	dc->sysctl_ctx.tqh_last = &dc->sysctl_ctx.tqh_first;
	dc->devices = malloc_(VTBLK_MAX * sizeof(device_t));
	if (!devclasses.tqh_last) devclasses.tqh_last = &devclasses.tqh_first;
	dc->link.tqe_prev = devclasses.tqh_last;
	*devclasses.tqh_last = dc;
	devclasses.tqh_last = &dc->link.tqe_next;
	return dc;
}
static device_t device_add(devclass_t dc, device_t parent, const char *desc)
{
	struct device *d = malloc_(sizeof(*d) + 32);
	char *nu = (char *)(d + 1);
	unsigned long n = slen(dc->name);
	memcpy(nu, dc->name, n);
	nu[n] = (char)('0' + dc->maxunit);
	d->name = dc->name;
	d->nameunit = nu;
	d->desc = (char *)desc;
	d->parent = parent;
	d->devclass = dc;
	d->unit = dc->maxunit;
	dc->devices[dc->maxunit++] = d;
	return d;
}

/* virtio rings and the driver's virtqueue (FreeBSD's virtio_ring.h / virtqueue.c member names) */
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef unsigned long uintptr_t;
typedef unsigned long size_t;
typedef unsigned long vm_paddr_t;
typedef unsigned int u_int;
typedef unsigned short u_short;
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VQ_RING_DESC_CHAIN_END 32768
#define VIRTIO_RING_F_INDIRECT_DESC (1U << 28)
#define VIRTIO_BLK_F_SEG_MAX (1U << 2)
#define VIRTIO_BLK_F_FLUSH (1U << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct vring_avail { uint16_t flags; uint16_t idx; uint16_t ring[]; };
struct vring_used_elem { uint32_t id; uint32_t len; };
struct vring_used { uint16_t flags; uint16_t idx; struct vring_used_elem ring[]; };
struct vring { unsigned int num; struct vring_desc *desc; struct vring_avail *avail; struct vring_used *used; };
typedef void virtqueue_intr_t(void *);
struct vq_desc_extra { void *cookie; struct vring_desc *indirect; vm_paddr_t indirect_paddr; uint16_t ndescs; };
struct virtqueue {
	device_t vq_dev;
	char vq_name[32];
	uint16_t vq_queue_index;
	uint16_t vq_nentries;
	uint32_t vq_flags;
	int vq_alignment;
	int vq_ring_size;
	void *vq_ring_mem;
	int vq_max_indirect_size;
	int vq_indirect_mem_size;
	virtqueue_intr_t *vq_intrhand;
	void *vq_intrhand_arg;
	struct vring vq_ring;
	uint16_t vq_free_cnt;
	uint16_t vq_queued_cnt;
	uint16_t vq_desc_head_idx;
	uint16_t vq_used_cons_idx;
	struct vq_desc_extra vq_descx[];
};
#define VIRTQUEUE_FLAG_INDIRECT 0x0001

/* sglist(9) */
struct sglist_seg { vm_paddr_t ss_paddr; size_t ss_len; };
struct sglist { struct sglist_seg *sg_segs; u_int sg_refs; u_short sg_nseg; u_short sg_maxseg; };

/* locks: mtx_lock holds the owning thread, 0 when unowned (12.1's MTX_UNOWNED, as the evidence shows) */
struct lock_object { const char *lo_name; u_int lo_flags; u_int lo_data; void *lo_witness; };
struct mtx { struct lock_object lock_object; volatile uintptr_t mtx_lock; };
static void mtx_lock(struct mtx *m) { m->mtx_lock = (uintptr_t)curthread; }
static void mtx_unlock(struct mtx *m) { m->mtx_lock = 0; }

/* virtio_blk(4) requests and softc (member names as FreeBSD's virtio_blk.c) */
struct bio { int bio_cmd; int bio_flags; void *bio_data; long bio_offset; long bio_bcount; long bio_length;
	     int bio_error; int bio_mock_unit; };
struct bio_queue { struct bio *tqh_first; struct bio **tqh_last; };
struct bio_queue_head { struct bio_queue queue; long last_offset; struct bio *insert_point; int total; int batched; };
struct virtio_blk_outhdr { uint32_t type; uint32_t ioprio; uint64_t sector; };
struct vtblk_request {
	struct virtio_blk_outhdr vbr_hdr;
	struct bio *vbr_bp;
	uint8_t vbr_ack;
	struct { struct vtblk_request *tqe_next; struct vtblk_request **tqe_prev; } vbr_link;
};
enum vtblk_cache_mode { VTBLK_CACHE_WRITETHROUGH, VTBLK_CACHE_WRITEBACK };
struct vtblk_softc {
	device_t vtblk_dev;
	struct mtx vtblk_mtx;
	uint64_t vtblk_features;
	uint32_t vtblk_flags;
	/* the stand-in's own members (legacy virtio-pci over I/O ports): they also move every later member
	 * to an offset of its own, so tools must take offsets from DWARF, not from a FreeBSD release */
	uint16_t vtblk_mock_iobase;
	int vtblk_mock_pci_slot;
	uint64_t vtblk_mock_sectors;
	struct virtqueue *vtblk_vq;
	struct sglist *vtblk_sglist;
	void *vtblk_disk;
	struct bio_queue_head vtblk_bioq;
	struct { struct vtblk_request *tqh_first; struct vtblk_request **tqh_last; } vtblk_req_free;
	struct { struct vtblk_request *tqh_first; struct vtblk_request **tqh_last; } vtblk_req_ready;
	struct vtblk_request *vtblk_req_ordered;
	int vtblk_max_nsegs;
	int vtblk_request_count;
	enum vtblk_cache_mode vtblk_write_cache;
	struct bio_queue vtblk_dump_queue;
	struct vtblk_request vtblk_dump_request;
};
/* the largest dump write: FreeBSD's vtblk limits a request to its segment count (64 KiB per the evidence) */
#define VTBLK_MAXIO 65536UL
#define VTBLK_MAX_INFLIGHT 8
static int nvblk;
int mock_vtblk_inflight = 1; /* kenv mock.vtblk_inflight=N: requests submitted together before polling */

static struct vtblk_softc *vtblk_softc_of(int unit)
{
	if (!vtblk_devclass || unit < 0 || unit >= vtblk_devclass->maxunit) return 0;
	return vtblk_devclass->devices[unit]->softc;
}

static int sglist_append_phys(struct sglist *sg, vm_paddr_t pa, size_t len)
{
	if (sg->sg_nseg >= sg->sg_maxseg) return 27; /* EFBIG */
	sg->sg_segs[sg->sg_nseg].ss_paddr = pa;
	sg->sg_segs[sg->sg_nseg].ss_len = len;
	sg->sg_nseg++;
	return 0;
}

static void vtblk_vq_intr(void *xsc);

/* The driver's virtqueue: the struct at a kernel VA outside the direct map (the evidence's 0xfffffe...),
 * the ring in pages of its own, one indirect descriptor table per ring entry from malloc. */
static struct virtqueue *virtqueue_alloc(struct vtblk_softc *sc, int unit, uint16_t num, int max_indirect)
{
	struct virtqueue *vq = (struct virtqueue *)kheap_page(unit ? KH_VQ_MORE + RING_PAGES * (unit - 1) : KH_VQ);
	u8 *ring = kheap_page(unit ? KH_VRING_MORE + RING_PAGES * (unit - 1) : KH_VRING);
	memset(vq, 0, RING_PAGES * PAGE);
	memset(ring, 0, RING_PAGES * PAGE);
	vq->vq_dev = sc->vtblk_dev->parent;
	memcpy(vq->vq_name, sc->vtblk_dev->nameunit, slen(sc->vtblk_dev->nameunit));
	memcpy(vq->vq_name + slen(sc->vtblk_dev->nameunit), " request", 9);
	vq->vq_queue_index = 0;
	vq->vq_nentries = num;
	vq->vq_flags = VIRTQUEUE_FLAG_INDIRECT;
	vq->vq_alignment = PAGE;
	u64 avail_end = 16UL * num + 4 + 2UL * num + 2;
	vq->vq_ring_size = (int)(((avail_end + PAGE - 1) & ~(PAGE - 1)) + 4 + 8UL * num + 2);
	vq->vq_ring_mem = ring;
	vq->vq_max_indirect_size = max_indirect;
	vq->vq_indirect_mem_size = max_indirect * (int)sizeof(struct vring_desc);
	vq->vq_intrhand = vtblk_vq_intr;
	vq->vq_intrhand_arg = sc;
	vq->vq_ring.num = num;
	vq->vq_ring.desc = (struct vring_desc *)ring;
	vq->vq_ring.avail = (struct vring_avail *)(ring + 16UL * num);
	vq->vq_ring.used = (struct vring_used *)(ring + ((avail_end + PAGE - 1) & ~(PAGE - 1)));
	for (int i = 0; i < num; i++) {
		vq->vq_ring.desc[i].next = (uint16_t)(i + 1 < num ? i + 1 : VQ_RING_DESC_CHAIN_END);
		struct vring_desc *t = malloc_((u64)vq->vq_indirect_mem_size);
		vq->vq_descx[i].indirect = t;
		vq->vq_descx[i].indirect_paddr = vtophys(t);
	}
	vq->vq_free_cnt = num;
	vq->vq_desc_head_idx = 0;
	return vq;
}

/* Put one request (its segments in `sg`: `readable` device-readable ones, then `writable`) on the ring
 * through the indirect table of the free head descriptor. */
static int virtqueue_enqueue(struct virtqueue *vq, void *cookie, struct sglist *sg, int readable, int writable)
{
	int needed = readable + writable;
	if (vq->vq_free_cnt == 0 || needed > vq->vq_max_indirect_size) return 28; /* ENOSPC */
	uint16_t head = vq->vq_desc_head_idx;
	struct vq_desc_extra *dxp = &vq->vq_descx[head];
	dxp->cookie = cookie;
	dxp->ndescs = 1;
	struct vring_desc *t = dxp->indirect;
	for (int i = 0; i < needed; i++) {
		t[i].addr = sg->sg_segs[i].ss_paddr;
		t[i].len = (uint32_t)sg->sg_segs[i].ss_len;
		t[i].flags = (uint16_t)((i + 1 < needed ? VRING_DESC_F_NEXT : 0) | (i >= readable ? VRING_DESC_F_WRITE : 0));
		t[i].next = (uint16_t)(i + 1);
	}
	struct vring_desc *dp = &vq->vq_ring.desc[head];
	dp->addr = dxp->indirect_paddr;
	dp->len = (uint32_t)(needed * sizeof(struct vring_desc));
	dp->flags = VRING_DESC_F_INDIRECT;
	vq->vq_desc_head_idx = dp->next;
	vq->vq_free_cnt--;
	struct vring_avail *av = vq->vq_ring.avail;
	av->ring[av->idx % vq->vq_nentries] = head;
	mb();
	*(volatile uint16_t *)&av->idx = (uint16_t)(av->idx + 1);
	vq->vq_queued_cnt++;
	return 0;
}

static void virtqueue_notify(struct vtblk_softc *sc, struct virtqueue *vq)
{
	mb();
	outw(sc->vtblk_mock_iobase + 0x10, vq->vq_queue_index);
	vq->vq_queued_cnt = 0;
}

/* The next completed request's cookie (0: none yet); its head descriptor goes back on the free chain. */
static void *virtqueue_dequeue(struct virtqueue *vq)
{
	volatile struct vring_used *u = vq->vq_ring.used;
	if (vq->vq_used_cons_idx == u->idx) return 0;
	mb();
	uint16_t slot = vq->vq_used_cons_idx % vq->vq_nentries;
	vq->vq_used_cons_idx++;
	uint32_t id = u->ring[slot].id;
	if (id >= vq->vq_nentries) mock_fatal("virtio-blk: used ring names a descriptor out of range");
	struct vq_desc_extra *dxp = &vq->vq_descx[id];
	void *cookie = dxp->cookie;
	dxp->cookie = 0;
	vq->vq_free_cnt = (uint16_t)(vq->vq_free_cnt + dxp->ndescs);
	dxp->ndescs--;
	vq->vq_ring.desc[id].next = vq->vq_desc_head_idx;
	vq->vq_desc_head_idx = (uint16_t)id;
	return cookie;
}

static struct vtblk_request *vtblk_request_dequeue(struct vtblk_softc *sc)
{
	struct vtblk_request *r = sc->vtblk_req_free.tqh_first;
	if (!r) return 0;
	sc->vtblk_req_free.tqh_first = r->vbr_link.tqe_next;
	if (r->vbr_link.tqe_next) r->vbr_link.tqe_next->vbr_link.tqe_prev = &sc->vtblk_req_free.tqh_first;
	else sc->vtblk_req_free.tqh_last = &sc->vtblk_req_free.tqh_first;
	r->vbr_link.tqe_next = 0;
	r->vbr_link.tqe_prev = 0;
	return r;
}
static void vtblk_request_enqueue(struct vtblk_softc *sc, struct vtblk_request *r)
{
	r->vbr_link.tqe_next = sc->vtblk_req_free.tqh_first;
	if (r->vbr_link.tqe_next) r->vbr_link.tqe_next->vbr_link.tqe_prev = &r->vbr_link.tqe_next;
	else sc->vtblk_req_free.tqh_last = &r->vbr_link.tqe_next;
	sc->vtblk_req_free.tqh_first = r;
	r->vbr_link.tqe_prev = &sc->vtblk_req_free.tqh_first;
}

/* Build the request's sglist (header, data, status byte) and put it on the queue; the status is set to
 * 0xff first, so a completed request is one whose status the device overwrote. */
static int vtblk_request_execute(struct vtblk_softc *sc, struct vtblk_request *req, u64 data_pa, u64 len)
{
	struct sglist *sg = sc->vtblk_sglist;
	int writing = req->vbr_hdr.type != VIRTIO_BLK_T_IN;
	sg->sg_nseg = 0;
	int err = sglist_append_phys(sg, vtophys(&req->vbr_hdr), sizeof(struct virtio_blk_outhdr));
	if (!err && len) err = sglist_append_phys(sg, data_pa, len);
	if (err) return err;
	int readable = writing ? sg->sg_nseg : 1;
	req->vbr_ack = 0xff;
	err = sglist_append_phys(sg, vtophys(&req->vbr_ack), 1);
	if (err) return err;
	return virtqueue_enqueue(sc->vtblk_vq, req, sg, readable, sg->sg_nseg - readable);
}

/* Poll the used ring until `n` requests have completed; EIO if one failed or the device never answers. */
static int vtblk_poll(struct vtblk_softc *sc, int n)
{
	int err = 0;
	for (u64 spin = 0; n > 0; spin++) {
		struct vtblk_request *r = virtqueue_dequeue(sc->vtblk_vq);
		if (r) {
			n--;
			if (*(volatile uint8_t *)&r->vbr_ack != 0) err = 5;
			continue;
		}
		__asm__ volatile("pause");
		if (spin > (1UL << 34)) return 5;
	}
	return err;
}

/* the interrupt handler the virtqueue names (vq_intrhand); the stand-in polls instead of taking the
 * interrupt, and calls it for the requests of normal (non-dump) I/O */
static int vtblk_vq_intr_pending;
static void vtblk_vq_intr(void *xsc)
{
	struct vtblk_softc *sc = xsc;
	mtx_lock(&sc->vtblk_mtx);
	for (struct vtblk_request *r; (r = virtqueue_dequeue(sc->vtblk_vq)) != 0;) {
		vtblk_vq_intr_pending--;
		if (r != &sc->vtblk_dump_request) vtblk_request_enqueue(sc, r);
	}
	mtx_unlock(&sc->vtblk_mtx);
}

/* Single-sector reads through the driver's normal I/O path, polled: requests from vtblk_req_free,
 * `mock_vtblk_inflight` at a time; sectors[i] lands in slot (its place in its batch) of `buf` (512 bytes
 * a slot, `bios` one bio a slot: VTBLK_MAX_INFLIGHT of each at most). 0, or -1 when a request could not
 * be queued (what was queued is still completed). */
static int vtblk_read_sectors(struct vtblk_softc *sc, const u64 *sectors, int ns, u8 *buf, struct bio *bios)
{
	for (int i = 0; i < ns;) {
		int batch = 0, failed = 0;
		mtx_lock(&sc->vtblk_mtx);
		for (; batch < mock_vtblk_inflight && i < ns; batch++, i++) {
			struct vtblk_request *r = vtblk_request_dequeue(sc);
			if (!r) { failed = 1; break; }
			struct bio *bp = &bios[batch];
			bp->bio_cmd = 1; /* BIO_READ */
			bp->bio_data = buf + 512UL * batch;
			bp->bio_offset = (long)(sectors[i] * 512);
			bp->bio_bcount = bp->bio_length = 512;
			r->vbr_bp = bp;
			r->vbr_hdr.type = VIRTIO_BLK_T_IN;
			r->vbr_hdr.ioprio = 1;
			r->vbr_hdr.sector = sectors[i];
			if (vtblk_request_execute(sc, r, vtophys(bp->bio_data), 512)) {
				vtblk_request_enqueue(sc, r);
				failed = 1;
				break;
			}
			vtblk_vq_intr_pending++;
		}
		if (batch) virtqueue_notify(sc, sc->vtblk_vq);
		mtx_unlock(&sc->vtblk_mtx);
		for (u64 spin = 0; vtblk_vq_intr_pending > 0; spin++) {
			vtblk_vq_intr(sc);
			__asm__ volatile("pause");
			if (spin > (1UL << 34)) mock_fatal("vtblk: the device never completed a read");
		}
		if (failed) return -1;
	}
	return 0;
}

/* normal I/O at attach (GEOM tasting the new disk): reads of the label sectors, `mock_vtblk_inflight`
 * at a time; leaves the before-dump state a real boot leaves */
static void vtblk_taste(struct vtblk_softc *sc)
{
	static const u64 probe[] = { 0, 1, 2, 8, 16, 64, 128 };
	u64 last = sc->vtblk_mock_sectors - 1;
	u64 sectors[10];
	int ns = 0;
	for (unsigned i = 0; i < sizeof(probe) / sizeof(probe[0]); i++)
		if (probe[i] < last) sectors[ns++] = probe[i];
	sectors[ns++] = last - 1;
	sectors[ns++] = last;
	u8 *buf = malloc_(VTBLK_MAX_INFLIGHT * 512UL);
	struct bio *bios = malloc_(VTBLK_MAX_INFLIGHT * sizeof(struct bio));
	if (vtblk_read_sectors(sc, sectors, ns, buf, bios)) mock_fatal("vtblk: cannot queue a read");
}

/* The dumper callback (dumper.dumper): one write of [pa, pa+len) at byte `offset` of the disk, or with
 * len 0 the closing cache flush, as vtblk's dump routine: under the softc lock (its owner is the thread
 * ddb runs on), through the request embedded in the softc (vtblk_dump_request), polled to completion.
 * With mock.vtblk_inflight=N the write goes out as N requests at once (the dump request and N-1 from
 * vtblk_req_free) before polling: more than one request in flight. */
static int vtblk_dump(struct vtblk_softc *sc, u64 pa, u64 offset, u64 len)
{
	struct bio buf[VTBLK_MAX_INFLIGHT]; /* vbr_bp points here: into the stack the dump runs on */
	struct vtblk_request *reqs[VTBLK_MAX_INFLIGHT];
	int n = 1, err = 0;
	mtx_lock(&sc->vtblk_mtx);
	if (len) {
		while (n < mock_vtblk_inflight && len / 512 >= (u64)(n + 1)) n++;
	}
	u64 per = len ? ((len / 512 + (u64)n - 1) / (u64)n) * 512 : 0;
	for (int i = 0; i < n; i++) {
		struct vtblk_request *r = i == 0 ? &sc->vtblk_dump_request : vtblk_request_dequeue(sc);
		u64 off = (u64)i * per, part = len - off < per ? len - off : per;
		if (!r) { n = i; break; }
		reqs[i] = r;
		memset(&buf[i], 0, sizeof(buf[i]));
		buf[i].bio_cmd = len ? 2 : 5; /* BIO_WRITE, BIO_FLUSH */
		buf[i].bio_offset = (long)(offset + off);
		buf[i].bio_bcount = buf[i].bio_length = (long)part;
		r->vbr_bp = &buf[i];
		r->vbr_hdr.type = len ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_FLUSH;
		r->vbr_hdr.ioprio = 1;
		r->vbr_hdr.sector = len ? (offset + off) / 512 : 0;
		err = vtblk_request_execute(sc, r, pa + off, part);
		if (err) { n = i; break; }
	}
	if (n) {
		virtqueue_notify(sc, sc->vtblk_vq);
		int perr = vtblk_poll(sc, n);
		if (!err) err = perr;
	}
	for (int i = 1; i < n; i++) vtblk_request_enqueue(sc, reqs[i]);
	mtx_unlock(&sc->vtblk_mtx);
	return err;
}

/* Probe and attach every legacy virtio-blk PCI function: device reset, features (indirect descriptors,
 * flush), the virtqueue, the requests, then the tasting reads. */
static void vtblk_attach_all(void)
{
	device_t pci_parent = 0;
	for (int dev = 0; dev < 32 && nvblk < VTBLK_MAX; dev++) {
		u32 id = pci_read(0, dev, 0, 0);
		if ((id & 0xffff) != 0x1af4 || (id >> 16) != 0x1001) continue;
		u32 bar0 = pci_read(0, dev, 0, 0x10);
		if (!(bar0 & 1)) continue;
		pci_write(0, dev, 0, 0x04, pci_read(0, dev, 0, 0x04) | 0x5); /* I/O space + bus master */
		u16 io = (u16)(bar0 & ~3U);
		if (!virtio_pci_devclass) virtio_pci_devclass = devclass_create("virtio_pci");
		if (!vtblk_devclass) vtblk_devclass = devclass_create("vtblk");
		pci_parent = device_add(virtio_pci_devclass, 0, "VirtIO PCI Block adapter");
		device_t d = device_add(vtblk_devclass, pci_parent, "VirtIO Block Adapter");
		struct vtblk_softc *sc = malloc_(sizeof(*sc));
		d->softc = sc;
		pci_parent->softc = sc;
		sc->vtblk_dev = d;
		sc->vtblk_mtx.lock_object.lo_name = d->nameunit;
		sc->vtblk_mtx.lock_object.lo_flags = 0x01030000; /* LO_INITIALIZED | class: sleep mutex (stand-in value) */
		sc->vtblk_mock_iobase = io;
		sc->vtblk_mock_pci_slot = dev;
		sc->vtblk_mock_sectors = inl(io + 0x14) | ((u64)inl(io + 0x18) << 32);
		sc->vtblk_bioq.queue.tqh_last = &sc->vtblk_bioq.queue.tqh_first;
		sc->vtblk_req_free.tqh_last = &sc->vtblk_req_free.tqh_first;
		sc->vtblk_req_ready.tqh_last = &sc->vtblk_req_ready.tqh_first;
		sc->vtblk_dump_queue.tqh_last = &sc->vtblk_dump_queue.tqh_first;
		nvblk++;

		outb(io + 0x12, 0);           /* reset */
		outb(io + 0x12, 1);           /* ACKNOWLEDGE */
		outb(io + 0x12, 1 | 2);       /* DRIVER */
		u32 host = inl(io + 0x00);
		u32 want = host & (VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX);
		outl(io + 0x04, want);
		sc->vtblk_features = want;
		u32 seg_max = want & VIRTIO_BLK_F_SEG_MAX ? inl(io + 0x14 + 12) : 1;
		u32 nsegs = VTBLK_MAXIO / PAGE + 1;
		if (seg_max && seg_max < nsegs) nsegs = seg_max;
		sc->vtblk_max_nsegs = (int)nsegs + 2; /* + header and status */
		sc->vtblk_write_cache = want & VIRTIO_BLK_F_FLUSH ? VTBLK_CACHE_WRITEBACK : VTBLK_CACHE_WRITETHROUGH;
		struct sglist *sg = malloc_(sizeof(struct sglist) + (u64)sc->vtblk_max_nsegs * sizeof(struct sglist_seg));
		sg->sg_segs = (struct sglist_seg *)(sg + 1);
		sg->sg_refs = 1;
		sg->sg_maxseg = (u_short)sc->vtblk_max_nsegs;
		sc->vtblk_sglist = sg;
		outw(io + 0x0e, 0);
		u16 qs = inw(io + 0x0c);
		if (!(want & VIRTIO_RING_F_INDIRECT_DESC) || qs == 0 || qs > 256 || (qs & (qs - 1))) {
			kprintf("vtblk%d: no usable queue (size %d, features %#x); not attached\n", d->unit, qs, host);
			outb(io + 0x12, 0x80); /* FAILED */
			continue;
		}
		sc->vtblk_vq = virtqueue_alloc(sc, d->unit, qs, sc->vtblk_max_nsegs);
		outl(io + 0x08, (u32)(vtophys(sc->vtblk_vq->vq_ring_mem) >> 12));
		outb(io + 0x12, 1 | 2 | 4);   /* DRIVER_OK */
		for (int i = 0; i < qs; i++) {
			struct vtblk_request *r = malloc_(sizeof(struct vtblk_request));
			vtblk_request_enqueue(sc, r);
			sc->vtblk_request_count++;
		}
		vtblk_taste(sc);
	}
}

/* ------------------------------------------------------------------ dump writing (kern_shutdown.c shape) */
/* the dump in progress (FreeBSD: `dumper`'s dumpoff, minidump_machdep.c's progress statics); named dump_*
 * like FreeBSD's dump state so the verifier knows the dump code writes it */
static struct { struct vtblk_softc *dev; u64 mediasize, dumpoff, extent, written, total; int last_pct; int full; u64 chunk_left; } dump_state;
static char dumpdev_name[64];
#include "mock_crc32.h" /* CRC-32 for GPT checks and gzip trailers */
#include "mock_gpt.h" /* dumpon /dev/vtbdNpM: a GPT partition as the dump medium */
#include "mock_compress.h" /* dumpon -z/-Z: gzip/zstd-compressed dumps (dump_compression) */

/* mock.fault_in_dump: a guest that hangs (interrupts off, no more output or writes) or resets mid-dump */
static void dump_fault_halfway(void)
{
	if (!mock_fault_in_dump || dump_state.written * 2 < dump_state.total) return;
	if (mock_fault_in_dump == 2) {
		outb(0xcf9, 0x02); outb(0xcf9, 0x06);  /* PCI reset control: hard reset */
	}
	for (;;) __asm__ volatile("cli; hlt");
}

static int dump_append_pa(u64 pa, u64 len)
{
	while (len) {
		dump_fault_halfway();
		u64 n = len > dumper.maxiosize ? dumper.maxiosize : len;
		int err; /* a compressed stream's own writes are bounded by comp_start()'s limit */
		if (kerneldumpcomp.kind) err = comp_append_pa(pa, n);
		else {
			err = gpt_dump_check_bounds(dump_state.dumpoff, n);
			if (!err) err = vtblk_dump(dump_state.dev, pa, dump_state.dumpoff, n);
		}
		if (err) return err;
		dump_state.dumpoff += n; dump_state.written += n; pa += n; len -= n;
		if (!dump_state.full) {
			int pct = (int)(dump_state.written * 100 / dump_state.total);
			if (pct / 10 > dump_state.last_pct / 10 && pct < 100) { kprintf("..%d%%", pct); dump_state.last_pct = pct; }
		}
	}
	return 0;
}

/* Dump physical memory [pa, pa+len): the perturbation knob writes a corrupted copy of the pattern page. */
static int dump_phys(u64 pa, u64 len)
{
	if (mock_corrupt_dump_page && mock_corrupt_pa >= pa && mock_corrupt_pa < pa + len) {
		int err = 0;
		if (mock_corrupt_pa > pa) err = dump_phys(pa, mock_corrupt_pa - pa);
		if (err) return err;
		u8 *b = kheap_page(KH_BOUNCE);
		memcpy(b, pa_to_dmap(mock_corrupt_pa), PAGE);
		for (int i = 0; i < 64; i++) b[1024 + i] ^= 0xa5;
		err = dump_append_pa(kva_to_pa(b), PAGE);
		if (err) return err;
		u64 rest = pa + len - (mock_corrupt_pa + PAGE);
		return rest ? dump_phys(mock_corrupt_pa + PAGE, rest) : 0;
	}
	if (!dump_state.full) return dump_append_pa(pa, len);
	/* full dump: kern_dump.c prints the MB left in the chunk every 16 MB */
	while (len) {
		u64 n = len > (1UL << 20) ? (1UL << 20) : len;
		int err = dump_append_pa(pa, n);
		if (err) return err;
		pa += n; len -= n;
		u64 before = dump_state.chunk_left;
		dump_state.chunk_left -= n;
		if (dump_state.chunk_left && (before >> 24) != (dump_state.chunk_left >> 24))
			kprintf(" %lu", ((dump_state.chunk_left / PAGE) + 255) >> 8);
	}
	return 0;
}

struct kerneldumpheader {
	char magic[20]; char architecture[12]; u32 version; u32 architectureversion; u64 dumplength;
	u64 dumptime; u32 dumpkeysize; u32 blocksize; char hostname[64]; char versionstring[192];
	char panicstring[175]; u8 compression; u64 dumpextent; u8 unused[4]; u32 parity;
} __attribute__((packed));
_Static_assert(sizeof(struct kerneldumpheader) == 512, "kdh");

static u32 be32(u32 v) { return __builtin_bswap32(v); }
static u64 be64(u64 v) { return __builtin_bswap64(v); }

static int dump_start(u64 length)
{
	struct vtblk_softc *sc = dumper.priv;
	if (!sc) {
		kprintf("Cannot dump: no dump device specified.\n");
		return -1;
	}
	if (!sc->vtblk_vq) {
		kprintf("\n** DUMP FAILED (ERROR 6) **\n");
		return -1;
	}
	dump_state.dev = sc;
	dump_state.mediasize = dumper.mediasize; /* the partition's size with dumpon /dev/vtbdNpM */
	dump_state.extent = length;
	dump_state.total = length;
	dump_state.written = 0;
	dump_state.last_pct = 0;
	kerneldumpcomp.kind = 0;
	if (dump_state.mediasize < 65536 + length + 2 * 512 && dump_compression && dump_state.mediasize > 65536 + 3 * 512)
		dump_state.extent = dump_state.mediasize - 65536 - 2 * 512; /* compressed: the rest of the device */
	if (dump_state.mediasize < 65536 + dump_state.extent + 2 * 512) {
		kprintf("\nDump failed. Partition too small.\n");
		return -1;
	}
	dump_state.dumpoff = dumper.mediaoffset + dump_state.mediasize - 512 - dump_state.extent;
	if (dump_compression) comp_start(dump_state.dumpoff, dumper.mediaoffset + dump_state.mediasize - 512);
	return 0;
}

static int dump_finish(u64 length)
{
	struct kerneldumpheader *h = (struct kerneldumpheader *)fakepd;
	if (kerneldumpcomp.kind) { int cerr = comp_finish(&length); if (cerr) return cerr; } /* dumplength: compressed bytes */
	memset(fakepd, 0, sizeof(fakepd));
	memcpy(h->magic, "FreeBSD Kernel Dump", 19);
	memcpy(h->architecture, "amd64", 5);
	h->version = be32(4);
	h->architectureversion = be32(2);
	h->dumplength = be64(length);
	h->dumptime = be64((u64)time_second);
	h->dumpkeysize = 0;
	h->blocksize = be32(512);
	memcpy(h->hostname, hostname, slen(hostname));
	unsigned long vl = slen(version);
	memcpy(h->versionstring, version, vl < 191 ? vl : 191);
	h->compression = (u8)kerneldumpcomp.kind;
	h->dumpextent = be64(dump_state.extent);
	u32 parity = 0;
	for (int i = 0; i < 128; i++) parity ^= ((u32 *)h)[i];
	h->parity = parity ^ (mock_bad_parity ? 1U : 0U);
	int err = vtblk_dump(dump_state.dev, kva_to_pa(fakepd), dumper.mediaoffset + dump_state.mediasize - 2 * 512 - dump_state.extent, 512);
	if (!err) err = vtblk_dump(dump_state.dev, kva_to_pa(fakepd), dumper.mediaoffset + dump_state.mediasize - 512, 512);
	/* tell the driver the dump is done: vtblk flushes the disk's write cache (a request without data) */
	if (!err) err = vtblk_dump(dump_state.dev, 0, 0, 0);
	return err;
}

static int is_dumpable(u64 pa)
{
	for (int i = 0; dump_avail[i + 1]; i += 2)
		if (pa >= dump_avail[i] && pa < dump_avail[i + 1]) return 1;
	return 0;
}
static void dump_add_page(u64 pa) { if (pa / PAGE < MAXPFN) vm_page_dump[pa / PAGE / 64] |= 1UL << (pa / PAGE % 64); }

static u64 kva_end(void) { return KERNBASE + 3 * NBPDR; }

/* amd64 minidump v2 (12.x minidump_machdep.c layout): header page, msgbuf, bitmap, PD pages, data */
static int minidumpsys(void)
{
	memset(vm_page_dump, 0, sizeof(vm_page_dump));
	u64 pmapsize = 0;
	for (u64 va = VM_MIN_KERNEL_ADDRESS; va < kva_end(); va += NBPDP) {
		pmapsize += PAGE;
		u64 e4 = pml4[(va >> 39) & 511];
		if (!(e4 & PG_V)) continue;
		u64 *pdpt = pa_to_dmap(e4 & PG_FRAME);
		u64 e3 = pdpt[(va >> 30) & 511];
		if (!(e3 & PG_V)) continue;
		u64 *pd = pa_to_dmap(e3 & PG_FRAME);
		for (int j = 0; j < 512; j++) {
			u64 pde = pd[j];
			if (!(pde & PG_V)) continue;
			if (pde & PG_PS) {
				for (u64 k = 0; k < 512; k++)
					if (is_dumpable((pde & PG_PS_FRAME) + k * PAGE)) dump_add_page((pde & PG_PS_FRAME) + k * PAGE);
				continue;
			}
			if (is_dumpable(pde & PG_FRAME)) dump_add_page(pde & PG_FRAME);
			u64 *pt = pa_to_dmap(pde & PG_FRAME);
			for (int k = 0; k < 512; k++)
				if ((pt[k] & PG_V) && is_dumpable(pt[k] & PG_FRAME)) dump_add_page(pt[k] & PG_FRAME);
		}
	}
	/* pmap-internal pages are always in the dump set (dump_add_page at allocation in FreeBSD) */
	u64 *tables[] = { pml4, pdpt_kern, pd_kern, pt_kheap, pdpt_dmap, pd_dmap };
	for (unsigned i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) dump_add_page(kva_to_pa(tables[i]));
	/* malloc'ed pages (direct map only) are in it too: UMA's small allocations call dump_add_page */
	for (int i = 0; i < arena_used; i++) dump_add_page(KHEAP_OFF + (u64)(KH_ARENA + i) * PAGE);

	if (mock_drop_pa) vm_page_dump[mock_drop_pa / PAGE / 64] &= ~(1UL << (mock_drop_pa / PAGE % 64));
	u64 npages = 0;
	for (u64 i = 0; i < MAXPFN / 64; i++) for (u64 w = vm_page_dump[i]; w; w &= w - 1) npages++;
	u64 msgsize = msgbufp->msg_size;
	u64 bitmapsize = vm_page_dump_size;
	int v3 = mock_minidump_version == 3;
	u64 *bitmap = vm_page_dump;
	if (v3) {
		/* vm_dumpset.h: bit = pfn - first pfn of its dump_avail range + pages of the ranges before it */
		memset(vm_page_dump_v3, 0, sizeof(vm_page_dump_v3));
		u64 base = 0;
		for (int i = 0; dump_avail[i + 1]; i += 2) {
			u64 first = dump_avail[i] / PAGE, last = (dump_avail[i + 1] + PAGE - 1) / PAGE;
			for (u64 pfn = first; pfn < last && pfn < MAXPFN; pfn++)
				if (vm_page_dump[pfn / 64] & (1UL << (pfn % 64))) {
					u64 bit = base + pfn - first;
					vm_page_dump_v3[bit / 64] |= 1UL << (bit % 64);
				}
			base += last - first;
		}
		bitmapsize = (((base + 63) / 64 * 8) + PAGE - 1) & ~(PAGE - 1);
		bitmap = vm_page_dump_v3;
	}
	u64 dumpsize = pmapsize + ((msgsize + PAGE - 1) & ~(PAGE - 1)) + bitmapsize + npages * PAGE + PAGE + (v3 ? PAGE : 0);
	kprintf("Dumping %lu out of %lu MB:", dumpsize >> 20, physmem * PAGE >> 20);
	if (dump_start(dumpsize)) return -1;

	memset(fakepd, 0, sizeof(fakepd));
	memcpy(fakepd, "minidump FreeBSD/amd64", 22);
	*(u32 *)(fakepd + 24) = v3 ? 3 : 2;        /* MINIDUMP_VERSION: 2 (12.x), 3 (13.0+) */
	if (v3) *(u32 *)(fakepd + 64) = PAGE;      /* dumpavailsize = round_page(sizeof(dump_avail)) */
	*(u32 *)(fakepd + 28) = (u32)msgsize;
	*(u32 *)(fakepd + 32) = (u32)bitmapsize;
	*(u32 *)(fakepd + 36) = (u32)pmapsize;
	*(u64 *)(fakepd + 40) = VM_MIN_KERNEL_ADDRESS;
	*(u64 *)(fakepd + 48) = DMAP_BASE;
	*(u64 *)(fakepd + 56) = DMAP_END;
	int err = dump_append_pa(kva_to_pa(fakepd), PAGE);
	if (!err) err = dump_append_pa(kva_to_pa(msgbufp->msg_ptr), (msgsize + PAGE - 1) & ~(PAGE - 1));
	if (!err && v3) {
		memset(fakepd, 0, sizeof(fakepd));
		memcpy(fakepd, dump_avail, sizeof(dump_avail));
		err = dump_append_pa(kva_to_pa(fakepd), PAGE);
	}
	if (!err) err = dump_append_pa(kva_to_pa(bitmap), bitmapsize);
	for (u64 va = VM_MIN_KERNEL_ADDRESS; !err && va < kva_end(); va += NBPDP) {
		u64 e4 = pml4[(va >> 39) & 511], e3 = 0;
		if (e4 & PG_V) e3 = ((u64 *)pa_to_dmap(e4 & PG_FRAME))[(va >> 30) & 511];
		err = dump_append_pa((e3 & PG_V) ? (e3 & PG_FRAME) : kva_to_pa(zeroes), PAGE);
	}
	for (u64 pfn = 0; !err && pfn < MAXPFN;) {
		if (!(vm_page_dump[pfn / 64] & (1UL << (pfn % 64)))) { pfn++; continue; }
		u64 run = pfn;
		while (run < MAXPFN && (vm_page_dump[run / 64] & (1UL << (run % 64)))) run++;
		err = dump_phys(pfn * PAGE, (run - pfn) * PAGE);
		pfn = run;
	}
	if (!err) err = dump_finish(dumpsize);
	if (err) { kprintf("\n** DUMP FAILED (ERROR %d) **\n", err); return -1; }
	return 0;
}

/* full dump: ELF64 ET_CORE, one PT_LOAD per dump_avail range (kern_dump.c dumpsys_generic shape) */
static int fulldumpsys(void)
{
	int nchunks = 0;
	u64 data = 0;
	for (int i = 0; dump_avail[i + 1]; i += 2, nchunks++) data += dump_avail[i + 1] - dump_avail[i];
	u64 hdrsz = 64 + 56UL * nchunks, hdr_r = (hdrsz + PAGE - 1) & ~(PAGE - 1);
	u64 dumpsize = hdr_r + data;
	kprintf("Dumping %lu MB (%d chunks)\n", dumpsize >> 20, nchunks);
	if (dump_start(dumpsize)) return -1;
	dump_state.full = 1;
	memset(fakepd, 0, sizeof(fakepd));
	u8 *e = fakepd;
	e[0] = 0x7f; e[1] = 'E'; e[2] = 'L'; e[3] = 'F'; e[4] = 2; e[5] = 1; e[6] = 1; e[7] = 255; /* STANDALONE */
	*(u16 *)(e + 16) = 4;   /* ET_CORE */
	*(u16 *)(e + 18) = 62;  /* EM_X86_64 */
	*(u64 *)(e + 32) = 64;  /* e_phoff */
	*(u16 *)(e + 52) = 64;  /* e_ehsize */
	*(u16 *)(e + 54) = 56;  /* e_phentsize */
	*(u16 *)(e + 56) = (u16)nchunks;
	*(u16 *)(e + 58) = 64;  /* e_shentsize */
	u64 off = hdr_r;
	for (int i = 0, c = 0; dump_avail[i + 1]; i += 2, c++) {
		u8 *ph = e + 64 + 56 * c;
		u64 start = dump_avail[i], size = dump_avail[i + 1] - dump_avail[i];
		*(u32 *)(ph + 0) = 1; *(u32 *)(ph + 4) = 4; /* PT_LOAD, PF_R */
		*(u64 *)(ph + 8) = off; *(u64 *)(ph + 16) = start; *(u64 *)(ph + 24) = start;
		*(u64 *)(ph + 32) = size; *(u64 *)(ph + 40) = size; *(u64 *)(ph + 48) = PAGE;
		off += size;
	}
	int err = dump_append_pa(kva_to_pa(fakepd), PAGE);
	for (u64 p = PAGE; !err && p < hdr_r; p += PAGE) err = dump_append_pa(kva_to_pa(zeroes), PAGE);
	for (int i = 0, c = 0; !err && dump_avail[i + 1]; i += 2, c++) {
		u64 pgs = (dump_avail[i + 1] - dump_avail[i]) / PAGE;
		kprintf("  chunk %d: %luMB (%lu pages)", c, (pgs + 255) >> 8, pgs);
		dump_state.chunk_left = dump_avail[i + 1] - dump_avail[i];
		err = dump_phys(dump_avail[i], dump_avail[i + 1] - dump_avail[i]);
		kprintf(" ... %s\n", err ? "fail" : "ok");
	}
	if (!err) err = dump_finish(dumpsize);
	dump_state.full = 0;
	if (err) { kprintf("\n** DUMP FAILED (ERROR %d) **\n", err); return -1; }
	return 0;
}

#include "mock_textdump.h" /* ddb capture, textdump set/dump, show panic; a pending textdump in doadump */
static void doadump(struct trapframe *tf)
{
	dumping++;
	dumptid = curthread->td_tid;
	dumppcb.pcb_r15 = tf->tf_r15; dumppcb.pcb_r14 = tf->tf_r14; dumppcb.pcb_r13 = tf->tf_r13;
	dumppcb.pcb_r12 = tf->tf_r12; dumppcb.pcb_rbp = tf->tf_rbp; dumppcb.pcb_rsp = tf->tf_rsp;
	dumppcb.pcb_rbx = tf->tf_rbx; dumppcb.pcb_rip = tf->tf_rip;
	if (textdump_pending) { textdump_dumpsys(); dumping--; return; } /* mock_textdump.h */
	int err = do_minidump ? minidumpsys() : fulldumpsys();
	if (!err) kprintf("\nDump complete\n");
	dumping--;
}

/* ------------------------------------------------------------------ the kernel's processes (boot-time table)
 * What a FreeBSD 12.1 kernel waiting in mountroot shows with one CPU (modelled on the real `ps` in
 * /work/shared/freebsd-12.1-amd64/evidence/ddb-ps-12.1.txt, a subset): the swapper and taskqueue threads
 * of proc0, the idle thread the NMI interrupts (pid 11, "idle: cpu0", tid 100003: ddb and the dump run
 * on it), interrupt threads waiting for interrupts, and kernel daemons asleep. */
extern void sched_switch(void);
extern void fork_trampoline(void);
static u64 mock_wchans[16]; /* objects the sleeping threads wait on */
struct mock_td_spec { int tid; const char *name; const char *wmesg; int wchan; int iwait; };
struct mock_proc_spec { int pid; const char *comm; int flags; int nthreads; struct mock_td_spec td[5]; };
static const struct mock_proc_spec mock_procs[] = {
	{ 16, "vnlru", P_SYSTEM, 1, { { 100045, "vnlru", "vlruwt", 1, 0 } } },
	{ 15, "syncer", P_SYSTEM, 1, { { 100044, "syncer", "syncer", 2, 0 } } },
	{ 9, "bufdaemon", P_SYSTEM | P_HADTHREADS, 2,
	  { { 100043, "bufdaemon", "qsleep", 3, 0 }, { 100048, "bufspacedaemon-0", 0, 4, 0 } } },
	{ 8, "vmdaemon", P_SYSTEM, 1, { { 100042, "vmdaemon", "psleep", 5, 0 } } },
	{ 7, "pagedaemon", P_SYSTEM | P_HADTHREADS, 3,
	  { { 100041, "dom0", "psleep", 6, 0 }, { 100046, "laundry: dom0", "launds", 7, 0 }, { 100047, "uma", "umarcl", 8, 0 } } },
	{ 6, "rand_harvestq", P_SYSTEM, 1, { { 100034, "rand_harvestq", 0, 9, 0 } } },
	{ 13, "geom", P_SYSTEM | P_HADTHREADS, 3,
	  { { 100018, "g_event", 0, 10, 0 }, { 100019, "g_up", 0, 11, 0 }, { 100020, "g_down", 0, 12, 0 } } },
	{ 12, "intr", P_SYSTEM | P_HADTHREADS, 4,
	  { { 100006, "swi6: task queue", 0, 0, 1 }, { 100016, "swi4: clock (0)", 0, 0, 1 },
	    { 100028, "irq256: virtio_pci0", 0, 0, 1 }, { 100030, "swi0: uart", 0, 0, 1 } } },
	{ 11, "idle", P_SYSTEM, 1, { { 100003, "idle: cpu0", 0, 0, 0 } } },
	{ 1, "kernel", P_SYSTEM, 1, { { 100002, "kernel", "rmdev", 13, 0 } } },
	{ 10, "audit", P_SYSTEM, 1, { { 100001, "audit", "audit_worker_cv", 14, 0 } } },
	{ 0, "kernel", P_SYSTEM | P_HADTHREADS, 4,
	  { { 100000, "swapper", "swapin", 15, 0 }, { 100004, "kqueue_ctx taskq", 0, 0, 0 },
	    { 100008, "thread taskq", 0, 0, 0 }, { 100010, "config_0", 0, 0, 0 } } },
};

static void proc_add_thread(struct proc *p, struct thread *td)
{
	td->td_proc = p;
	td->td_plist.tqe_next = 0;
	td->td_plist.tqe_prev = p->p_threads.tqh_last;
	*p->p_threads.tqh_last = td;
	p->p_threads.tqh_last = &td->td_plist.tqe_next;
	p->p_numthreads++;
}

/* Build allproc (newest first, as fork inserts at the head) from the table; the taskqueue threads of
 * proc0 sleep on the taskqueues' own (malloc'ed) objects. */
static void mock_make_procs(void)
{
	int kst = 0;
	struct proc *prev = 0;
	for (int i = (int)(sizeof(mock_procs) / sizeof(mock_procs[0])) - 1; i >= 0; i--) {
		const struct mock_proc_spec *s = &mock_procs[i];
		struct proc *p = s->pid == 0 ? &proc0 : malloc_(sizeof(struct proc));
		p->p_pid = s->pid;
		p->p_flag = s->flags;
		p->p_pptr = &proc0;
		p->p_session = &session0;
		memcpy(p->p_comm, s->comm, slen(s->comm) + 1);
		p->p_threads.tqh_first = 0;
		p->p_threads.tqh_last = &p->p_threads.tqh_first;
		for (int t = 0; t < s->nthreads; t++) {
			const struct mock_td_spec *ts = &s->td[t];
			struct thread *td = ts->tid == 100000 ? &thread0 : malloc_(sizeof(struct thread));
			td->td_tid = ts->tid;
			memcpy(td->td_name, ts->name, slen(ts->name) + 1);
			td->td_oncpu = NOCPU;
			if (ts->tid == 100003) { /* the idle thread: running on CPU 0, its stack is the one we run on */
				td->td_state = TDS_RUNNING;
				td->td_oncpu = 0;
				td->td_kstack = (u64)kheap_page(KH_STACK);
				td->td_kstack_pages = 4;
				td->td_pcb = (struct pcb *)(td->td_kstack + 4 * PAGE - sizeof(struct pcb));
				__pcpu[0].pc_idlethread = td;
				idleproc = p;
			} else {
				td->td_state = TDS_INHIBITED;
				td->td_inhibitors = ts->iwait ? TDI_IWAIT : TDI_SLEEPING;
				td->td_wmesg = ts->wmesg;
				td->td_wchan = ts->wchan ? (void *)&mock_wchans[ts->wchan] : ts->iwait ? 0 : (void *)malloc_(64);
				/* a kernel stack page of its own (thread0's too: the boot stack in .bss is not one,
				 * and a saved stack pointer there would make its neighbours look like a stack) */
				if (kst >= KH_KSTACK_PAGES) mock_fatal("too many kernel threads for the kernel stacks");
				td->td_kstack = (u64)kheap_page(KH_KSTACKS + kst++);
				td->td_kstack_pages = 1;
				td->td_pcb = (struct pcb *)(td->td_kstack + PAGE - sizeof(struct pcb));
				/* the saved context of a thread that switched out (or never ran: fork_trampoline) */
				td->td_pcb->pcb_rip = ts->iwait ? (u64)fork_trampoline : (u64)sched_switch + 0x1f;
				td->td_pcb->pcb_rsp = td->td_kstack + (u64)td->td_kstack_pages * PAGE - 0x400;
				td->td_pcb->pcb_rbp = td->td_pcb->pcb_rsp + 0x30;
			}
			proc_add_thread(p, td);
		}
		p->p_list.le_next = prev;
		p->p_list.le_prev = &allproc.lh_first;
		if (prev) prev->p_list.le_prev = &p->p_list.le_next;
		prev = p;
	}
	allproc.lh_first = prev;
	session0.s_leader = &proc0;
	__pcpu[0].pc_curthread = &thread0; /* boot (autoconfiguration) runs on thread0 */
}

/* ------------------------------------------------------------------ ddb: ps, show threads (12.1 format) */
static const char *td_state_name(const struct thread *td)
{
	if (td->td_state == TDS_RUNNING) return "Run";
	if (td->td_state == TDS_RUNQ) return "RunQ";
	if (td->td_state == TDS_CAN_RUN) return "CanRun";
	if (td->td_state == TDS_INACTIVE) return "Inactv";
	if (td->td_inhibitors & TDI_IWAIT) return "I";
	if (td->td_inhibitors & TDI_SLEEPING) return td->td_flags & TDF_SINTR ? "S" : "D";
	return "?";
}

/* the columns after the state: wmesg and wchan, "CPU n", or nothing (interrupt thread waiting) */
static void db_ps_wait(const struct thread *td)
{
	if (td->td_state == TDS_RUNNING) printf_("CPU %-22d  ", td->td_oncpu);
	else if (td->td_wchan) {
		char wmesg[8] = "-"; /* ddb shows at most 7 characters of the wait message */
		for (int i = 0; td->td_wmesg && i < 7 && td->td_wmesg[i]; i++) { wmesg[i] = td->td_wmesg[i]; wmesg[i + 1] = 0; }
		printf_("%-7s %#18lx  ", wmesg, (u64)td->td_wchan);
	}
	else printf_("%-26s  ", "");
}

static void db_ps(void)
{
	printf_("  pid  ppid  pgrp   uid  state   wmesg   wchan               cmd\n");
	for (struct proc *p = allproc.lh_first; p; p = p->p_list.le_next) {
		char state[4] = { 'D', 0, 0, 0 };
		int running = 0, all_iwait = 1, sintr = 0;
		for (struct thread *td = p->p_threads.tqh_first; td; td = td->td_plist.tqe_next) {
			running |= td->td_state == TDS_RUNNING;
			all_iwait &= (td->td_inhibitors & TDI_IWAIT) != 0;
			sintr |= (td->td_flags & TDF_SINTR) != 0;
		}
		state[0] = running ? 'R' : all_iwait ? 'W' : sintr ? 'S' : 'D';
		int n = 1;
		if (p->p_flag & P_SYSTEM) state[n++] = 'L';
		if (p->p_session && p->p_session->s_leader == p) state[n++] = 's';
		int ppid = p->p_pptr && p != &proc0 ? p->p_pptr->p_pid : 0;
		printf_("%5d %5d %5d %5d  %-6s  ", p->p_pid, ppid, 0, 0, state);
		if (p->p_flag & P_HADTHREADS) {
			printf_("%-26s  [%s]\n", "(threaded)", p->p_comm);
			for (struct thread *td = p->p_threads.tqh_first; td; td = td->td_plist.tqe_next) {
				printf_("%-6d                   %-6s  ", td->td_tid, td_state_name(td));
				db_ps_wait(td);
				printf_("[%s]\n", td->td_name);
			}
		} else {
			struct thread *td = p->p_threads.tqh_first;
			db_ps_wait(td);
			printf_("[%s]\n", td->td_name); /* a single-threaded process shows its thread's name */
		}
	}
}

static const char *db_func_name(u64 va, u64 *off);
static void db_show_threads(struct trapframe *tf)
{
	for (struct proc *p = allproc.lh_first; p; p = p->p_list.le_next)
		for (struct thread *td = p->p_threads.tqh_first; td; td = td->td_plist.tqe_next) {
			printf_("  %6d (%#lx) (stack %#lx)  ", td->td_tid, (u64)td, td->td_kstack);
			u64 rip = td == kdb_thread ? tf->tf_rip : td->td_pcb->pcb_rip;
			u64 frame = td == kdb_thread ? tf->tf_rbp : td->td_pcb->pcb_rbp, off = 0;
			const char *fn = db_func_name(rip, &off);
			if (!fn) printf_("%#lx() at %#lx\n", rip, rip);
			else if (!off) printf_("%s() at %s\n", fn, fn);
			else printf_("%s() at %s+%#lx/frame %#lx\n", fn, fn, off, frame);
		}
}

/* ------------------------------------------------------------------ ddb */
struct dbsym { const char *name; u64 addr; };
#define SYM(s) { #s, (u64)&s }
static struct dbsym db_symtab[] = {
	SYM(KPML4phys), SYM(hz), SYM(msgbufp), SYM(msgbuf0), SYM(dumppcb), SYM(dumptid), SYM(do_minidump),
	SYM(dumping), SYM(dumper), SYM(kdb_frame), SYM(version), SYM(ostype), SYM(osreldate), SYM(panicstr),
	SYM(time_second), SYM(physmem), SYM(dump_avail), SYM(pcb_size), SYM(mock_corrupt_dump_page), SYM(mock_corrupt_pa), SYM(mock_drop_pa), SYM(mock_bad_parity),
	SYM(mock_pattern_pa), SYM(vm_page_dump), SYM(allproc), SYM(proc0), SYM(thread0), SYM(idleproc), SYM(kdb_thread), SYM(__pcpu), SYM(devclasses),
	SYM(vtblk_devclass), SYM(mock_vtblk_inflight),
	SYM(mock_minidump_version),
};
struct dbfunc { const char *name; u64 addr; };
extern void mock_trap(struct trapframe *);
static void mock_main(void);
void mock_init(u64 modulep, u64 kernend);
static struct dbfunc db_functab[] = {
	{ "btext", (u64)btext }, { "mock_idle", (u64)mock_idle }, { "mock_trap", (u64)mock_trap },
	{ "mock_main", (u64)mock_main }, { "mock_init", (u64)mock_init }, { "sched_switch", (u64)sched_switch },
	{ "fork_trampoline", (u64)fork_trampoline }, { "vtblk_vq_intr", (u64)vtblk_vq_intr },
	{ "vtblk_dump", (u64)vtblk_dump },
};

static const char *db_func_name(u64 va, u64 *off)
{
	const char *best = 0; u64 base = 0;
	for (unsigned i = 0; i < sizeof(db_functab) / sizeof(db_functab[0]); i++)
		if (db_functab[i].addr <= va && db_functab[i].addr >= base) { best = db_functab[i].name; base = db_functab[i].addr; }
	if (!best || va - base >= 0x10000) return 0;
	*off = va - base;
	return best;
}

static void db_print_loc(u64 va)
{
	u64 off = 0;
	const char *fn = db_func_name(va, &off);
	if (fn) printf_("%s+%#lx", fn, off);
	else printf_("%#lx", va);
}

static int db_readable(u64 va, u64 size)
{
	u64 end = va + size;
	if (va >= KERNBASE && end <= KERNBASE + 2 * NBPDR) return 1;
	if (va >= KHEAP_VA && end <= KHEAP_VA + KH_PAGES * PAGE) {
		for (u64 pg = (va - KHEAP_VA) / PAGE; pg <= (end - 1 - KHEAP_VA) / PAGE; pg++)
			if (!(pt_kheap[pg] & PG_V)) return 0;
		return 1;
	}
	if (va >= DMAP_BASE && end <= DMAP_BASE + ram_top) return 1;
	return 0;
}

static int db_hex(const char *s, u64 *out)
{
	u64 v = 0; int n = 0;
	if (s[0] == '0' && s[1] == 'x') s += 2;
	for (; *s; s++, n++) {
		char c = *s;
		if (c >= '0' && c <= '9') v = v * 16 + (u64)(c - '0');
		else if (c >= 'a' && c <= 'f') v = v * 16 + (u64)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F') v = v * 16 + (u64)(c - 'A' + 10);
		else return 0;
	}
	*out = v;
	return n > 0;
}

static int db_expr(const char *s, u64 *out, const char **name)
{
	*name = 0;
	for (unsigned i = 0; i < sizeof(db_symtab) / sizeof(db_symtab[0]); i++)
		if (seq(s, db_symtab[i].name)) { *out = db_symtab[i].addr; *name = db_symtab[i].name; return 1; }
	for (unsigned i = 0; i < sizeof(db_functab) / sizeof(db_functab[0]); i++)
		if (seq(s, db_functab[i].name)) { *out = db_functab[i].addr; *name = db_functab[i].name; return 1; }
	return db_hex(s, out);
}

static u64 db_load(u64 va, int size)
{
	switch (size) {
	case 1: return *(volatile u8 *)va;
	case 2: return *(volatile u16 *)va;
	case 4: return *(volatile u32 *)va;
	default: return *(volatile u64 *)va;
	}
}

static int db_size(char c) { return c == 'b' ? 1 : c == 'h' ? 2 : c == 'l' ? 4 : c == 'g' ? 8 : 0; }

static void db_examine(const char *modif, char *arg)
{
	int size = 4, count = 1;
	char radix = 'x';
	for (const char *m = modif; *m; m++) {
		if (db_size(*m)) size = db_size(*m);
		else if (*m == 'x' || *m == 'd' || *m == 'u') radix = *m;
	}
	for (char *c = arg; *c; c++)
		if (*c == ',') { *c = 0; count = 0; for (char *d = c + 1; *d >= '0' && *d <= '9'; d++) count = count * 10 + (*d - '0'); break; }
	if (count < 1) count = 1;
	u64 va; const char *name;
	if (!db_expr(arg, &va, &name)) { printf_("Symbol not found\n"); return; }
	for (int i = 0; i < count; i++, va += (u64)size) {
		if (!db_readable(va, (u64)size)) { printf_("Cannot access memory at %#lx\n", va); return; }
		if (name && i == 0) printf_("%s:", name);
		else if (name) printf_("%s+%#x:", name, i * size);
		else printf_("%lx:", va);
		u64 v = db_load(va, size);
		if (radix == 'x') printf_("\t%lx\n", v); else printf_("\t%lu\n", v);
	}
}

static void db_write(const char *modif, char *args)
{
	int size = 4;
	for (const char *m = modif; *m; m++) if (db_size(*m)) size = db_size(*m);
	char *val = args;
	while (*val && *val != ' ') val++;
	if (!*val) { printf_("Syntax error\n"); return; }
	*val++ = 0;
	while (*val == ' ') val++;
	u64 va, v; const char *name;
	if (!db_expr(args, &va, &name)) { printf_("Symbol not found\n"); return; }
	int neg = 0, ok;
	if (*val == '-') { neg = 1; val++; }
	if (val[0] == '0' && val[1] == 'x') ok = db_hex(val, &v);
	else { v = 0; ok = *val != 0; for (char *d = val; *d; d++) { if (*d < '0' || *d > '9') ok = 0; v = v * 10 + (u64)(*d - '0'); } }
	if (!ok) { printf_("Syntax error\n"); return; }
	if (neg) v = -v;
	if (!db_readable(va, (u64)size)) { printf_("Cannot access memory at %#lx\n", va); return; }
	u64 old = db_load(va, size);
	switch (size) {
	case 1: *(volatile u8 *)va = (u8)v; break;
	case 2: *(volatile u16 *)va = (u16)v; break;
	case 4: *(volatile u32 *)va = (u32)v; break;
	default: *(volatile u64 *)va = v; break;
	}
	if (size < 8) v &= (1UL << (size * 8)) - 1;
	/* db_write_cmd: "%-20s%#10lr\t=\t%#10lr" with ddb's tab stops */
	int n = name ? (int)slen(name) : 0;
	if (name) printf_("%s", name); else { printf_("%lx", va); n = 16; }
	for (int i = n; i < 20; i++) putc_(' ');
	printf_("%#10lx\t=\t%#10lx\n", old, v);
}

static void db_show_registers(struct trapframe *tf)
{
	struct { const char *n; u64 v; } r[] = {
		{ "cs", tf->tf_cs }, { "ds", tf->tf_ds }, { "es", tf->tf_es }, { "fs", tf->tf_fs }, { "gs", tf->tf_gs },
		{ "ss", tf->tf_ss }, { "rax", tf->tf_rax }, { "rcx", tf->tf_rcx }, { "rdx", tf->tf_rdx },
		{ "rbx", tf->tf_rbx }, { "rsp", tf->tf_rsp }, { "rbp", tf->tf_rbp }, { "rsi", tf->tf_rsi },
		{ "rdi", tf->tf_rdi }, { "r8", tf->tf_r8 }, { "r9", tf->tf_r9 }, { "r10", tf->tf_r10 },
		{ "r11", tf->tf_r11 }, { "r12", tf->tf_r12 }, { "r13", tf->tf_r13 }, { "r14", tf->tf_r14 },
		{ "r15", tf->tf_r15 }, { "rip", tf->tf_rip }, { "rflags", tf->tf_rflags },
	};
	for (unsigned i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
		printf_("%s", r[i].n);
		int w = 30 - (int)slen(r[i].n);
		if (r[i].v) fmt_num(r[i].v, 16, w, 0, 0, 1, 0);
		else { for (int k = 1; k < w; k++) putc_(' '); putc_('0'); }
		if (seq(r[i].n, "rip")) { printf_("  "); db_print_loc(r[i].v); }
		printf_("\n");
	}
	db_print_loc(tf->tf_rip);
	printf_(":\t.byte\t%#x\n", (u32)*(volatile u8 *)tf->tf_rip);
}

static void db_show_msgbuf(void)
{
	struct msgbuf *m = msgbufp;
	printf_("msgbufp = %p\n", m);
	printf_("magic = %x, size = %d, r= %d, w = %d, ptr = %p, cksum= %d\n", m->msg_magic, m->msg_size,
		m->msg_rseq, m->msg_wseq, m->msg_ptr, m->msg_cksum);
	u32 pos = m->msg_wseq % m->msg_size;
	for (u32 i = 0; i < m->msg_size; i++) {
		char c = m->msg_ptr[(pos + i) % m->msg_size];
		if (c) putc_(c);
	}
	printf_("\n");
}

static int db_getc(void)
{
	while (!(inb(COM1 + 5) & 1)) __asm__ volatile("pause");
	return inb(COM1);
}

static int db_readline(char *buf, int max)
{
	static int last_cr;
	int n = 0;
	db_capture_line_start(); /* mock_textdump.h */
	for (;;) {
		int c = db_getc();
		if (c == '\n' && last_cr) { last_cr = 0; continue; }
		last_cr = c == '\r';
		if (c == '\r' || c == '\n') { db_capture_line_end(buf, n); printf_("\n"); buf[n] = 0; return n; }
		if ((c == 8 || c == 127) && n > 0) { n--; printf_("\b \b"); continue; }
		if (c >= 32 && c < 127 && n < max - 1) { buf[n++] = (char)c; putc_((char)c); }
	}
}

/* the ddb loop; returns to resume the interrupted code ("continue") */
static void db_trap(struct trapframe *tf)
{
	static char line[128];
	kdb_frame = tf;
	for (;;) {
		printf_("db> ");
		int n = db_readline(line, sizeof(line));
		while (n > 0 && line[n - 1] == ' ') line[--n] = 0;
		char *cmd = line;
		while (*cmd == ' ') cmd++;
		if (!*cmd) continue;
		char *args = cmd;
		while (*args && *args != ' ') args++;
		if (*args) *args++ = 0;
		while (*args == ' ') args++;
		char *modif = cmd;
		while (*modif && *modif != '/') modif++;
		if (*modif) *modif++ = 0;
		if (seq(cmd, "set")) {
			/* "set $lines 0": the pager is never on in this stand-in */
		} else if (db_textdump_command(cmd, args, tf)) { /* mock_textdump.h: capture, textdump, show panic */
		} else if (seq(cmd, "show") && (seq(args, "registers") || seq(args, "reg"))) {
			db_show_registers(tf);
		} else if (seq(cmd, "show") && seq(args, "msgbuf")) {
			db_show_msgbuf();
		} else if (seq(cmd, "x") || seq(cmd, "examine")) {
			db_examine(modif, args);
		} else if (seq(cmd, "write") || seq(cmd, "w")) {
			db_write(modif, args);
		} else if (seq(cmd, "dump")) {
			doadump(tf);
		} else if (seq(cmd, "bt") || seq(cmd, "trace")) {
			printf_("Tracing pid %d tid %d td %p\n", kdb_thread->td_proc->p_pid, kdb_thread->td_tid, (u64)kdb_thread);
			u64 off = 0;
			const char *fn = db_func_name(tf->tf_rip, &off);
			if (fn) printf_("%s() at ", fn); else printf_("%#lx() at ", tf->tf_rip);
			db_print_loc(tf->tf_rip);
			printf_("/frame %#lx\n", tf->tf_rbp ? tf->tf_rbp : tf->tf_rsp); /* code without a frame pointer */
		} else if (seq(cmd, "ps")) {
			db_ps();
		} else if (seq(cmd, "show") && seq(args, "threads")) {
			db_show_threads(tf);
		} else if (seq(cmd, "c") || seq(cmd, "continue") || seq(cmd, "cont")) {
			kdb_frame = 0;
			return;
		} else if (seq(cmd, "reset")) {
			outb(0xcf9, 0x02); outb(0xcf9, 0x06);  /* PCI reset control: hard reset */
			outb(0x64, 0xfe);
			for (;;) __asm__ volatile("cli; hlt");
		} else {
			printf_("No such command\n");
		}
	}
}

/* ------------------------------------------------------------------ traps */
int break_to_debugger = 1;     /* as if built with options BREAK_TO_DEBUGGER (kenv debug.kdb.break_to_debugger) */
int alt_break_to_debugger;     /* kenv debug.kdb.alt_break_to_debugger */
static int alt_break_state;
int debugger_on_panic = 1;     /* kenv debug.debugger_on_panic */
int panic_reboot_wait_time = 15; /* kenv kern.panic_reboot_wait_time */
static int rtc_seconds(void) { outb(0x70, 0); return inb(0x71); }
static void cpu_reset(void)
{
	kprintf("Rebooting...\n");
	outb(0xcf9, 0x02); outb(0xcf9, 0x06);  /* PCI reset control: hard reset */
	outb(0x64, 0xfe);
	for (;;) __asm__ volatile("cli; hlt");
}
static void db_enter(struct trapframe *tf, const char *why);

/* kdb_panic() -> panic() -> [ddb] -> kern_reboot(RB_DUMP): "Uptime", the dump, shutdown_panic() */
static void mock_panic(struct trapframe *tf, const char *msg)
{
	panicstr = (char *)msg;
	kprintf("panic: %s\ncpuid = 0\ntime = %d\n", msg, (int)time_second);
	if (debugger_on_panic) db_enter(tf, "panic");
	kprintf("Uptime: 1s\n");
	doadump(tf);
	if (panic_reboot_wait_time > 0) {
		kprintf("Automatic reboot in %d seconds - press a key on the console to abort\n", panic_reboot_wait_time);
		int last = rtc_seconds(), left = panic_reboot_wait_time, key = 0;
		while (left > 0 && !key) {
			if (inb(COM1 + 5) & 1) { (void)inb(COM1); key = 1; }
			int now = rtc_seconds();
			if (now != last) { last = now; left--; }
		}
		if (!key) cpu_reset();
	}
	if (panic_reboot_wait_time != 0) {
		kprintf("--> Press a key on the console to reboot,\n--> or switch off the system now.\n");
		while (!(inb(COM1 + 5) & 1)) __asm__ volatile("pause");
		(void)inb(COM1);
	}
	cpu_reset();
}

static void db_enter(struct trapframe *tf, const char *why)
{
	if (why) printf_("KDB: enter: %s\n", why);
	kdb_thread = curthread; /* subr_kdb.c: the debugger runs on the interrupted thread */
	printf_("[ thread pid %d tid %d ]\n", kdb_thread->td_proc->p_pid, kdb_thread->td_tid);
	printf_("Stopped at\t");
	db_print_loc(tf->tf_rip);
	printf_(":\t.byte\t%#x\n", (u32)*(volatile u8 *)tf->tf_rip);
	db_trap(tf);
}

/* COM1 receive interrupt while the kernel idles: serial BREAK and the ALT break sequence CR ~ ^B
 * (kdb_alt_break_internal) enter ddb like FreeBSD's uart console does */
static void com1_intr(struct trapframe *tf)
{
	int enter = 0, panic = 0;
	for (int guard = 0; guard < 64; guard++) {
		u8 lsr = inb(COM1 + 5);
		if (!(lsr & 0x11)) break;
		u8 c = inb(COM1);
		if ((lsr & 0x10) && break_to_debugger) { enter = 1; continue; }
		if (!(lsr & 1) || !alt_break_to_debugger) continue;
		if (alt_break_state == 2 && c == 0x02) { enter = 1; alt_break_state = 0; }
		else if (alt_break_state == 2 && c == 0x10) { panic = 1; alt_break_state = 0; }
		else if (alt_break_state == 1 && c == '~') alt_break_state = 2;
		else alt_break_state = c == '\r' ? 1 : 0;
	}
	outb(0x20, 0x20); /* EOI */
	if (panic) mock_panic(tf, "Panic sequence on console");
	else if (enter) db_enter(tf, "Break to debugger");
}

#include "mock_sh.h"

void mock_trap(struct trapframe *tf)
{
	u64 vec;
	memcpy(&vec, &tf->tf_flags, 8); /* the stub stored the vector in the flags/es/ds slot */
	tf->tf_trapno = (u32)(vec == 2 ? 19 : vec); /* FreeBSD's T_NMI is 19 */
	tf->tf_flags = 0;
	u16 es, ds;
	__asm__ volatile("mov %%es, %0" : "=r"(es)); __asm__ volatile("mov %%ds, %0" : "=r"(ds));
	tf->tf_es = es; tf->tf_ds = ds;
	if (vec == 0x24) { com1_intr(tf); return; }
	if (vec >= 32) return; /* other legacy PIC lines are masked: only spurious interrupts land here */
	if (vec == 3 && kdb_trap_action == 1) { db_enter(tf, "sysctl debug.kdb.enter"); return; } /* kdb_enter() */
	if (vec == 3 && kdb_trap_action == 2) { mock_panic(tf, "kdb_sysctl_panic"); return; }
	if (vec == 3 && kdb_trap_action == 3) { db_enter(tf, "Break to debugger"); return; }
	if (vec == 3 && kdb_trap_action == 4) { mock_panic(tf, "Panic sequence on console"); return; }
	if (vec == 2) {
		printf_("NMI ISA 20, EISA ff\n");
		printf_("NMI/cpu0 ... going to debugger\n");
		db_enter(tf, 0);
		return;
	}
	u64 cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	printf_("\n\nFatal trap %d: mock kernel exception while in kernel mode\n", (int)vec);
	printf_("fault virtual address\t= %#lx\ninstruction pointer\t= 0x20:%#lx\nerror code\t\t= %#lx\n", cr2,
		tf->tf_rip, tf->tf_err);
	for (;;) __asm__ volatile("cli; hlt");
}

/* ------------------------------------------------------------------ boot */
static void mock_main(void)
{
	const char *root = kern_getenv("vfs.root.mountfrom");
	if (root && seq(root, "ufs:/dev/md0")) mount_md_root(root);
	if (root) {
		kprintf("Trying to mount root from %s []...\n", root);
		const char *dev = root;
		while (*dev && *dev != ':') dev++;
		kprintf("mountroot: waiting for device %s...\n", *dev ? dev + 1 : root);
	} else {
		kprintf("mountroot> ");
	}
	mock_idle();
}

void mock_init(u64 modulep, u64 kernend)
{
	(void)kernend;
	outb(COM1 + 1, 0); /* no UART interrupts: we poll */
	crc32_init();
	/* legacy PICs: vectors 0x20-0x2f, everything masked */
	outb(0x20, 0x11); outb(0xa0, 0x11); outb(0x21, 0x20); outb(0xa1, 0x28);
	outb(0x21, 4); outb(0xa1, 2); outb(0x21, 1); outb(0xa1, 1); outb(0x21, 0xff); outb(0xa1, 0xff);

	/* GRUB identity-maps low memory: find our metadata and read the SMAP first to size the direct map */
	u8 *kmdp = find_kernel_metadata(modulep);
	find_mfs_root(modulep);
	u8 *p = kmdp;
	for (int guard = 0; guard < 4096; guard++) {
		u32 type = *(u32 *)p, len = *(u32 *)(p + 4);
		if (type == MODINFO_END && len == 0) break;
		if (type == (MODINFO_METADATA | MODINFOMD_SMAP))
			for (u32 off = 0; off + 20 <= len; off += 20)
				if (*(u32 *)(p + 8 + off + 16) == 1) {
					u64 end = *(u64 *)(p + 8 + off) + *(u64 *)(p + 8 + off + 8);
					if (end > ram_top) ram_top = end;
				}
		p = p + 8 + ((len + 7) & ~7U);
	}
	if (ram_top > MAXPFN * PAGE) ram_top = MAXPFN * PAGE;
	if (ram_top < KHEAP_OFF + KH_PAGES * PAGE) ram_top = 128UL << 20;

	gdtr.limit = sizeof(gdt) - 1; gdtr.base = (u64)gdt;
	load_gdt_and_segments(&gdtr);
	for (int v = 0; v < 256; v++) set_gate(v, trap_stubs[v < 32 ? v : v == 0x24 ? 33 : 32]);
	idtr.limit = sizeof(idt) - 1; idtr.base = (u64)idt;
	__asm__ volatile("lidt %0" : : "m"(idtr));
	build_page_tables();
	parse_metadata((u64)kmdp);

	memset(kheap_page(KH_STACK), 0, 4 * PAGE);
	memset(kheap_page(KH_VRING), 0, (KH_ARENA - KH_VRING) * PAGE);
	mock_make_procs();
	u8 *pat = kheap_page(KH_PATTERN);
	for (u64 i = 0; i < PAGE; i++) pat[i] = (u8)(i * 7 + 0x5a);
	memcpy(pat, "MockFreeBSDKernel pattern page", 30);
	mock_pattern_pa = kva_to_pa(pat);

	msgbuf0.msg_ptr = (char *)kheap_page(KH_MSGBUF);
	msgbuf0.msg_magic = 0x063062;
	msgbuf0.msg_size = KH_MSGBUF_PAGES * PAGE;
	msgbuf0.msg_seqmod = msgbuf0.msg_size * 16;
	msgbufp = pa_to_dmap(kva_to_pa(&msgbuf0)); /* like FreeBSD: msgbufp is a direct-map address */

	/* dump_avail: RAM entries of the SMAP, page-rounded inwards, inside the direct map */
	int n = 0;
	for (int i = 0; i < nsmap && n < 32; i++) {
		if (smap[i].type != 1) continue;
		u64 s = (smap[i].base + PAGE - 1) & ~(PAGE - 1), e = (smap[i].base + smap[i].len) & ~(PAGE - 1);
		if (e > ram_top) e = ram_top;
		if (e <= s) continue;
		dump_avail[n++] = s; dump_avail[n++] = e;
		physmem += (e - s) / PAGE;
	}
	u64 maxpfn = n ? dump_avail[n - 1] / PAGE : 0;
	vm_page_dump_size = (((maxpfn + 7) / 8) + PAGE - 1) & ~(PAGE - 1);

	kprintf("KDB: debugger backends: ddb\n");
	kprintf("KDB: current backend: ddb\n");
	kprintf("---<<BOOT>>---\n");
	kprintf("MockFreeBSDKernel (fbsd-hil test stand-in): imitates FreeBSD's console protocol and dump formats; it is not FreeBSD.\n");
	kprintf("%s", version);
	kprintf("real memory  = %lu (%lu MB)\n", ram_top, ram_top >> 20);
	kprintf("avail memory = %lu (%lu MB)\n", physmem * PAGE, physmem * PAGE >> 20);

	const char *md = kern_getenv("debug.minidump");
	if (md) do_minidump = md[0] != '0';
#ifdef MOCK_CURRENT_KERNEL
	mock_minidump_version = 3; /* 13.0+ kernels write minidump v3 */
#endif
	const char *mv = kern_getenv("mock.minidump_version");
	if (mv && mv[0] == '3' && mv[1] == 0) mock_minidump_version = 3;
	const char *cp = kern_getenv("mock.corrupt_dump_page");
	u64 cpa = 0;
	if (cp && ((cp[0] == '1' && cp[1] == 0 && (cpa = mock_pattern_pa)) ||
		   (cp[0] == '0' && cp[1] == 'x' && db_hex(cp, &cpa) && cpa && is_dumpable(cpa)))) {
		mock_corrupt_dump_page = 1;
		mock_corrupt_pa = cpa & ~(PAGE - 1);
		kprintf("mock: will corrupt the dump's copy of the page at PA %#lx (mock.corrupt_dump_page=%s)\n",
			mock_corrupt_pa, cp);
	}
	const char *dr = kern_getenv("mock.drop_dump_page");
	if (dr && db_hex(dr, &cpa) && cpa < MAXPFN * PAGE) {
		mock_drop_pa = cpa & ~(PAGE - 1);
		kprintf("mock: will leave the page at PA %#lx out of a minidump (mock.drop_dump_page)\n", mock_drop_pa);
	}
	const char *bh = kern_getenv("mock.bad_dump_header");
	if (bh && seq(bh, "parity")) {
		mock_bad_parity = 1;
		kprintf("mock: will write dump headers with a wrong parity (mock.bad_dump_header=parity)\n");
	}
	if ((mock_no_compression = seq(kern_getenv("mock.no_compression") ?: "", "1")))
		kprintf("mock: a kernel without options GZIO/ZSTDIO (mock.no_compression=1)\n");
	const char *fd = kern_getenv("mock.fault_in_dump");
	if (fd && (seq(fd, "hang") || seq(fd, "reset"))) {
		mock_fault_in_dump = seq(fd, "hang") ? 1 : 2;
		kprintf("mock: will %s halfway through a dump (mock.fault_in_dump=%s)\n", fd, fd);
	}
	const char *pw = kern_getenv("kern.panic_reboot_wait_time");
	if (pw) panic_reboot_wait_time = pw[0] == '-' ? -1 : (int)(pw[0] - '0') * (pw[1] ? 10 : 1) + (pw[1] ? pw[1] - '0' : 0);
	const char *dp = kern_getenv("debug.debugger_on_panic");
	if (dp) debugger_on_panic = dp[0] != '0';
	const char *kb = kern_getenv("debug.kdb.break_to_debugger");
	if (kb) break_to_debugger = kb[0] != '0';
	kb = kern_getenv("debug.kdb.alt_break_to_debugger");
	if (kb) alt_break_to_debugger = kb[0] != '0';
	textdump_knobs(kern_getenv("mock.corrupt_textdump")); /* mock_textdump.h */
	const char *inf = kern_getenv("mock.vtblk_inflight");
	if (inf && inf[0] >= '1' && inf[0] <= '0' + VTBLK_MAX_INFLIGHT && inf[1] == 0) {
		mock_vtblk_inflight = inf[0] - '0';
		kprintf("mock: virtio-blk submits up to %d requests before polling (mock.vtblk_inflight)\n", mock_vtblk_inflight);
	}
	mock_witness_knobs(); /* mock.witness_lie (mock_witness.h) */
	vtblk_attach_all();
	for (int i = 0; i < nvblk; i++) {
		struct vtblk_softc *sc = vtblk_softc_of(i);
		kprintf("virtio_pci%d: <VirtIO PCI Block adapter> port %#x at device %d.0 on pci0\n", i,
			sc->vtblk_mock_iobase, sc->vtblk_mock_pci_slot);
		kprintf("vtblk%d: <VirtIO Block Adapter> on virtio_pci%d\n", i, i);
		kprintf("vtblk%d: %luMB (%lu 512 byte sectors)\n", i, sc->vtblk_mock_sectors >> 11, sc->vtblk_mock_sectors);
	}
	const char *dd = kern_getenv("dumpdev");
	if (dd) {
		unsigned long l = slen(dd);
		memcpy(dumpdev_name, dd, l < 63 ? l : 63);
		if (sprefix(dd, "/dev/vtbd") && dd[9] >= '0' && dd[9] <= '3' && dd[10] == 0 && dd[9] - '0' < nvblk) {
			struct vtblk_softc *sc = vtblk_softc_of(dd[9] - '0');
			dumper.dumper = (void *)vtblk_dump;
			dumper.priv = sc;
			dumper.blocksize = 512;
			dumper.maxiosize = VTBLK_MAXIO;
			dumper.mediasize = sc->vtblk_mock_sectors * 512;
		} else {
			kprintf("mock: dumpdev %s is not a virtio-blk disk this stand-in can write; no dump device\n", dd);
		}
	}
	/* console input interrupts (IRQ4, vector 0x24) for BREAK / ALT break while idle */
	outb(COM1 + 3, inb(COM1 + 3) & 0x7f);
	outb(COM1 + 4, 0x0b);        /* DTR, RTS, OUT2 (gates the IRQ line on PCs) */
	outb(COM1 + 1, 0x05);        /* received data + line status (BREAK) */
	outb(0x21, 0xff & ~(1 << 4));
	/* autoconfiguration is over: the CPU goes idle on the idle thread's stack (below its pcb) */
	__pcpu[0].pc_curthread = __pcpu[0].pc_idlethread;
	switch_stack((u64)kheap_page(KH_STACK) + 4 * PAGE - 512, mock_main);
}
