"""The dump flow for kernels without ddb: panic -> the kernel's own dump -> hold it at "Press a key".

Why: release GENERIC kernels carry ``options KDB`` (for panic backtraces) but no ddb backend, so there is
no ``db>`` to stop at and no ``dump`` command. What such a kernel still does, all in
``sys/kern/kern_shutdown.c``:

1. ``vpanic()`` prints ``panic: <msg>``, ``cpuid = N``, ``time = T``, a ``KDB: stack backtrace:``, stops
   the other CPUs (``stop_cpus_hard``) and calls ``kern_reboot(RB_AUTOBOOT | RB_DUMP)``;
2. ``kern_reboot()`` prints ``Uptime: ...`` and ``doadump(TRUE)`` writes the dump to the configured dump
   device (``dumpdev`` from the kernel environment works before rc runs) with the same console text as
   ddb's ``dump`` (``Dumping N out of M MB:..x%`` / ``Dumping N MB (K chunks)``, ``Dump complete``);
   with no dump device nothing is printed at all;
3. ``shutdown_panic()`` prints ``Automatic reboot in N seconds - press a key on the console to abort``
   (``kern.panic_reboot_wait_time``, 15 by default; -1 skips the countdown, 0 reboots at once) and polls
   the console; after a key it prints ``--> Press a key on the console to reboot,`` / ``--> or switch
   off the system now.`` and waits in ``cngetc()`` for ever. That is where we hold it: memory is quiet,
   the other CPUs are stopped, the host can take the live image and read the dump disk.

Which triggers can panic such a kernel (facts, not hopes):

* ``sysctl debug.kdb.panic=1`` (a shell): ``panic("kdb_sysctl_panic")`` — no backend needed;
* ALT break *panic* sequence CR ``~`` Ctrl-P on the console: ``kdb_alt_break_internal()`` calls
  ``kdb_panic("Panic sequence on console")`` (prints ``KDB: panic``) — needs only
  ``debug.kdb.alt_break_to_debugger=1`` (a tunable: put it in the kernel environment) (``subr_kdb.c``);
* an empty answer at the interactive ``mountroot>`` prompt: ``panic("mountroot: unable to (re-)mount
  root.")`` (``sys/kern/vfs_mountroot.c``);
* NOT an NMI: ``nmi_call_kdb()`` (``sys/x86/x86/cpu_machdep.c``, 12.x-14.x) prints ``NMI/cpuN ... going
  to debugger`` and calls ``kdb_trap()``, which returns at once without a backend;
  ``machdep.panic_on_nmi`` only covers NMIs the chipset flags as hardware failures. We still try it
  briefly (a newer kernel may panic on unclaimed NMIs) and then fall back, saying so.
* NOT ``sysctl debug.kdb.enter=1``, a serial BREAK or CR ``~`` Ctrl-B: all end in ``kdb_enter()``, which
  does nothing without a backend.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field

from harness.freebsd.ddb import (
    DUMP_HANG_SECONDS,
    DUMP_STALL_SECONDS,
    PROMPT,
    Ddb,
    DumpFailed,
    DumpResult,
    NoProgress,
    Witness,
    describe_progress,
    dump_deadline_seconds,
    expect_while_printing,
    parse_dump_output,
)
from harness.freebsd.enter import ALT_BREAK_CHAR_DELAY, DdbRoute
from harness.freebsd.kernel import KernelFacts
from harness.freebsd.stages import STAGE_PATTERNS, FreeBSDStageError, Stage
from harness.util.deadline import Deadline, as_deadline

ALT_PANIC_SEQUENCE = "\r~\x10"  # CR ~ Ctrl-P (subr_kdb.c kdb_alt_break_state: KDB_REQ_PANIC)
KEY = "\r"  # any key aborts the countdown / is read by cngetc(); CR is harmless everywhere

#: Kernel environment for the panic flow on a bare kernel (GRUB ``kFreeBSD.*``): the ALT panic sequence
#: must be enabled at boot (no shell to set it later), and -1 makes the kernel skip the 15 s countdown
#: and wait for a key at once, so a slow host can never miss the window.
PANIC_FLOW_KENV = {"debug.kdb.alt_break_to_debugger": "1", "kern.panic_reboot_wait_time": "-1"}

PANIC_SECONDS = 60.0  # trigger -> "panic:" (observed ~1 s under TCG: the panic route reached db> in 1 s)
#: How long an NMI gets to panic a kernel without backend before the fallback, if the kernel does not
#: say first that it ignored it ("NMI/cpuN ... going to debugger": kdb_trap() returned at once, so no
#: panic follows and the fallback starts right away). The NMI is delivered and printed in well under a
#: second even under TCG; the boot banner already said there is no backend, so this is a short check.
NMI_PROBE_SECONDS = 2.0
#: After "going to debugger" a kernel whose kdb_trap() found no backend may still panic on the unclaimed
#: NMI (machdep.panic_on_nmi), right after that line. The fallback's keys must not reach a kernel that is
#: already panicking: they would answer its "Press a key on the console to reboot" after its own dump.
NMI_PANIC_GRACE_SECONDS = 1.0
KEY_WINDOW_SECONDS = 60.0  # key sent -> "--> Press a key on the console to reboot"

_COUNTDOWN = r"Automatic reboot in (-?\d+) seconds - press a key on the console to abort"
_NMI_IGNORED = r"NMI/cpu\d+ \.\.\. going to debugger"
_UPTIME = re.compile(r"Uptime: ((?:\d+d)?(?:\d+h)?(?:\d+m)?\d+s)")


class DumpFlow(enum.StrEnum):
    DDB = "ddb"  # stop in ddb, `dump` there, kernel stays in ddb
    PANIC = "panic"  # panic, the kernel dumps by itself, held at "Press a key on the console to reboot"


class PanicMethod(enum.StrEnum):
    SYSCTL_PANIC = "sysctl_panic"  # shell: sysctl debug.kdb.panic=1
    ALT_PANIC = "alt_panic"  # console: CR ~ Ctrl-P
    MOUNTROOT_EMPTY = "mountroot_empty"  # console: empty line at mountroot>
    NMI = "nmi"  # hypervisor NMI (only panics kernels that panic on unclaimed NMIs)


class PanicDumpError(DumpFailed):
    """The panic flow did not end with a complete dump and a held kernel; `result` has what was parsed."""


@dataclass(frozen=True)
class FlowChoice:
    """Which dump flow to use for this kernel and trigger, and why (one line each)."""

    flow: DumpFlow
    trigger: DdbRoute
    method: PanicMethod | None = None  # panic flow: how to panic
    fallback: PanicMethod | None = None  # panic flow: if `method` (an NMI) does not panic
    why: str = ""
    cannot: list[str] = field(default_factory=list)  # routes that cannot work here, one line each
    needs: list[str] = field(default_factory=list)  # preconditions we could not check

    def describe(self) -> str:
        lines = [f"dump flow: {self.flow.value} ({self.why})"]
        lines += [f"cannot work: {c}" for c in self.cannot]
        lines += [f"needs: {n}" for n in self.needs]
        return "\n".join(lines)


_NO_BACKEND_ROUTE = {
    DdbRoute.NMI: "an NMI only reaches kdb_trap(), which returns at once without a debugger backend "
    "(sys/x86/x86/cpu_machdep.c nmi_call_kdb; machdep.panic_on_nmi covers hardware-failure NMIs only)",
    DdbRoute.BREAK: "a serial BREAK ends in kdb_enter(), which does nothing without a debugger backend",
    DdbRoute.SYSCTL: "sysctl debug.kdb.enter=1 ends in kdb_enter(), which does nothing without a debugger "
    "backend",
}


def choose_flow(
    facts: KernelFacts,
    trigger: DdbRoute | str,
    *,
    has_shell: bool,
    state: Stage | None = None,
    alt_break_enabled: bool | None = None,
    force: DumpFlow | str | None = None,
) -> FlowChoice:
    """Pick the dump flow for `facts` (from the boot banner) and the requested `trigger`.

    ddb present (or unknown: the banner was not seen) -> the ddb flow with `trigger`. No ddb -> the panic
    flow, with the panic method that works for `trigger` in this state; routes that cannot work on this
    kernel are named in `cannot` (one line each) before anything is tried. `alt_break_enabled`: whether
    ``debug.kdb.alt_break_to_debugger=1`` is known to be set (kenv/sysctl); None = unknown.
    """
    trigger = DdbRoute(trigger)
    force = DumpFlow(force) if force is not None else None
    has_ddb = facts.has_ddb
    if force == DumpFlow.DDB or (force is None and has_ddb is not False):
        why = (
            "the kernel has the ddb backend"
            if has_ddb
            else "debugger backends unknown (boot banner not "
            "seen); assuming ddb, enter_ddb fails clearly if it is missing"
        )
        cannot = []
        if has_ddb is False:
            cannot.append("the ddb flow was forced but the kernel printed no ddb backend at boot")
        return FlowChoice(
            DumpFlow.DDB, trigger, why=f"{why}: enter ddb via {trigger.value}, then `dump`", cannot=cannot
        )

    reason = "no ddb backend" if has_ddb is False else "panic flow requested"
    method, fallback, cannot = _panic_method(has_ddb, trigger, has_shell=has_shell, state=state)
    needs = _alt_panic_needs((method, fallback), has_shell=has_shell, alt_break_enabled=alt_break_enabled)
    return FlowChoice(
        DumpFlow.PANIC,
        trigger,
        method=method,
        fallback=fallback,
        why=f"{reason}: panic via {method.value}, the kernel writes its own dump, then we hold it at "
        "'Press a key on the console to reboot'",
        cannot=cannot,
        needs=needs,
    )


def _panic_method(
    has_ddb: bool | None, trigger: DdbRoute, *, has_shell: bool, state: Stage | None
) -> tuple[PanicMethod, PanicMethod | None, list[str]]:
    """How to panic for `trigger` in this state: (method, fallback, routes that cannot work, one line
    each)."""
    cannot: list[str] = []
    fallback: PanicMethod | None = None
    console_panic = PanicMethod.MOUNTROOT_EMPTY if state == Stage.MOUNTROOT_PROMPT else PanicMethod.ALT_PANIC
    if has_ddb is not False and trigger in (DdbRoute.NMI, DdbRoute.BREAK, DdbRoute.SYSCTL):
        # With ddb these routes stop in ddb without any panic: nothing would dump by itself.
        method = PanicMethod.SYSCTL_PANIC if has_shell else console_panic
        cannot.append(
            f"route {trigger.value}: on a kernel with ddb it enters ddb without a panic; using {method.value}"
        )
    elif trigger in (DdbRoute.PANIC, DdbRoute.SYSCTL) and has_shell:
        method = PanicMethod.SYSCTL_PANIC
        if trigger == DdbRoute.SYSCTL and has_ddb is False:
            cannot.append(
                f"route sysctl: {_NO_BACKEND_ROUTE[DdbRoute.SYSCTL]}; using sysctl debug.kdb.panic=1"
            )
    elif trigger == DdbRoute.NMI:
        method = PanicMethod.NMI
        fallback = PanicMethod.SYSCTL_PANIC if has_shell else console_panic
        if has_ddb is False:
            cannot.append(
                f"route nmi: {_NO_BACKEND_ROUTE[DdbRoute.NMI]}; trying it for {NMI_PROBE_SECONDS:g} s, then "
                f"{fallback.value}"
            )
    else:
        method = PanicMethod.SYSCTL_PANIC if has_shell and trigger == DdbRoute.BREAK else console_panic
        if trigger in _NO_BACKEND_ROUTE and has_ddb is False:
            cannot.append(f"route {trigger.value}: {_NO_BACKEND_ROUTE[trigger]}; using {method.value}")
        elif trigger == DdbRoute.ALT_BREAK and method == PanicMethod.ALT_PANIC:
            pass  # CR ~ Ctrl-P instead of Ctrl-B: same knob, panics instead of entering the debugger
        elif trigger == DdbRoute.ALT_BREAK and method == PanicMethod.MOUNTROOT_EMPTY:
            cannot.append("route alt_break at mountroot>: the prompt reads the CR; answering it empty panics")
    return method, fallback, cannot


def _alt_panic_needs(
    methods: tuple[PanicMethod | None, ...], *, has_shell: bool, alt_break_enabled: bool | None
) -> list[str]:
    """The ALT panic sequence without a shell needs ``debug.kdb.alt_break_to_debugger=1`` at boot:
    refuse when it is known to be off, say so when it cannot be checked."""
    needs: list[str] = []
    for m in methods:
        if m == PanicMethod.ALT_PANIC and not has_shell:
            if alt_break_enabled is False:
                raise FreeBSDStageError(
                    "the panic flow needs the ALT panic sequence (CR ~ Ctrl-P) on a kernel without ddb and "
                    "without a shell, but debug.kdb.alt_break_to_debugger is not 1: boot with "
                    "kenv debug.kdb.alt_break_to_debugger=1"
                )
            if alt_break_enabled is None:
                needs.append(
                    "debug.kdb.alt_break_to_debugger=1 in the kernel environment (not checkable "
                    "without a shell) for CR ~ Ctrl-P"
                )
    return needs


def select_flow(
    console,
    trigger: DdbRoute | str,
    *,
    shell=None,
    kenv: dict[str, str] | None = None,
    force: DumpFlow | str | None = None,
    facts: KernelFacts | None = None,
) -> FlowChoice:
    """`choose_flow` with the facts read from `console` (boot banner, current stage; or `facts` if
    given), and whether the ALT sequences are enabled from `kenv` (what the kernel was booted with) or
    else the `shell`."""
    from harness.freebsd.enter import current_stage
    from harness.freebsd.kernel import kernel_facts
    from harness.freebsd.stages import TAIL_WINDOW

    alt: bool | None = None
    if kenv and kenv.get("debug.kdb.alt_break_to_debugger") is not None:
        alt = kenv["debug.kdb.alt_break_to_debugger"].strip() not in ("0", "")
    elif shell is not None:
        r = shell.run("sysctl -n debug.kdb.alt_break_to_debugger")
        alt = r.output.strip() == "1" if r.status == 0 else None
    return choose_flow(
        facts if facts is not None else kernel_facts(console.tail(TAIL_WINDOW)),
        trigger,
        has_shell=shell is not None,
        state=current_stage(console),
        alt_break_enabled=alt,
        force=force,
    )


# ----------------------------------------------------------------------------- running it
def _fire(method: PanicMethod, console, *, guest=None, shell=None) -> None:
    if method == PanicMethod.SYSCTL_PANIC:
        if shell is None:
            raise FreeBSDStageError("sysctl debug.kdb.panic=1 needs a root shell")
        shell.start("sysctl debug.kdb.panic=1")
    elif method == PanicMethod.ALT_PANIC:
        console.send(ALT_PANIC_SEQUENCE, char_delay=ALT_BREAK_CHAR_DELAY)
    elif method == PanicMethod.MOUNTROOT_EMPTY:
        console.sendline("")
    elif method == PanicMethod.NMI:
        if guest is None:
            raise FreeBSDStageError("an NMI needs the Guest (libvirt) to inject it")
        guest.inject_nmi()


def _text(*parts: str) -> str:
    return "".join(parts)


def panic_dump(
    console,
    choice: FlowChoice,
    *,
    guest=None,
    shell=None,
    memory_mib: int | None = None,
    deadline: Deadline | float | None = None,
    hold: bool = True,
    panic_seconds: float = PANIC_SECONDS,
    nmi_probe_seconds: float = NMI_PROBE_SECONDS,
    stall_seconds: float = DUMP_STALL_SECONDS,
    check: bool = True,
    witness: Witness | None = None,
    hang_seconds: float = DUMP_HANG_SECONDS,
) -> DumpResult:
    """Panic the kernel by `choice.method`, parse the dump it writes by itself and (with `hold`) press a
    key to abort the automatic reboot, so the guest stays at "Press a key on the console to reboot" with
    the other CPUs stopped. Returns the parsed `DumpResult` (``flow="panic"``, ``held``, ``panic``,
    ``uptime``). A kernel with ddb that stops at ``db>`` on the way is continued (``c``).

    Every wait is bounded: `panic_seconds` from the trigger to ``panic:``, `deadline` (default: the
    size-based dump deadline) for the dump, `stall_seconds` of console silence (with a `witness` of the
    dump disk's writes: `hang_seconds` without output or writes), `KEY_WINDOW_SECONDS` for
    the key press. Anything but a complete dump raises `PanicDumpError` (after the key press, so the guest
    is still there for evidence) unless `check` is False.
    """
    if choice.flow != DumpFlow.PANIC or choice.method is None:
        raise ValueError(f"panic_dump needs a panic-flow choice, got {choice.flow.value}")
    total = as_deadline(
        dump_deadline_seconds(memory_mib) + panic_seconds if deadline is None else deadline, "panic dump"
    )
    run = _PanicRun(console, choice, total, guest=guest, shell=shell, memory_mib=memory_mib)
    console.discard_pending()  # older text (e.g. a replayed msgbuf) must not count as this panic
    armed = list(getattr(console, "armed", {}) or {})
    suspended = console.suspended(*armed) if armed and hasattr(console, "suspended") else None
    with suspended if suspended is not None else _nothing():
        run.trigger(panic_seconds, nmi_probe_seconds)
        end = run.await_own_dump(stall_seconds, witness, hang_seconds)
        held = run.leave_countdown(end) if end.name == "countdown" and not hold else run.hold(end)

    result = run.result(held=held)
    if check and not result.ok:
        why = result.error or "no dump was written before the reboot countdown (no dump device: dumpdev?)"
        raise PanicDumpError(f"automatic dump after panic failed: {why}", result, tail=console.tail())
    return result


class _PanicRun:
    """One panic flow on a console: the phases of `panic_dump` and what they collected so far."""

    def __init__(self, console, choice: FlowChoice, total: Deadline, *, guest, shell, memory_mib) -> None:
        self.console, self.choice, self.total = console, choice, total
        self.guest, self.shell, self.memory_mib = guest, shell, memory_mib
        self.started = time.monotonic()
        self.method: PanicMethod = choice.method
        self.notes: list[str] = [choice.describe()]
        self.collected: list[str] = []
        self.panic_msg: str | None = None
        self.ends = {
            "countdown": _COUNTDOWN,
            "held": STAGE_PATTERNS[Stage.REBOOT_WAIT],
            "rebooting": r"Rebooting\.\.\.|cpu_reset: Stopping other CPUs",
            "firmware": STAGE_PATTERNS[Stage.FIRMWARE],
            "db": PROMPT,
        }

    def result(self, *, held: bool, partial: str = "") -> DumpResult:
        return _result(_text(*self.collected, partial), self.started, self.panic_msg, self.notes, held=held)

    def fail(self, message: str, exc: Exception | None = None) -> PanicDumpError:
        console = self.console
        result = self.result(held=False, partial=console.pending() if hasattr(console, "pending") else "")
        return PanicDumpError(
            f"{message}; last progress: {describe_progress(result)}",
            result,
            tail=getattr(exc, "tail", "") or console.tail(),
        )

    # 1. trigger -> panic
    def trigger(self, panic_seconds: float, nmi_probe_seconds: float) -> None:
        from harness.vm.console import ConsoleClosed, ConsoleTimeout

        self.method = self.choice.method
        _fire(self.method, self.console, guest=self.guest, shell=self.shell)
        panicked = {"panic": STAGE_PATTERNS[Stage.PANIC], "db": PROMPT}
        try:
            if self.method == PanicMethod.NMI:
                m = self._nmi_or_fallback(panicked, panic_seconds, nmi_probe_seconds)
            else:
                m = self.console.expect(panicked, self._budget(panic_seconds))
        except (ConsoleTimeout, ConsoleClosed) as exc:
            method = self.method
            hint = ""
            if method == PanicMethod.ALT_PANIC:
                hint = " (is debug.kdb.alt_break_to_debugger=1 in the kernel environment?)"
            raise self.fail(f"{method.value} did not panic the kernel{hint}", exc) from exc
        self.collected.append(m.text)
        if m.name == "panic":
            self.panic_msg = m.match.group(1).strip()
        self.notes.append(f"panicked via {self.method.value}: {self.panic_msg or '(ddb prompt first)'}")

    def _nmi_or_fallback(self, panicked: dict, panic_seconds: float, nmi_probe_seconds: float):
        """An NMI panics only kernels that panic on unclaimed NMIs: give it `nmi_probe_seconds`, or, when
        the kernel says it went on ("going to debugger" without a backend returns at once), a short grace
        for the panic that may follow; then the fallback method (`self.method` says which one is in play).
        Returns the match."""
        from harness.vm.console import ConsoleTimeout

        probe = self.total.sub(nmi_probe_seconds, "NMI -> panic")
        try:
            m = self.console.expect({**panicked, "ignored": _NMI_IGNORED}, probe)
            if m.name != "ignored":
                return m
            self.collected.append(m.text)
            grace = self.total.sub(min(NMI_PANIC_GRACE_SECONDS, nmi_probe_seconds), "NMI ignored -> panic")
            try:
                return self.console.expect(panicked, grace)
            except ConsoleTimeout:
                pass
            self.notes.append(
                "NMI did not panic the kernel: it printed 'going to debugger' and went on at once (no "
                "debugger backend, as its boot banner said)"
            )
        except ConsoleTimeout:
            ignored = re.search(_NMI_IGNORED, self.console.pending())
            self.notes.append(
                f"NMI did not panic the kernel within {nmi_probe_seconds:g} s"
                + (" (it printed 'going to debugger' and went on: no backend)" if ignored else "")
            )
        if self.choice.fallback is None:
            raise self.fail("the NMI did not panic the kernel and there is no fallback")
        self.method = self.choice.fallback
        self.notes.append(f"falling back to {self.method.value}")
        self.console.discard_pending()
        _fire(self.method, self.console, guest=self.guest, shell=self.shell)
        return self.console.expect(panicked, self._budget(panic_seconds))

    def _budget(self, panic_seconds: float) -> Deadline:
        return self.total.sub(panic_seconds, f"{self.method.value} -> panic")

    # 2. the kernel's own dump, up to the reboot countdown / the held state
    def await_own_dump(
        self, stall_seconds: float, witness: Witness | None = None, hang_seconds: float = DUMP_HANG_SECONDS
    ):
        from harness.vm.console import ConsoleClosed, ConsoleTimeout

        continued = 0
        while True:
            try:
                m = expect_while_printing(
                    self.console, self.ends, self.total, stall_seconds, "automatic dump after panic",
                    witness=witness, hang_seconds=hang_seconds,
                )
            except (ConsoleTimeout, ConsoleClosed, NoProgress) as exc:
                why = (
                    f"the guest hung: {exc}"
                    if isinstance(exc, NoProgress)
                    else f"no console output for {stall_seconds:g} s"
                    if isinstance(exc, ConsoleTimeout) and not self.total.expired()
                    else f"not within {self.total.seconds:g} s"
                    if isinstance(exc, ConsoleTimeout)
                    else "the console closed"
                )
                raise self.fail(f"no reboot countdown after the panic ({why})", exc) from exc
            self.collected.append(m.text)
            if m.name != "db":
                break
            # A kernel with ddb stops in ddb on the panic (debug.debugger_on_panic=1): continue.
            if continued >= 2:
                raise self.fail("the kernel keeps stopping in ddb after the panic")
            continued += 1
            self._continue_from_ddb()
        if m.name in ("rebooting", "firmware"):
            self._rebooted()
        return m

    def _continue_from_ddb(self) -> None:
        self.notes.append("the kernel stopped in ddb on the panic; continuing (c) so it dumps by itself")
        ddb = Ddb(self.console, memory_mib=self.memory_mib)
        ddb._pager_off = True  # nothing to page: `c` prints no output
        ddb.continue_()
        if self.panic_msg is None:
            pm = re.search(STAGE_PATTERNS[Stage.PANIC], _text(*self.collected))
            self.panic_msg = pm.group(1).strip() if pm else None

    def _rebooted(self) -> None:
        result = self.result(held=False)
        if result.ok:
            raise PanicDumpError(
                "the dump completed but the kernel rebooted at once (kern.panic_reboot_wait_time=0?): "
                "the dump disk is usable, live memory is gone; boot with kern.panic_reboot_wait_time=-1",
                result,
                tail=self.console.tail(),
            )
        raise self.fail("the kernel rebooted without writing a dump")

    # 3. hold the kernel at "Press a key on the console to reboot"
    def hold(self, end) -> bool:
        from harness.vm.console import ConsoleClosed, ConsoleTimeout

        if end.name == "held":
            return True
        seconds = int(end.match.group(1))
        self.console.send(KEY)
        self.notes.append(f"pressed a key during the {seconds} s reboot countdown")
        try:
            after_key = {k: self.ends[k] for k in ("held", "rebooting", "firmware")}
            k = self.console.expect(
                after_key,
                self.total.sub(max(KEY_WINDOW_SECONDS, seconds + 10.0), "key press -> held"),
            )
        except (ConsoleTimeout, ConsoleClosed) as exc:
            raise self.fail("no '--> Press a key on the console to reboot' after our key press", exc) from exc
        self.collected.append(k.text)
        if k.name != "held":
            raise self.fail(
                f"the kernel rebooted before our key press aborted the {seconds} s countdown; boot "
                "with kenv kern.panic_reboot_wait_time=-1 so it waits for a key at once"
            )
        return True

    def leave_countdown(self, end) -> bool:
        self.notes.append(f"not holding: the kernel reboots in {int(end.match.group(1))} s")
        return False


def _result(text: str, started: float, panic_msg: str | None, notes: list[str], *, held: bool) -> DumpResult:
    result = parse_dump_output(text, time.monotonic() - started)
    result.flow = "panic"
    result.panic = panic_msg
    up = _UPTIME.search(text)
    result.uptime = up.group(1) if up else None
    result.held = held
    result.notes = list(notes)
    return result


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
