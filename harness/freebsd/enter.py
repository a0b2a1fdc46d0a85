"""Getting a FreeBSD kernel into ddb, by each route a kernel developer uses.

| route      | how                                   | needs                                              |
|------------|---------------------------------------|----------------------------------------------------|
| sysctl     | ``sysctl debug.kdb.enter=1`` (shell)  | a root shell; securelevel <= 0                     |
| panic      | ``sysctl debug.kdb.panic=1`` (shell)  | a root shell; ``debug.debugger_on_panic=1``        |
| nmi        | `Guest.inject_nmi()` (libvirt/QEMU)   | ``machdep.kdb_on_nmi=1`` (default)                 |
| break      | `Guest.send_break()` (serial BREAK)   | ``debug.kdb.break_to_debugger=1``                  |
| alt_break  | CR ``~`` Ctrl-B typed on the console  | ``debug.kdb.alt_break_to_debugger=1``              |

When a route is unreliable (observed on FreeBSD 12.1 under QEMU TCG, see the transcripts README): while
the kernel sits at the interactive ``mountroot>`` prompt it polls the console with the uart spin lock
held. An NMI then reached ddb only 3 of 6 times, and the CR of the ALT break is eaten by the prompt (an
empty line, so the kernel panics instead). `enter_ddb` looks at the console first: at ``mountroot>`` it
refuses ALT break with `MountrootPromptError` (it would panic the kernel), retries an NMI a bounded number
of times (saying so in the result and in the error), and never waits without a deadline.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import dataclass, field

from harness.freebsd.ddb import PROMPT, Ddb
from harness.freebsd.kernel import kernel_facts
from harness.freebsd.stages import (
    STAGE_PATTERNS,
    TAIL_WINDOW,
    FreeBSDStageError,
    Stage,
    last_stage,
    recognise,
)
from harness.util.deadline import Deadline, as_deadline


class DdbRoute(enum.StrEnum):
    SYSCTL = "sysctl"
    PANIC = "panic"
    NMI = "nmi"
    BREAK = "break"
    ALT_BREAK = "alt_break"


@dataclass(frozen=True)
class RouteInfo:
    route: DdbRoute
    needs_shell: bool
    needs_guest: bool
    knob: str | None  # sysctl that must be 1 for the route to work
    entry_text: str  # what the kernel prints on the way in
    unreliable: str  # when it is known not to work


ROUTES: dict[DdbRoute, RouteInfo] = {
    DdbRoute.SYSCTL: RouteInfo(
        DdbRoute.SYSCTL,
        True,
        False,
        None,
        "KDB: enter: sysctl debug.kdb.enter",
        "needs a root shell and securelevel <= 0 (CTLFLAG_SECURE)",
    ),
    DdbRoute.PANIC: RouteInfo(
        DdbRoute.PANIC,
        True,
        False,
        "debug.debugger_on_panic",
        "panic: kdb_sysctl_panic",
        "kernels built with KDB_UNATTENDED reboot instead of entering ddb",
    ),
    DdbRoute.NMI: RouteInfo(
        DdbRoute.NMI,
        False,
        True,
        "machdep.kdb_on_nmi",
        "NMI/cpuN ... going to debugger",
        "at the interactive mountroot> prompt only 3 of 6 NMIs reached ddb",
    ),
    DdbRoute.BREAK: RouteInfo(
        DdbRoute.BREAK,
        False,
        True,
        "debug.kdb.break_to_debugger",
        "KDB: enter: Break to debugger",
        "needs the knob (or options BREAK_TO_DEBUGGER); not verified at mountroot>",
    ),
    DdbRoute.ALT_BREAK: RouteInfo(
        DdbRoute.ALT_BREAK,
        False,
        False,
        "debug.kdb.alt_break_to_debugger",
        "KDB: enter: Break to debugger",
        "at mountroot> the CR is eaten by the prompt and the kernel panics instead",
    ),
}

ALT_BREAK_SEQUENCE = "\r~\x02"
ALT_BREAK_CHAR_DELAY = 0.1  # the console polls; characters sent back to back can be merged or lost
NMI_ATTEMPT_SECONDS = 5.0  # the transcripts reached db> ~0.05 s after the NMI; TCG on a busy host is slower
DEFAULT_MOUNTROOT_NMI_ATTEMPTS = 4  # 3/6 success each -> ~94 % after four, bounded


class DdbEntryError(FreeBSDStageError):
    """The route could not bring the kernel into ddb (or must not be tried in this state)."""


class NoDdbBackend(DdbEntryError):
    """The kernel has no ddb backend (its boot banner said so): no route can reach ``db>``. Use the
    panic flow instead (`harness.freebsd.panicdump`, `FreeBSDMachine.panic_dump`)."""


class MountrootPromptError(DdbEntryError):
    """The kernel sits at the interactive ``mountroot>`` prompt, where this route is unreliable."""


@dataclass
class DdbEntry:
    """How we got into ddb: the route, the kernel's reason and where it stopped."""

    route: DdbRoute
    ddb: Ddb
    why: str | None  # "KDB: enter: <why>" or "NMI"
    panic: str | None
    pid: int | None
    tid: int | None
    stopped_at: str | None
    attempts: int
    seconds: float
    state_before: Stage | None
    notes: list[str] = field(default_factory=list)
    text: str = ""


