"""`FreeBSDMachine`: one FreeBSD guest driven through the whole chain, boot -> ddb -> dump -> vmcore.

A thin orchestrator over a `harness.vm.guest.Guest` (or anything with the same ``console``,
``inject_nmi()``, ``send_break()``, ``pause()``, ``ssh_port``); each step is one call and can be used
alone, so a test can stop anywhere (e.g. stay in ddb after `dump` to read live memory, then
`retrieve`). API:

    m = FreeBSDMachine(guest, memory_mib=512, dump_disk_image=Path(".../dump.raw"),
                       ssh_key=key, ssh_host_key=pub)          # ssh_* only for SSH / savecore
    m.wait_for(Stage.LOGIN, deadline=600)   # Enter at the loader countdown; ROOT_WAIT for a bare kernel
    shell = m.login()                                          # ConsoleShell (root, empty password)
    m.prepare(plan)                                            # dumpon/sysctls the plan needs
    entry = m.enter_ddb(plan.trigger)                          # DdbEntry; entry.ddb is the Ddb
    result = m.dump(plan)                                      # DumpResult; still in ddb afterwards
    dump = m.retrieve(plan, outdir)                            # RetrievedDump (host or savecore)
    # or all at once:
    entry, result, dump = m.crash_and_retrieve(plan, outdir)

Kernels without ddb (release GENERIC): `m.facts` (read from the boot banner by every `wait_for`) says
so, `m.select_flow(trigger)` picks the panic flow and says why, and

    result = m.panic_dump("alt_break")      # DumpResult(flow="panic", held=True): the kernel dumped by
                                            # itself and waits at "Press a key on the console to reboot"
    dump = m.retrieve(plan, outdir)         # host retrieval as after ddb's dump
    # or: choice, entry, result = m.crash(plan)   (ddb or panic flow, whichever fits the kernel)

Every wait has a deadline; a panic during any non-ddb wait raises `GuestPanicked` with the evidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.freebsd.ddb import Ddb, DumpResult
from harness.freebsd.dumps import GUEST_PUBLIC_KEY, DumpPlan, RetrievalMethod
from harness.freebsd.enter import DdbEntry, DdbRoute, enter_ddb, panic_at_mountroot
from harness.freebsd.kernel import KernelFacts, kernel_facts
from harness.freebsd.panicdump import DumpFlow, FlowChoice, panic_dump, select_flow
from harness.freebsd.retrieve import RetrievedDump, from_dump_disk, via_savecore
from harness.freebsd.session import ConsoleShell
from harness.freebsd.stages import TAIL_WINDOW, FreeBSDStageError, Stage, StageEvent, wait_for_stage
from harness.util.deadline import Deadline, as_deadline


class FreeBSDMachine:
    def __init__(
        self,
        guest,
        *,
        memory_mib: int | None = None,
        dump_disk_image: str | Path | None = None,
        ssh_key: Any = None,
        ssh_host_key: Any = None,
        ssh_host: str = "127.0.0.1",
        public_key: str | Path | None = None,
        private_key: Any = None,
        kenv: dict[str, str] | None = None,
    ) -> None:
        self.guest = guest
        self.console = guest.console
        self.memory_mib = memory_mib
        self.dump_disk_image = Path(dump_disk_image) if dump_disk_image else None
        self.ssh_key, self.ssh_host_key, self.ssh_host = ssh_key, ssh_host_key, ssh_host
        self.public_key = Path(public_key) if public_key else None  # for plans with encrypt=True
        self.private_key = private_key
        self.shell: ConsoleShell | None = None
        #: the shell is a single-user root image's: base tools for dumps only (no grep/awk/sysrc)
        self.minimal_userland = False
        self.entry: DdbEntry | None = None
        self._bounds_before: int | None = None
        self.kenv = dict(kenv or {})  # the kernel environment it was booted with (bare kernel), if known
        self._facts = KernelFacts()
        self.last_dump: DumpResult | None = None

    @property
    def facts(self) -> KernelFacts:
        """What the boot banner said (debugger backends, version), refreshed from the console."""
        self._facts = self._facts.merge(kernel_facts(self.console.tail(TAIL_WINDOW)))
        return self._facts

    # ------------------------------------------------------------ states
    def wait_for(
        self, *stages: Stage, deadline: Deadline | float = 600.0, skip_loader_countdown: bool = True
    ) -> StageEvent:
        """Wait for one of `stages`; on the way, answer the loader's autoboot countdown with Enter
        (saves its ten seconds per boot under TCG) unless asked not to."""
        dl = as_deadline(deadline, "wait for " + "/".join(s.value for s in stages))
        watch = list(stages)
        if skip_loader_countdown and Stage.LOADER_COUNTDOWN not in watch:
            watch.append(Stage.LOADER_COUNTDOWN)
        while True:
            event = wait_for_stage(self.console, watch, dl, guest=self.guest)
            _ = self.facts  # remember the banner before it scrolls out of the console tail
            if event.stage in stages:
                return event
            self.console.sendline("")
            watch.remove(Stage.LOADER_COUNTDOWN)  # once per boot is enough

    def login(self, deadline: Deadline | float = 600.0) -> ConsoleShell:
        self.shell = ConsoleShell(self.console)
        self.shell.login(deadline)
        return self.shell

    def ssh(self):
        from harness.vm.ssh import SshSession

        if self.ssh_key is None or self.ssh_host_key is None:
            raise FreeBSDStageError("SSH needs ssh_key and the guest's pinned ssh_host_key")
        port = getattr(self.guest, "ssh_port", None)
        if not port:
            raise FreeBSDStageError("the guest has no SSH port forward (GuestSpec network)")
        return SshSession(self.ssh_host, port, key=self.ssh_key, pinned_host_key=self.ssh_host_key).connect()

    @property
    def ddb(self) -> Ddb:
        if self.entry is None or not self.entry.ddb.active:
            raise FreeBSDStageError("not in ddb (call enter_ddb first)")
        return self.entry.ddb

    # ------------------------------------------------------------ the chain
    def validate(self, plan: DumpPlan, *, can_set_kenv: bool = False) -> None:
        plan.validate(
            has_shell=self.shell is not None,
            has_guest=True,
            can_set_kenv=can_set_kenv,
            has_ssh=self.ssh_key is not None and bool(getattr(self.guest, "ssh_port", None)),
            memory_mib=self.memory_mib,
            dump_disk_mib=(self.dump_disk_image.stat().st_size >> 20) if self.dump_disk_image else None,
        )
        if plan.retrieval == RetrievalMethod.HOST and self.dump_disk_image is None:
            raise FreeBSDStageError(f"plan {plan.describe()}: host retrieval needs dump_disk_image")
        if plan.encrypt and self.public_key is None:
            raise FreeBSDStageError("an encrypted dump needs public_key (see dumps.make_dump_keypair)")

    def prepare(self, plan: DumpPlan) -> None:
        """Run the plan's guest commands in the console shell (if there is one)."""
        if self.shell is None:
            return
        if plan.encrypt:
            pem = self.public_key.read_text().strip().replace("\n", "\\n")
            self.shell.run(f"printf '{pem}\\n' > {GUEST_PUBLIC_KEY}", check=True)
        for cmd in plan.shell_commands(minimal_userland=self.minimal_userland):
            self.shell.run(cmd, check=True)
        if plan.retrieval == RetrievalMethod.SAVECORE:
            r = self.shell.run("cat /var/crash/bounds 2>/dev/null")
            self._bounds_before = int(r.output.strip()) - 1 if r.output.strip().isdigit() else None

    def enter_ddb(self, route: DdbRoute | str, *, deadline: Deadline | float = 120.0) -> DdbEntry:
        if DdbRoute(route) == DdbRoute.PANIC and self.shell is None:
            self.entry = panic_at_mountroot(self.console, deadline=deadline, memory_mib=self.memory_mib)
        else:
            self.entry = enter_ddb(
                self.console,
                route,
                guest=self.guest,
                shell=self.shell,
                deadline=deadline,
                memory_mib=self.memory_mib,
            )
        return self.entry

    def dump(self, plan: DumpPlan, *, deadline: Deadline | float | None = None) -> DumpResult:
        ddb = self.ddb
        for cmd in plan.ddb_commands():
            ddb.command(cmd)
        self.last_dump = ddb.dump(deadline)
        return self.last_dump

    # ------------------------------------------------------------ kernels without ddb
    def select_flow(self, trigger: DdbRoute | str, *, force: DumpFlow | str | None = None) -> FlowChoice:
        """Which dump flow fits this kernel (ddb, or panic for kernels without ddb) and why."""
        return select_flow(
            self.console, trigger, shell=self.shell, kenv=self.kenv, force=force, facts=self.facts
        )

    def panic_dump(
        self,
        trigger: DdbRoute | str = DdbRoute.ALT_BREAK,
        *,
        choice: FlowChoice | None = None,
        deadline: Deadline | float | None = None,
        hold: bool = True,
    ) -> DumpResult:
        """Panic the kernel, let it write its own dump, abort the automatic reboot (with `hold`): the
        kernel then waits at "Press a key on the console to reboot" with the other CPUs stopped, so the
        caller can take the live image and `retrieve` the dump. Returns `DumpResult(flow="panic")`."""
        if choice is None:
            choice = self.select_flow(trigger, force=DumpFlow.PANIC)
        if self.shell is not None and choice.method is not None and choice.method.value == "alt_panic":
            self.shell.run("sysctl debug.kdb.alt_break_to_debugger=1", check=True)
        self.last_dump = panic_dump(
            self.console,
            choice,
            guest=self.guest,
            shell=self.shell,
            memory_mib=self.memory_mib,
            deadline=deadline,
            hold=hold,
        )
        return self.last_dump

    def crash(self, plan: DumpPlan) -> tuple[FlowChoice, DdbEntry | None, DumpResult]:
        """Make the plan's dump by whichever flow fits the kernel: ddb (enter + `dump`, still in ddb
        afterwards) or panic (held at "Press a key"). Validate/prepare first, as in crash_and_retrieve."""
        choice = self.select_flow(plan.trigger)
        if choice.flow == DumpFlow.DDB:
            entry = self.enter_ddb(plan.trigger)
            return choice, entry, self.dump(plan)
        if plan.minidump_via.value == "ddb_write":
            raise FreeBSDStageError(
                f"plan {plan.describe()}: minidump via ddb `write` needs ddb; this kernel has none "
                "(set debug.minidump in the kernel environment instead: minidump_via=tunable)"
            )
        return choice, None, self.panic_dump(plan.trigger, choice=choice)

    def retrieve(
        self,
        plan: DumpPlan,
        outdir: str | Path,
        *,
        kernel: str | Path | None = None,
        reboot_deadline: float = 900.0,
    ) -> RetrievedDump:
        if plan.retrieval == RetrievalMethod.HOST:
            if self.dump_disk_image is None:
                raise FreeBSDStageError("host retrieval needs dump_disk_image")
            return from_dump_disk(
                self.dump_disk_image, outdir, guest=self.guest, private_key=self.private_key, kernel=kernel
            )
        # savecore: leave ddb by resetting (or let a held panic reboot), let rc's savecore run, fetch
        if self.entry is not None and self.entry.ddb.active:
            self.entry.ddb.reset()
        elif self.last_dump is not None and self.last_dump.held:
            self.console.send("\r")  # cngetc() in shutdown_panic(): any key reboots
        wait_for_stage(self.console, [Stage.LOGIN], reboot_deadline)
        with self.ssh() as ssh:
            return via_savecore(
                ssh,
                outdir,
                dump_device=plan.dump_disk,
                previous_bounds=self._bounds_before,
                private_key=self.private_key,
            )

    def crash_and_retrieve(
        self, plan: DumpPlan, outdir: str | Path, *, can_set_kenv: bool = False
    ) -> tuple[DdbEntry, DumpResult, RetrievedDump]:
        """Validate, prepare, enter ddb, dump, retrieve. `can_set_kenv`: the plan's tunables were given
        to the kernel at boot (bare-kernel ``--kenv``)."""
        self.validate(plan, can_set_kenv=can_set_kenv)
        self.prepare(plan)
        entry = self.enter_ddb(plan.trigger)
        result = self.dump(plan)
        return entry, result, self.retrieve(plan, outdir)
