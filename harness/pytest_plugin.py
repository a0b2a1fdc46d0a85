"""pytest plugin (entry point ``fbsd_hil``): FreeBSD guests, ddb sessions and verified dumps as fixtures.

Tests marked ``hil`` need a real FreeBSD guest. Without ``--fbsd-image``, ``--fbsd-release`` or
``--fbsd-kernel`` they skip with one line that says how to provide one; they never pretend to pass.
With ``--fbsd-release`` a failed download is an error (the hil job must not go green by skipping),
unless ``--fbsd-offline`` was given: then a release missing from the image cache skips.

Fixtures: ``fbsd_target`` (where the guest comes from), ``fbsd_artifacts`` (files kept on failure under
``--fbsd-artifacts``), ``fbsd_repro`` (run boot -> ddb -> dump -> retrieve -> verify with a plan),
``verified_dump`` (that with the default plan), ``fbsd_guest`` (a booted guest) and ``fbsd_ddb`` (a ddb
session on it). ``hil_case`` parametrises a test over the matrix minidump x trigger x device x
compression with ids like ``mini-nmi-disk-none`` (narrow with ``-k``). A table of every verification
prints at the end of the session; each report's figures are also JUnit XML properties.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HIL_SKIP_REASON = (
    "needs a FreeBSD guest: pass --fbsd-image PATH, --fbsd-release X.Y or --fbsd-kernel PATH "
    "(or run `tox -e hil`)"
)

#: the matrix axes (values as `fbsd-hil repro` spells them)
MATRIX_DUMPS = ("mini", "full")
MATRIX_TRIGGERS = ("nmi", "break", "alt-break", "sysctl", "panic")
MATRIX_DEVICES = ("disk", "swap")
MATRIX_COMPRESSION = ("none", "gzip", "zstd")

_REPORTS = pytest.StashKey[list]()
_PHASE_REPORTS = pytest.StashKey[dict]()


@dataclass(frozen=True)
class HilCase:
    """One cell of the dump matrix."""

    dump: str
    trigger: str
    device: str
    compression: str

    @property
    def id(self) -> str:
        return f"{self.dump}-{self.trigger}-{self.device}-{self.compression}"

    @property
    def minidump(self) -> bool:
        return self.dump == "mini"


def hil_matrix() -> list[HilCase]:
    return [
        HilCase(*c)
        for c in itertools.product(MATRIX_DUMPS, MATRIX_TRIGGERS, MATRIX_DEVICES, MATRIX_COMPRESSION)
    ]


@dataclass
class FbsdTarget:
    """Where the FreeBSD guest comes from, and how to run it (from the command line options)."""

    image: Path | None = None
    release: str | None = None
    kernel: Path | None = None
    kenv: dict[str, str] = field(default_factory=dict)
    uri: str | None = None
    accel: str = "auto"
    memory_mib: int = 512
    offline: bool = False
    keep_vm: bool = False
    artifacts: Path | None = None
    root_image: Path | None = None  # with `kernel`: a UFS root image, booted single-user

    @property
    def has_shell(self) -> bool:
        """An image boots a userland (login shell), a kernel with a root image init's single-user shell;
        a bare kernel waits for a root device."""
        return self.kernel is None or self.root_image is not None

    def unsupported(self, case: HilCase) -> str | None:
        """Why this source cannot run ``case`` with the repro pipeline (None: it can), in one line.

        Known before boot only: whether the kernel has ddb is read from its boot banner, and a kernel
        without ddb runs every trigger it can through the panic flow (the report says which)."""
        if not self.has_shell:
            if case.trigger in ("sysctl", "panic"):
                return (
                    f"trigger {case.trigger} runs a sysctl in a root shell: a bare --fbsd-kernel boot has no "
                    "shell (no userland); a kernel without ddb is panicked from the console by the "
                    "nmi/break/alt-break cells instead"
                )
            if case.compression != "none":
                return (
                    f"{case.compression} compression is switched on with `dumpon -z/-Z` in a shell: a bare "
                    "--fbsd-kernel boot has no userland, and no tunable selects it at boot (give "
                    "--fbsd-root-image)"
                )
            if case.device == "swap":
                return (
                    "dumping onto the GPT dump disk's freebsd-swap partition runs `dumpon /dev/vtbd0p2` in a "
                    "shell: a bare --fbsd-kernel boot has no shell (give --fbsd-root-image)"
                )
        if case.device == "swap" and self.root_image is None:  # a root image: dumpon /dev/vtbd0p2
            return (
                "swap dumps on an image: the pipeline dumps to its dedicated raw dump disk (the prepared "
                "image's loader-time dumpdev); `dumpon` to the image's own freebsd-swap partition, read back "
                "from its overlay, is not built (the swap cells run with --fbsd-kernel + --fbsd-root-image)"
            )
        return None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fbsd-hil", "FreeBSD hardware-in-the-loop")
    group.addoption("--fbsd-image", metavar="PATH", help="FreeBSD disk image (raw/qcow2) to boot")
    group.addoption("--fbsd-release", metavar="X.Y", help="official FreeBSD release to download and boot")
    group.addoption("--fbsd-kernel", metavar="PATH", help="FreeBSD kernel file to boot from a GRUB ISO")
    group.addoption(
        "--fbsd-root-image",
        metavar="PATH",
        help="with --fbsd-kernel: a UFS root image loaded as the kernel's md root, booted single-user "
        "(a root shell on the console: the sysctl/panic triggers run)",
    )
    group.addoption(
        "--fbsd-kenv", metavar="K=V", action="append", default=[], help="kernel environment (repeatable)"
    )
    group.addoption("--libvirt-uri", metavar="URI", default=None, help="libvirt URI (default qemu:///system)")
    group.addoption("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="QEMU accelerator")
    group.addoption("--keep-vm", action="store_true", help="leave guests running after a failure")
    group.addoption("--fbsd-artifacts", metavar="DIR", default=None, help="where to keep failure artifacts")
    group.addoption(
        "--fbsd-offline",
        action="store_true",
        help="never download: a --fbsd-release missing from the image cache skips instead of failing",
    )
    group.addoption("--fbsd-memory", metavar="MiB", type=int, default=512, help="guest memory (default 512)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: needs libvirtd + QEMU")
    config.addinivalue_line("markers", "hil: needs a real FreeBSD guest")
    config.stash[_REPORTS] = []
    _validate_options(config)
    # SIGTERM/SIGHUP (a CI timeout, `timeout`) end the session like Ctrl-C: fixtures are torn down, so
    # guests are destroyed and temporary files removed instead of leaking until the next `doctor`.
    from harness.util.termination import install

    config.stash[_RESTORE_SIGNALS] = install()


def pytest_unconfigure(config: pytest.Config) -> None:
    restore = config.stash.get(_RESTORE_SIGNALS, None)
    if restore is not None:
        restore()


_RESTORE_SIGNALS = pytest.StashKey[Callable[[], None]]()


def _validate_options(config: pytest.Config) -> None:
    """Bad --fbsd-* options end the session at once with one line, instead of one identical error per
    test from the session fixtures."""
    for option in ("--fbsd-kernel", "--fbsd-image"):
        value = config.getoption(option)
        if value and not Path(value).is_file():
            what = "is a directory, not a file" if Path(value).is_dir() else "does not exist"
            raise pytest.UsageError(f"fbsd-hil: {option} {value} {what}")
    _kenv(config.getoption("--fbsd-kenv"))


def fbsd_source_given(config: pytest.Config) -> bool:
    return any(config.getoption(o) for o in ("--fbsd-image", "--fbsd-release", "--fbsd-kernel"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if fbsd_source_given(config):
        return
    skip = pytest.mark.skip(reason=HIL_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("hil") is not None:  # the marker, not a `hil` directory name
            item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hil_case" in metafunc.fixturenames:
        cases = hil_matrix()
        metafunc.parametrize("hil_case", cases, ids=[c.id for c in cases])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    rep = yield
    item.stash.setdefault(_PHASE_REPORTS, {})[rep.when] = rep
    return rep


def _failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(_PHASE_REPORTS, {}).values())


def _kenv(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise pytest.UsageError(f"--fbsd-kenv wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def fbsd_target(pytestconfig: pytest.Config) -> FbsdTarget:
    """The FreeBSD guest source from the options; skips (one line) when none was given."""
    opt = pytestconfig.getoption
    if not fbsd_source_given(pytestconfig):
        pytest.skip(HIL_SKIP_REASON)
    target = FbsdTarget(
        image=Path(opt("--fbsd-image")).resolve() if opt("--fbsd-image") else None,
        release=opt("--fbsd-release"),
        kernel=Path(opt("--fbsd-kernel")).resolve() if opt("--fbsd-kernel") else None,
        kenv=_kenv(opt("--fbsd-kenv")),
        uri=opt("--libvirt-uri"),
        accel=opt("--accel"),
        memory_mib=opt("--fbsd-memory"),
        offline=opt("--fbsd-offline"),
        keep_vm=opt("--keep-vm"),
        artifacts=Path(opt("--fbsd-artifacts")).resolve() if opt("--fbsd-artifacts") else None,
        root_image=Path(opt("--fbsd-root-image")).resolve() if opt("--fbsd-root-image") else None,
    )
    if target.root_image is not None and target.kernel is None:
        pytest.fail("--fbsd-root-image goes with --fbsd-kernel", pytrace=False)
    for what, path in (
        ("--fbsd-kernel", target.kernel),
        ("--fbsd-image", target.image),
        ("--fbsd-root-image", target.root_image),
    ):
        if path is not None and not path.is_file():
            pytest.fail(f"{what} {path} does not exist", pytrace=False)
    if target.release and target.image is None and target.kernel is None:
        target.image = pytestconfig.stash.get(RELEASE_IMAGE_KEY, None) or fetch_release_image(
            target.release, offline=target.offline
        )
    return target


RELEASE_IMAGE_KEY = pytest.StashKey[Path]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fetch a requested release once, before any test: a failure ends the run with one clear line.

    Without this every `hil` test would report the same download error with its own traceback.
    Offline mode with nothing cached is left to the fixture, which skips.
    """
    config = session.config
    release = config.getoption("--fbsd-release")
    if not release or config.getoption("--fbsd-image") or config.getoption("--fbsd-kernel"):
        return
    wanted = any(item.get_closest_marker("hil") is not None for item in session.items)
    if config.getoption("--collect-only") or not wanted:
        return
    import images

    offline = config.getoption("--fbsd-offline")
    try:
        config.stash[RELEASE_IMAGE_KEY] = images.fetch(release, offline=offline, progress=False)
    except images.NotCachedError as exc:
        if not offline:
            pytest.exit(f"fbsd-hil: FreeBSD {release} image: {exc}", returncode=pytest.ExitCode.TESTS_FAILED)
    except (images.ImageError, OSError) as exc:
        pytest.exit(
            f"fbsd-hil: FreeBSD {release} image could not be fetched: {exc} "
            "(give --fbsd-image PATH, or --fbsd-offline to skip without a cached image)",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )


def fetch_release_image(release: str, *, offline: bool) -> Path:
    """images.fetch: a missing cache entry skips in offline mode; any other failure is an error."""
    import images

    try:
        return images.fetch(release, offline=offline, progress=False)
    except images.NotCachedError as exc:
        if offline:
            pytest.skip(f"--fbsd-offline: {exc}")
        pytest.fail(f"FreeBSD {release} image: {exc}", pytrace=False)
    except images.ImageError as exc:
        pytest.fail(f"FreeBSD {release} image could not be fetched: {exc}", pytrace=False)
    except OSError as exc:
        pytest.fail(
            f"FreeBSD {release} image could not be fetched: {type(exc).__name__}: {exc}", pytrace=False
        )
    raise AssertionError("unreachable")


@pytest.fixture
def fbsd_artifacts(request: pytest.FixtureRequest, pytestconfig: pytest.Config):
    """Register evidence with ``.add(path)`` / ``.add_text(name, text)``; kept only if the test fails."""
    from harness.util.artifacts import ArtifactCollector

    root = pytestconfig.getoption("--fbsd-artifacts")
    collector = ArtifactCollector(root, request.node.nodeid)
    yield collector
    if _failed(request.node) and root:
        kept = collector.keep()
        if kept is not None:
            request.node.user_properties.append(("fbsd_artifacts", str(kept)))
            request.node.add_report_section("teardown", "fbsd-hil artifacts", f"kept in {kept}")


