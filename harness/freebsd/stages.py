"""Where a FreeBSD guest is, recognised from what it prints on its serial console.

Every pattern here is data (`STAGE_PATTERNS`, `FAILURE_PATTERNS`) taken from real console text: the
FreeBSD 12.1 transcripts in ``tests/data/transcripts/`` (SeaBIOS, GRUB, kernel, mountroot, ddb, dumps)
and the FreeBSD sources cited in ``/work/shared/reference/freebsd-dump-formats.md`` (loader, rc, getty,
panic and reboot texts). Two users:

* `recognise(text)` walks a finished transcript and lists every stage in order (tests, artifacts);
* `wait_for_stage(console, targets, deadline)` waits on a live `Console` until one of `targets` shows
  up, with a kernel panic armed as a failure so that a panic during *any* wait ends it at once with the
  panic text as evidence (`GuestPanicked`), and the firmware's / GRUB's / loader(8)'s failure messages
  (`BOOT_FAILURE_PATTERNS`) ending it with `BootFailed`. On the way to a boot stage it notes the boot
  milestones (progress, the hand-over time); a kernel silent after GRUB's hand-over is explained by
  `harness.freebsd.handover`.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from harness.util.deadline import Deadline, as_deadline
from harness.vm.console import ConsoleClosed, ConsoleTimeout


class Stage(enum.StrEnum):
    """One recognisable point of a FreeBSD boot / debug session, in rough boot order."""

    FIRMWARE = "firmware"  # SeaBIOS / iPXE / OVMF banner
    GRUB = "grub"  # GRUB menu / kfreebsd hand-over
    LOADER = "loader"  # FreeBSD loader(8) banner
    LOADER_MENU = "loader_menu"  # the beastie/lua menu
    LOADER_COUNTDOWN = "loader_countdown"  # autoboot countdown
    LOADER_PROMPT = "loader_prompt"  # "OK " prompt
    KERNEL = "kernel"  # ---<<BOOT>>--- and the copyright banner
    ROOT_WAIT = "root_wait"  # mountroot: waiting for device ...
    MOUNTROOT_PROMPT = "mountroot_prompt"  # interactive mountroot> prompt
    SINGLE_USER = "single_user"  # init(8): "Enter full pathname of shell or RETURN for /bin/sh: "
    RC = "rc"  # /etc/rc running
    LOGIN = "login"  # getty's login: prompt
    SHELL = "shell"  # a root shell prompt
    DDB_ENTER = "ddb_enter"  # KDB: enter: <why> / NMI ... going to debugger
    DDB_THREAD = "ddb_thread"  # [ thread pid N tid M ]
    DDB_STOPPED = "ddb_stopped"  # Stopped at <location>
    DDB_PROMPT = "ddb_prompt"  # db>
    PANIC = "panic"  # panic: <message>
    DUMP_PROGRESS = "dump_progress"  # Dumping N out of M MB / Dumping N MB (K chunks)
    DUMP_COMPLETE = "dump_complete"
    REBOOT = "reboot"  # Automatic reboot / Rebooting...
    REBOOT_WAIT = "reboot_wait"  # "--> Press a key on the console to reboot": halted after a panic


# Patterns are searched in decoded console text (CR LF line ends kept). Group 1, where present, is the
# interesting value (why ddb was entered, the panic message, the device waited for, ...).
STAGE_PATTERNS: dict[Stage, str] = {
    Stage.FIRMWARE: r"SeaBIOS \(version [^)\r\n]*\)|iPXE \(http://ipxe\.org\)"
    r"|Booting from (?:DVD/CD|Hard Disk|Floppy)|BdsDxe: (?:loading|starting) Boot",
    # GRUB draws its banner with cursor moves in between ("Wel\x1b[09;03H...come to GRUB!" in ada.serial.log)
    Stage.GRUB: r"come to GRUB!|GNU GRUB +version|Booting `[^'\r\n]*'"
    r"|GRUB: (?:loading FreeBSD kernel|booting)",
    Stage.LOADER: r"FreeBSD/\w+ (?:EFI|bootstrap) loader|BTX loader|Consoles: [^\r\n]*",
    Stage.LOADER_MENU: r"Boot Multi user|Boot \[M\]ulti user|Escape to loader prompt",
    # lua: "Autoboot in N seconds, hit [Enter] to boot or any other key to stop"; common/boot.c:
    # "Hit [Enter] to boot immediately, or any other key for command prompt." + "Booting [k] in N seconds..."
    Stage.LOADER_COUNTDOWN: r"Autoboot in (\d+) seconds|Booting \[[^\]\r\n]*\] in (\d+) seconds?\.\.\.",
    Stage.LOADER_PROMPT: r"(?:^|\n)OK $",
    Stage.KERNEL: r"---<<BOOT>>---|Copyright \(c\) 1992-\d+ The FreeBSD Project\.",
    Stage.ROOT_WAIT: r"mountroot: waiting for device (\S+?)\.\.\.",
    Stage.MOUNTROOT_PROMPT: r"mountroot> $",
    # init(8) in single-user mode (boot flag -s) asks for a shell; RETURN gives /bin/sh as root, no login
    # (the 12.1 boot-test transcript; sbin/init/init.c single_user())
    Stage.SINGLE_USER: r"Enter full pathname of shell or RETURN for /bin/sh: $",
    Stage.RC: r"Setting hostuuid: |Setting hostid: |Starting file system checks|Mounting local filesystems"
    r"|Starting devd\.|Updating motd|Starting sshd\.|Starting cron\.",
    Stage.LOGIN: r"login: $",
    Stage.SHELL: r"(?:^|\n)[^\r\n]*(?:root@[^\r\n]*)?[#$] $",
    Stage.DDB_ENTER: r"KDB: enter: ([^\r\n]*)|NMI/cpu\d+ \.\.\. going to debugger",
    Stage.DDB_THREAD: r"\[ thread pid (\d+) tid (\d+) \]",
    Stage.DDB_STOPPED: r"(?:Stopped|Breakpoint|Watchpoint) at\s+([^\r\n]*)",
    Stage.DDB_PROMPT: r"(?:^|\n)db> $",
    # After `sysctl debug.kdb.panic=1` the panic follows sysctl's "debug.kdb.panic: 0" on the same line
    # (12.1: "debug.kdb.enter: 0KDB: enter: sysctl debug.kdb.enter" in the mfsroot boot test), and CR ~ ^P
    # typed at a shell prompt leaves the tty's echo of "~" before it
    Stage.PANIC: r"(?:^|[\r\n]|> |~|debug\.kdb\.panic: \d+)panic: ([^\r\n]*)",
    Stage.DUMP_PROGRESS: r"Dumping (\d+) out of (\d+) MB:|Dumping (\d+) MB \((\d+) chunks\)",
    Stage.DUMP_COMPLETE: r"Dump complete|Textdump complete\.",
    # kern_shutdown.c shutdown_panic()/shutdown_reset(): the countdown (kern.panic_reboot_wait_time, 15 s
    # by default) and the reset itself.
    Stage.REBOOT: r"Automatic reboot in (\d+) seconds|Rebooting\.\.\.|cpu_reset: Stopping other CPUs",
    # After a key was pressed during the countdown (or at once with kern.panic_reboot_wait_time=-1) the
    # kernel waits in cngetc() with the other CPUs stopped. 12+ prints "--> Press a key on the console to
    # reboot,\n--> or switch off the system now.\n"; older kernels "--> Press a key on the console to
    # reboot <--" (both in the history of sys/kern/kern_shutdown.c).
    Stage.REBOOT_WAIT: r"--> Press a key on the console to reboot(?:,\r*\n--> or switch off the system now\."
    r"| <--)",
}

# Stages whose pattern must sit at the very end of the text seen so far (prompts: nothing follows them
# until someone types). In `recognise` they also match when followed by typed input on the same line.
PROMPT_STAGES = frozenset(
    {Stage.LOADER_PROMPT, Stage.MOUNTROOT_PROMPT, Stage.SINGLE_USER, Stage.LOGIN, Stage.SHELL,
     Stage.DDB_PROMPT}
)

#: Boot failures of the firmware and the boot loaders: each means nothing more will come, so a wait ends
#: at once (`BootFailed`) instead of running out its whole deadline. Texts: SeaBIOS (src/boot.c: "Boot
#: failed: ...", "No bootable device."), GRUB 2 (grub-core/normal/menu.c: "Failed to boot both default and
#: fallback entries.", kern/main.c: "Entering rescue mode..."), FreeBSD's loader(8) (stand/common/boot.c:
#: "can't load '%s'", stand/lua/config.lua: "Failed to load kernel '%s'", "No kernel set, failed to load
#: from module_path").
BOOT_FAILURE_PATTERNS: dict[str, str] = {
    "firmware.no_boot": r"No bootable device|Boot failed: [^\r\n]*",
    # fbsd-hil's grub.cfg echoes "GRUB: loading FreeBSD kernel", runs kfreebsd (+ modules, kenv) and
    # echoes "GRUB: booting": an error line right before that echo is a load failure (seconds before
    # GRUB gives up with "Failed to boot ...", after its "Press any key to continue" wait)
    "grub.load_error": r"error: [^\r\n]*[\r\n]+GRUB: booting",
    "grub.boot_failed": r"Failed to boot both default and fallback entries\.?",
    "grub.rescue": r"Entering rescue mode\.\.\.",
    "loader.no_kernel": r"can't load '[^'\r\n]+'|Failed to load kernel '[^'\r\n]+'"
    r"|No kernel set, failed to load from module_path",
}

#: Console failure patterns, armed during every wait by `wait_for_stage` (names are Console names).
FAILURE_PATTERNS: dict[str, str] = {
    "freebsd.panic": STAGE_PATTERNS[Stage.PANIC],
    "freebsd.fatal_trap": r"(?:^|[\r\n])Fatal (?:double fault|trap \d+: [^\r\n]*)",
    **BOOT_FAILURE_PATTERNS,
}


#: vfs_mountroot.c: why the root did not mount, printed before the interactive ``mountroot>`` prompt
MOUNT_FAILED = re.compile(r"Mounting from (\S+) failed with error (\d+)[^\r\n]*")


def mountroot_failure(text: str) -> str | None:
    """The kernel's own words for a root that did not mount (the last such line), else None."""
    found = list(MOUNT_FAILED.finditer(text))
    return found[-1].group(0).strip() if found else None


