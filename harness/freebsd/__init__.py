"""The FreeBSD layer: console stages, shells, ddb, entering ddb, dump plans, dumps and retrieval.

The names other parts use (see docs/freebsd-layer.md):

    from harness.freebsd import Ddb, DumpPlan, RetrievedDump, Stage, enter_ddb, wait_for_stage
    from harness.freebsd import choose_flow, kernel_facts, panic_dump   # kernels without ddb
"""

from harness.freebsd.ddb import Ddb, DdbError, DumpFailed, DumpResult
from harness.freebsd.dumps import DumpPlan, DumpPlanError, make_dump_keypair
from harness.freebsd.enter import (
    DdbEntry,
    DdbEntryError,
    DdbRoute,
    MountrootPromptError,
    NoDdbBackend,
    enter_ddb,
)
from harness.freebsd.kernel import KernelFacts, kernel_facts
from harness.freebsd.machine import FreeBSDMachine
from harness.freebsd.panicdump import (
    PANIC_FLOW_KENV,
    DumpFlow,
    FlowChoice,
    PanicDumpError,
    PanicMethod,
    choose_flow,
    panic_dump,
    select_flow,
)
from harness.freebsd.retrieve import RetrievedDump, RetrieveError, from_dump_disk, via_savecore
from harness.freebsd.session import ConsoleShell, LoginFailed
from harness.freebsd.stages import (
    FreeBSDStageError,
    GuestPanicked,
    Stage,
    StageTimeout,
    recognise,
    wait_for_stage,
)

__all__ = [
    "ConsoleShell",
    "Ddb",
    "DdbEntry",
    "DdbEntryError",
    "DdbError",
    "DdbRoute",
    "DumpFailed",
    "DumpFlow",
    "DumpPlan",
    "DumpPlanError",
    "DumpResult",
    "FlowChoice",
    "FreeBSDMachine",
    "FreeBSDStageError",
    "GuestPanicked",
    "KernelFacts",
    "LoginFailed",
    "MountrootPromptError",
    "NoDdbBackend",
    "PANIC_FLOW_KENV",
    "PanicDumpError",
    "PanicMethod",
    "RetrieveError",
    "RetrievedDump",
    "Stage",
    "StageTimeout",
    "choose_flow",
    "enter_ddb",
    "from_dump_disk",
    "kernel_facts",
    "make_dump_keypair",
    "panic_dump",
    "recognise",
    "select_flow",
    "via_savecore",
    "wait_for_stage",
]