def current_stage(console, window: int = 64 * 1024) -> Stage | None:
    """The last stage the console showed (from its tail), e.g. ROOT_WAIT or MOUNTROOT_PROMPT."""
    text = console.tail(window)
    events = recognise(text)
    if not events:
        return None
    last = events[-1]
    # A prompt only counts if nothing but whitespace followed it.
    if last.stage in (Stage.MOUNTROOT_PROMPT, Stage.DDB_PROMPT, Stage.LOGIN, Stage.LOADER_PROMPT):
        after = text[last.offset + len(last.text) :]
        if after.strip():
            return None
    return last.stage


def _last_seen(text: str) -> str:
    last = last_stage(text or "")
    if last is None:
        return "last stage seen: nothing recognisable"
    return f"last stage seen: {last.stage.value} ({last.text.strip()[:80]!r})"


def _parse_entry(text: str) -> dict:
    info: dict = {"why": None, "panic": None, "pid": None, "tid": None, "stopped_at": None}
    for e in recognise(text):
        if e.stage == Stage.DDB_ENTER:
            info["why"] = e.value or "NMI"
        elif e.stage == Stage.PANIC and info["panic"] is None:
            info["panic"] = e.value
        elif e.stage == Stage.DDB_THREAD:
            m = re.search(STAGE_PATTERNS[Stage.DDB_THREAD], e.text)
            info["pid"], info["tid"] = int(m.group(1)), int(m.group(2))
        elif e.stage == Stage.DDB_STOPPED:
            info["stopped_at"] = e.value
    return info


def _check_backend(shell, notes: list[str], console) -> None:
    """With a shell, make sure ddb exists and is the current KDB backend (else a clear error now
    instead of a timeout later: release GENERIC kernels may be built without options DDB)."""
    r = shell.run("sysctl -n debug.kdb.available debug.kdb.current")
    lines = (getattr(r, "output", "") or "").split("\n")
    available, current = (lines + ["", ""])[0].split(), (lines + ["", ""])[1].strip()
    if getattr(r, "status", 0) != 0 or "ddb" not in available:
        raise DdbEntryError(
            f"the guest kernel has no ddb backend (debug.kdb.available: {' '.join(available) or '?'}); "
            "build it with options KDB and DDB",
            tail=console.tail(),
        )
    if current != "ddb":
        shell.run("sysctl debug.kdb.current=ddb", check=True)
        notes.append(f"switched debug.kdb.current from {current or '?'} to ddb")


def _wait_ddb(console, deadline: Deadline) -> str:
    """Wait for ``db> `` with failure patterns suspended (a panic is a way *into* ddb here)."""
    armed = list(getattr(console, "armed", {}) or {})
    with console.suspended(*armed):
        m = console.expect({"db": PROMPT}, deadline)
    return m.text