TAIL_WINDOW = 256 * 1024  # how much console text stage analysis looks back at (Console keeps this much)


class FreeBSDStageError(RuntimeError):
    """Base for FreeBSD console errors; `tail` is the console text that proves what happened."""

    def __init__(self, message: str, *, tail: str = "") -> None:
        super().__init__(f"{message}\n--- console tail ---\n{tail}" if tail else message)
        self.tail = tail


class GuestPanicked(FreeBSDStageError):
    """The kernel panicked (or took a fatal trap) while we waited for something else."""

    def __init__(self, panic_message: str, *, waiting_for: str, tail: str = "") -> None:
        super().__init__(
            f"FreeBSD kernel panicked while waiting for {waiting_for}: {panic_message}", tail=tail
        )
        self.panic_message = panic_message


class BootFailed(FreeBSDStageError):
    """The firmware or a boot loader gave up (no bootable device, GRUB or loader(8) could not load the
    kernel): the message quotes its error lines."""

    def __init__(self, message: str, *, failure: str, tail: str = "") -> None:
        super().__init__(message, tail=tail)
        self.failure = failure  # the BOOT_FAILURE_PATTERNS name


_ERROR_LINE = re.compile(r"(?:^|[\r\n])[^\S\r\n]*(error: [^\r\n]+|ERROR: [^\r\n]+|can't load '[^\r\n]+)")
_WHO = {
    "firmware": "the firmware (SeaBIOS) found nothing to boot",
    "grub": "GRUB could not boot the kernel",
    "loader": "FreeBSD's loader(8) could not load the kernel",
}