@pytest.fixture
def fbsd_record_report(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Callable[..., None]:
    """Record a `VerificationReport` for the end-of-session table and as JUnit XML properties."""

    def record(report: Any, label: str | None = None) -> None:
        row = {
            "test": label or request.node.nodeid.split("::", 1)[-1],
            "passed": bool(report.passed),
            "flow": getattr(report, "flow", "ddb"),
            "kind": report.dump_kind,
            "compared": report.pages_compared,
            "identical": report.pages_identical,
            "explained": report.pages_differing_explained,
            "unexplained": report.pages_differing_unexplained,
            "missing": report.missing_pages,
            "timings": dict(report.timings),
        }
        pytestconfig.stash[_REPORTS].append(row)
        for key in ("passed", "flow", "kind", "compared", "identical", "explained", "unexplained", "missing"):
            request.node.user_properties.append((f"verification_{key}", str(row[key])))

    return record


def run_config(target: FbsdTarget, case: HilCase, artifacts: Path, **overrides: Any):
    """The `harness.run.ReproConfig` of one matrix cell on `target`: what `fbsd-hil repro` would run."""
    from harness.run import ReproConfig

    cfg = ReproConfig(
        kernel=target.kernel,
        root_image=target.root_image,
        # a release goes through images.prepare(release) (keyed by the cached download, no re-hash)
        image=None if target.release and target.kernel is None else target.image,
        release=target.release,
        kenv=dict(target.kenv),
        memory_mib=target.memory_mib,
        accel=target.accel,
        uri=target.uri,
        minidump=case.minidump,
        trigger=case.trigger,
        compression=case.compression,
        device=case.device,
        artifacts=artifacts,
        offline=target.offline,
        keep=False,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
def fbsd_repro(fbsd_target: FbsdTarget, fbsd_artifacts, fbsd_record_report, tmp_path_factory):
    """``fbsd_repro(case=None, **overrides) -> ReproOutcome``: one full run, evidence registered."""
    from harness.run import ReproError, ReproUnsupported, run_repro

    work = tmp_path_factory.mktemp("fbsd-hil-run")

    def run(case: HilCase | None = None, **overrides: Any):
        case = case or HilCase("mini", "nmi", "disk", "none")
        why = fbsd_target.unsupported(case)
        if why:
            pytest.skip(f"{case.id}: {why}")
        cfg = run_config(fbsd_target, case, work, **overrides)
        if fbsd_target.kernel is not None:
            fbsd_artifacts.add(fbsd_target.kernel, "kernel")
        try:
            outcome = run_repro(cfg, progress=lambda _msg: None)
        except ReproUnsupported as exc:  # what this kernel cannot do is known only after its boot
            pytest.skip(f"{case.id}: {exc.one_line()}")
        except ReproError as exc:
            if exc.evidence is not None:
                fbsd_artifacts.add(exc.evidence, "run")
            pytest.fail(f"{case.id}: {exc.one_line()}", pytrace=False)
        fbsd_artifacts.add(outcome.artifacts, "run")
        reports = outcome.reports or [outcome.report]
        fbsd_artifacts.add_text("summary.txt", "\n\n".join(r.summary() for r in reports) + "\n")
        for n, report in enumerate(reports, 1):
            fbsd_record_report(report, case.id if n == 1 else f"{case.id} (dump {n})")
        return outcome

    return run


@pytest.fixture
def verified_dump(fbsd_repro):
    """A minidump taken via NMI, retrieved from the dump disk and verified (the default plan)."""
    return fbsd_repro()


@pytest.fixture
def fbsd_guest(fbsd_target: FbsdTarget, fbsd_artifacts, tmp_path_factory, request: pytest.FixtureRequest):
    """A booted FreeBSD guest: a bare kernel waiting for root, or an image at a root shell (``.shell``).

    Booted by the run's own source and boot steps (`harness.run`), exactly as `fbsd_repro` boots it."""
    from harness.run import boot
    from harness.run.context import RunContext
    from harness.run.rundir import make_dump_disk, new_run_dir
    from harness.run.sources import build_source

    cfg = run_config(fbsd_target, HilCase("mini", "nmi", "disk", "none"), tmp_path_factory.mktemp("fbsd-hil"))
    ctx = RunContext(cfg, new_run_dir(cfg.artifacts, "guest"), progress=lambda _msg: None)
    source = build_source(ctx, make_dump_disk(ctx.dir / "dump-disk.raw", cfg.memory_mib, cfg.dump_disk_mib))
    with boot.started(ctx, source) as guest:
        try:
            guest.shell = boot.boot(ctx, guest, source).shell
            yield guest
        finally:
            fbsd_artifacts.add(guest.transcript_path, "console.transcript")
            fbsd_artifacts.add_text("domain.xml", guest.domain_xml)
            guest.keep = fbsd_target.keep_vm and _failed(request.node)  # --keep-vm: leave it for a look


@pytest.fixture
def fbsd_ddb(fbsd_guest):
    """A ddb session on ``fbsd_guest`` entered by NMI (works from the root-wait state and from a shell)."""
    from harness.freebsd.enter import NoDdbBackend, enter_ddb

    try:
        entry = enter_ddb(fbsd_guest.console, "nmi", guest=fbsd_guest, shell=fbsd_guest.shell)
    except NoDdbBackend as exc:
        pytest.skip(f"this kernel has no ddb backend (release GENERIC?): {str(exc).splitlines()[0]}")
    return entry.ddb


# ---------------------------------------------------------------------------------------------- summary
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_REPORTS, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("fbsd-hil verification summary")
    head = (
        f"{'test':40} {'result':6} {'flow':5} {'kind':4} {'compared':>9} {'identical':>9} {'expl':>5} "
        f"{'unexpl':>6} {'missing':>7}  timings (s)"
    )
    tr.write_line(head)
    for r in rows:
        t = " ".join(f"{k}={v:.1f}" for k, v in r["timings"].items() if isinstance(v, int | float))
        tr.write_line(
            f"{r['test'][:40]:40} {'PASS' if r['passed'] else 'FAIL':6} {r.get('flow', 'ddb'):5} "
            f"{r['kind']:4} {r['compared']:>9} {r['identical']:>9} {r['explained']:>5} "
            f"{r['unexplained']:>6} {r['missing']:>7}  {t}"
        )
    failed = sum(1 for r in rows if not r["passed"])
    tr.write_line(f"{len(rows)} dumps verified, {failed} failed verification")