def enter_ddb(
    console,
    route: DdbRoute | str,
    *,
    guest=None,
    shell=None,
    deadline: Deadline | float = 60.0,
    memory_mib: int | None = None,
    mountroot_nmi_attempts: int = DEFAULT_MOUNTROOT_NMI_ATTEMPTS,
    set_knob: bool = True,
) -> DdbEntry:
    """Bring the kernel into ddb by `route` and return a ready `Ddb` with how it got there.

    `guest` provides ``inject_nmi()`` / ``send_break()`` (a `harness.vm.guest.Guest`), `shell` a root shell
    on the guest with ``run(cmd)`` and ``start(cmd)`` (a `ConsoleShell` or an `SshSession`). With
    `set_knob` and a shell, the sysctl the route needs is set to 1 first.
    """
    route = DdbRoute(route)
    info = ROUTES[route]
    dl = as_deadline(deadline, f"enter ddb via {route.value}")
    state = current_stage(console)
    notes: list[str] = []
    started = time.monotonic()
    _refuse_impossible_route(console, route, state, guest=guest, shell=shell)
    if shell is not None:
        _check_backend(shell, notes, console)
    if set_knob and shell is not None and info.knob and route != DdbRoute.NMI:
        shell.run(f"sysctl {info.knob}=1", check=True)
        notes.append(f"set {info.knob}=1")

    if route in (DdbRoute.SYSCTL, DdbRoute.PANIC, DdbRoute.ALT_BREAK):
        attempts, text = 1, _enter_by_console_or_shell(console, route, dl, shell=shell)
    elif route == DdbRoute.BREAK:
        attempts, text = 1, _enter_by_break(console, guest, dl, state)
    else:
        attempts, text = _enter_by_nmi(console, guest, dl, state, mountroot_nmi_attempts, notes)
    parsed = _parse_entry(text)
    return DdbEntry(
        route=route,
        ddb=Ddb(console, memory_mib=memory_mib),
        attempts=attempts,
        seconds=time.monotonic() - started,
        state_before=state,
        notes=notes,
        text=text,
        **parsed,
    )


def _refuse_impossible_route(console, route: DdbRoute, state: Stage | None, *, guest, shell) -> None:
    """Refuse, before anything is sent, a route that cannot reach ddb here (one line saying why)."""
    info = ROUTES[route]
    if state == Stage.DDB_PROMPT:
        raise DdbEntryError(f"enter ddb via {route.value}: the kernel is already at db>", tail=console.tail())
    facts = kernel_facts(console.tail(TAIL_WINDOW))
    if facts.has_ddb is False:
        raise NoDdbBackend(
            f"route {route.value} cannot reach ddb: {facts.describe()}; use the panic flow "
            "(FreeBSDMachine.panic_dump / harness.freebsd.panicdump), the kernel dumps by itself",
            tail=console.tail(),
        )
    if info.needs_shell and shell is None:
        raise DdbEntryError(
            f"route {route.value} needs a root shell on the guest (console or SSH); "
            f"without one use nmi, break or alt_break",
            tail=console.tail(),
        )
    if info.needs_guest and guest is None:
        raise DdbEntryError(
            f"route {route.value} needs the Guest (libvirt) to inject it", tail=console.tail()
        )
    if state == Stage.MOUNTROOT_PROMPT and route == DdbRoute.ALT_BREAK:
        raise MountrootPromptError(
            "the kernel sits at the interactive mountroot> prompt: the ALT break's CR would be read as an "
            "empty answer and the kernel would panic instead of entering ddb (observed). Use route 'nmi' "
            "(retried, 3 of 6 observed) or boot with vfs.mountroot.timeout so it waits quietly.",
            tail=console.tail(),
        )


def _enter_by_console_or_shell(console, route: DdbRoute, dl: Deadline, *, shell) -> str:
    """The ALT break sequence on the console, or ``sysctl debug.kdb.enter=1`` / ``debug.kdb.panic=1``."""
    from harness.vm.console import ConsoleTimeout

    info = ROUTES[route]
    if route == DdbRoute.ALT_BREAK:
        console.send(ALT_BREAK_SEQUENCE, char_delay=ALT_BREAK_CHAR_DELAY)
    else:
        shell.start("sysctl debug.kdb.enter=1" if route == DdbRoute.SYSCTL else "sysctl debug.kdb.panic=1")
    try:
        return _wait_ddb(console, dl)
    except ConsoleTimeout as exc:
        need = f"{info.knob}=1" if info.knob else "securelevel <= 0 and a kernel with KDB+DDB"
        raise DdbEntryError(
            f"{route.value} did not reach db> within {dl.seconds:g} s (needs {need}; "
            f"{'set/checked through the shell' if shell is not None else 'not checked: no shell'}); "
            f"{_last_seen(exc.tail)}",
            tail=exc.tail,
        ) from exc