def failure_error(exc, waiting_for: str, *, seconds: float | None = None) -> FreeBSDStageError:
    """The error for a `ConsoleFailure` from `FAILURE_PATTERNS`: `BootFailed` for a boot failure, with
    the loader's error lines, else `GuestPanicked` with the panic message."""
    text = getattr(exc, "tail", "") or ""
    matched = (getattr(exc, "matched", "") or "").strip()
    name = getattr(exc, "name", "") or ""
    if name in BOOT_FAILURE_PATTERNS:
        plain = _ANSI.sub("", text + ("" if matched in text else matched))
        anchors = ("SeaBIOS (version", "come to GRUB!", "GRUB: loading", "BTX loader")
        starts = [plain.rfind(a) for a in anchors]
        region = plain[max(0, *starts) :]
        errors = list(dict.fromkeys(m.group(1).strip() for m in _ERROR_LINE.finditer(region)))[-3:]
        matched = matched.split("\n")[0].strip() if name == "grub.load_error" else matched
        when = f" after {seconds:.1f} s" if seconds is not None else ""
        said = "; ".join([*errors, matched]) if matched not in errors else "; ".join(errors)
        return BootFailed(
            f"{_WHO[name.split('.')[0]]}{when} (waiting for {waiting_for}): {said}", failure=name, tail=text
        )
    pm = re.search(STAGE_PATTERNS[Stage.PANIC], matched)
    message = pm.group(1) if pm else matched or str(exc)
    return GuestPanicked(message.strip(), waiting_for=waiting_for, tail=text)


