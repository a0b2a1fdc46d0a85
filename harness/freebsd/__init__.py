"""The FreeBSD layer: console stages, shells, ddb, entering ddb, dump plans, dumps and retrieval.

The names other parts use (see docs/freebsd-layer.md):

    from harness.freebsd import Ddb, DumpPlan, RetrievedDump, Stage, enter_ddb, wait_for_stage
"""

from harness.freebsd.ddb import Ddb, DdbError, DumpFailed, DumpResult
from harness.freebsd.dumps import DumpPlan, DumpPlanError, make_dump_keypair
from harness.freebsd.enter import DdbEntry, DdbEntryError, DdbRoute, MountrootPromptError, enter_ddb
from harness.freebsd.machine import FreeBSDMachine
from harness.freebsd.retrieve import RetrievedDump, RetrieveError, from_dump_disk, via_savecore
from harness.freebsd.session import ConsoleShell, LoginFailed
from harness.freebsd.stages import FreeBSDStageError, GuestPanicked, Stage, recognise, wait_for_stage

__all__ = [
    "ConsoleShell",
    "Ddb",
    "DdbEntry",
    "DdbEntryError",
    "DdbError",
    "DdbRoute",
    "DumpFailed",
    "DumpPlan",
    "DumpPlanError",
    "DumpResult",
    "FreeBSDMachine",
    "FreeBSDStageError",
    "GuestPanicked",
    "LoginFailed",
    "MountrootPromptError",
    "RetrieveError",
    "RetrievedDump",
    "Stage",
    "enter_ddb",
    "from_dump_disk",
    "make_dump_keypair",
    "recognise",
    "via_savecore",
    "wait_for_stage",
]