def _enter_by_break(console, guest, dl: Deadline, state: Stage | None) -> str:
    from harness.vm.console import ConsoleTimeout

    guest.send_break()
    try:
        return _wait_ddb(
            console, dl if state != Stage.MOUNTROOT_PROMPT else dl.sub(NMI_ATTEMPT_SECONDS * 2, "break")
        )
    except ConsoleTimeout as exc:
        if state == Stage.MOUNTROOT_PROMPT:
            raise MountrootPromptError(
                "serial BREAK did not reach ddb while the kernel sits at the interactive mountroot> "
                "prompt (it polls the console with the uart lock held); use route 'nmi'",
                tail=exc.tail,
            ) from exc
        raise


def _enter_by_nmi(
    console, guest, dl: Deadline, state: Stage | None, mountroot_nmi_attempts: int, notes: list[str]
) -> tuple[int, str]:
    """NMIs until db> (several only at mountroot>, where one is unreliable). Returns (attempts, text)."""
    from harness.vm.console import ConsoleTimeout

    text = ""
    limit = max(1, mountroot_nmi_attempts) if state == Stage.MOUNTROOT_PROMPT else 1
    if limit > 1:
        notes.append(f"kernel at mountroot>: NMI is unreliable there, trying up to {limit} times")
    last_exc: ConsoleTimeout | None = None
    attempts = 0
    for attempts in range(1, limit + 1):  # noqa: B007 - attempts is reported
        guest.inject_nmi()
        per_try = dl if limit == 1 else dl.sub(NMI_ATTEMPT_SECONDS, f"nmi attempt {attempts}")
        try:
            text = _wait_ddb(console, per_try)
            break
        except ConsoleTimeout as exc:
            last_exc = exc
            notes.append(f"NMI attempt {attempts} did not reach db> within {per_try.seconds:g} s")
            if dl.expired():
                break
    else:
        raise MountrootPromptError(
            f"{attempts} NMIs did not reach ddb while the kernel sits at the interactive "
            "mountroot> prompt (observed 3 of 6 there: the prompt polls the console under the "
            "uart spin lock). Boot with vfs.mountroot.timeout to wait quietly, or answer the prompt.",
            tail=last_exc.tail if last_exc else console.tail(),
        )
    if not text:
        error = MountrootPromptError if state == Stage.MOUNTROOT_PROMPT else DdbEntryError
        raise error(
            f"NMI did not reach ddb before the deadline ({'; '.join(notes)}); is machdep.kdb_on_nmi=1 "
            f"and the kernel built with KDB+DDB? {_last_seen(console.tail(TAIL_WINDOW))}",
            tail=last_exc.tail if last_exc else console.tail(),
        )
    return attempts, text


def panic_at_mountroot(
    console, *, deadline: Deadline | float = 60.0, memory_mib: int | None = None
) -> DdbEntry:
    """At the interactive ``mountroot>`` prompt, answer with an empty line: the kernel panics
    ("mountroot: unable to (re-)mount root.") and enters ddb. Reliable there (4 of 4 observed), unlike NMI."""
    dl = as_deadline(deadline, "panic at mountroot>")
    state = current_stage(console)
    if state != Stage.MOUNTROOT_PROMPT:
        raise DdbEntryError(
            f"panic_at_mountroot: the kernel is not at mountroot> (last stage: {state})", tail=console.tail()
        )
    started = time.monotonic()
    console.sendline("")
    text = _wait_ddb(console, dl)
    return DdbEntry(
        route=DdbRoute.PANIC,
        ddb=Ddb(console, memory_mib=memory_mib),
        attempts=1,
        seconds=time.monotonic() - started,
        state_before=state,
        notes=["empty answer at mountroot>"],
        text=text,
        **_parse_entry(text),
    )