class StageTimeout(ConsoleTimeout):
    """A stage wait ran out of time; the message names the last stage the console showed (and, when
    GRUB handed over to a kernel that never printed anything, says exactly that)."""

    def __init__(self, message: str, *, last_stage: Stage | None, cause: ConsoleTimeout) -> None:
        self.last_stage = last_stage
        super().__init__(
            message,
            deadline=cause.deadline,
            phase=cause.phase,
            expectation=cause.expectation,
            tail=cause.tail,
            transcript=cause.transcript,
        )


class StageConsoleClosed(ConsoleClosed):
    """The console closed (guest gone: reset with on_reboot=destroy, QEMU exit) during a stage wait;
    the message names the last stage seen, or GRUB's hand-over to a kernel that never printed."""

    def __init__(self, message: str, *, last_stage: Stage | None, cause: ConsoleClosed) -> None:
        self.last_stage = last_stage
        super().__init__(
            message,
            phase=cause.phase,
            expectation=cause.expectation,
            tail=cause.tail,
            transcript=cause.transcript,
        )


@dataclass(frozen=True)
class StageEvent:
    """`stage` was seen at `offset` of the text; `value` is the pattern's first non-empty group."""

    stage: Stage
    offset: int
    text: str
    value: str | None


def _value(m: re.Match[str]) -> str | None:
    for g in m.groups():
        if g:
            return g
    return None


_COMPILED = {stage: re.compile(p) for stage, p in STAGE_PATTERNS.items()}
# In a finished transcript a prompt is followed by what was typed; match it up to the line end instead.
_COMPILED_IN_TRANSCRIPT = {
    stage: re.compile(p[:-1] + r"(?=[^\r\n]*(?:\r|\n|\Z))" if p.endswith("$") else p)
    for stage, p in STAGE_PATTERNS.items()
}


def recognise(text: str, stages: Iterable[Stage] | None = None) -> list[StageEvent]:
    """Every occurrence of every stage in `text`, in order of appearance.

    SHELL is left out unless asked for: a bare ``# `` is too common in other text to find it blind.
    """
    wanted = set(stages) if stages is not None else set(Stage) - {Stage.SHELL}
    events: list[StageEvent] = []
    for stage in wanted:
        for m in _COMPILED_IN_TRANSCRIPT[stage].finditer(text):
            events.append(StageEvent(stage, m.start(), m.group(0).strip("\r\n"), _value(m)))
    events.sort(key=lambda e: (e.offset, list(Stage).index(e.stage)))
    return events


def stage_sequence(text: str) -> list[Stage]:
    """Stages in order, consecutive repeats collapsed (a compact summary of a boot)."""
    out: list[Stage] = []
    for e in recognise(text):
        if not out or out[-1] != e.stage:
            out.append(e.stage)
    return out


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_stage(text: str) -> StageEvent | None:
    """The last recognisable stage in `text` (None if nothing is recognisable)."""
    events = recognise(text)
    return events[-1] if events else None


def kernel_silent_after_grub(text: str) -> bool:
    """GRUB printed its hand-over and nothing visible came after it (the kernel never spoke)."""
    last = last_stage(text)
    if last is None or last.stage != Stage.GRUB:
        return False
    after = _ANSI.sub("", text[last.offset + len(last.text) :])
    return not after.strip()


def describe_timeout(
    text: str,
    seconds: float,
    waiting_for: str,
    log_tail: str | None = None,
    *,
    closed: str | None = None,
    guest=None,
    handover_at: float | None = None,
) -> str:
    """One message for a stage wait that ran out (or whose console `closed`, with the reason): the last
    stage seen, or, when GRUB handed over to a kernel that never spoke, what QEMU, the ISO record and the
    kernel file say about why (`harness.freebsd.handover.explain_silence`)."""
    if kernel_silent_after_grub(text):
        from harness.freebsd.handover import explain_silence

        grub_boots = len(re.findall(r"come to GRUB!|GNU GRUB +version", text))
        return explain_silence(
            waiting_for=waiting_for,
            seconds=seconds,
            guest=guest,
            handover_at=handover_at,
            closed=closed,
            log=log_tail if guest is None else None,
            grub_boots=max(grub_boots, 1),
        )
    last = last_stage(text)
    seen = f"{last.stage.value} ({last.text.strip()[:100]!r})" if last else "nothing recognisable"
    end = f"before the console closed ({closed})" if closed else f"within {seconds:.0f} s"
    msg = f"no {waiting_for} {end}; last stage seen: {seen}"
    if log_tail:
        msg += "\n--- QEMU log tail ---\n" + log_tail.rstrip()
    return msg


#: Boot milestones `wait_for_stage` notes on the way to a later boot stage (progress, hand-over time).
BOOT_MILESTONES = (Stage.FIRMWARE, Stage.GRUB, Stage.LOADER, Stage.KERNEL)
_BOOT_ORDER = list(Stage)
_BOOT_TARGETS = frozenset(
    {
        Stage.LOADER,
        Stage.LOADER_MENU,
        Stage.LOADER_COUNTDOWN,
        Stage.LOADER_PROMPT,
        Stage.KERNEL,
        Stage.ROOT_WAIT,
        Stage.MOUNTROOT_PROMPT,
        Stage.SINGLE_USER,
        Stage.RC,
        Stage.LOGIN,
    }
)


def _milestones_before(targets: list[Stage]) -> list[Stage]:
    """The milestones worth noting while waiting for `targets` (only for waits on a boot stage)."""
    boot = [t for t in targets if t in _BOOT_TARGETS]
    if not boot:
        return []
    last = max(_BOOT_ORDER.index(t) for t in boot)
    return [m for m in BOOT_MILESTONES if m not in targets and _BOOT_ORDER.index(m) < last]


def wait_for_stage(
    console,
    targets: Iterable[Stage],
    deadline: Deadline | float,
    *,
    patterns: Mapping[Stage, str] | None = None,
    allow_panic: bool = False,
    guest=None,
    progress: Callable[[str], None] | None = None,
) -> StageEvent:
    """Wait on `console` until one of `targets` appears; a panic ends the wait with `GuestPanicked`, a
    firmware / GRUB / loader(8) failure with `BootFailed`.

    `patterns` overrides the regex of a stage (e.g. a SHELL prompt we set ourselves). With
    `allow_panic` (used when a panic is what we want, as a ddb trigger), PANIC may be a target and the
    panic failure patterns are not armed. Running out of time raises `StageTimeout` (a
    `ConsoleTimeout`) naming the last stage seen; with `guest`, its QEMU log tail is added. While waiting
    for a boot stage, the boot milestones on the way (firmware, GRUB, loader, kernel) are noted and, with
    `progress`, reported with the seconds since the wait began.
    """
    from harness.vm.console import ConsoleFailure

    targets = list(targets)
    if not targets:
        raise ValueError("wait_for_stage needs at least one target stage")
    deadline = as_deadline(deadline, "wait for " + "/".join(t.value for t in targets))
    regexes = {t.value: (patterns or {}).get(t, STAGE_PATTERNS[t]) for t in targets}
    milestones = _milestones_before(targets)
    watch = dict(regexes)
    watch.update({f"milestone:{m.value}": STAGE_PATTERNS[m] for m in milestones})
    armed = list(BOOT_FAILURE_PATTERNS) if allow_panic else list(FAILURE_PATTERNS)
    for name in armed:
        console.arm_failure(name, FAILURE_PATTERNS[name])
    started = time.monotonic()
    reached: dict[Stage, float] = {}
    handover_at: float | None = None
    waiting = "/".join(t.value for t in targets)
    try:
        while True:
            m = console.expect(watch, deadline)
            if not m.name.startswith("milestone:"):
                break
            stage = Stage(m.name.split(":", 1)[1])
            now = time.monotonic()
            if stage == Stage.GRUB:
                handover_at = now  # the last GRUB line before silence is the hand-over
            if stage not in reached:
                reached[stage] = now
                if progress is not None:
                    progress(f"boot: {stage.value} after {now - started:.1f}s")
    except (StageTimeout, StageConsoleClosed):
        raise
    except (ConsoleTimeout, ConsoleClosed) as exc:
        text = console.tail(TAIL_WINDOW)
        log = None
        if guest is not None and hasattr(guest, "log_tail"):
            try:
                log = guest.log_tail()
            except Exception as log_exc:  # noqa: BLE001 - evidence only, never hide the timeout
                log = f"(QEMU log unavailable: {log_exc})"
        last = last_stage(text)
        closed = None
        if isinstance(exc, ConsoleClosed):
            closed = str(getattr(console, "closed_reason", None) or "end of file")
        message = describe_timeout(
            text, deadline.elapsed(), waiting, log, closed=closed, guest=guest, handover_at=handover_at
        )
        if closed is not None:
            raise StageConsoleClosed(message, last_stage=last.stage if last else None, cause=exc) from exc
        raise StageTimeout(message, last_stage=last.stage if last else None, cause=exc) from exc
    except ConsoleFailure as exc:
        raise failure_error(exc, waiting, seconds=time.monotonic() - started) from exc
    finally:
        for name in armed:
            console.disarm(name)
    stage = Stage(m.name)
    if progress is not None:
        progress(f"boot: {stage.value} after {time.monotonic() - started:.1f}s")
    return StageEvent(stage, -1, m.match.group(0).strip("\r\n"), _value(m.match))
