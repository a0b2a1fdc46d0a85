"""Figures for the FreeBSD layer (one per line, ``name: value unit``).

* the harness's own cost of a whole recorded ddb session (NMI, registers, bt, ps, x/gx, minidump, full
  dump, msgbuf) replayed instantly through the real Console and the ddb parsers;
* the harness's own cost of the panic flow for kernels without ddb (banner facts, flow choice, ALT panic,
  automatic dump parsed, key press, held) replayed from the edited transcript;
* stage recognition speed over the recorded transcripts;
* SFTP download speed from a real sshd on 127.0.0.1 (prefetch on), i.e. the ceiling for savecore
  retrieval of a vmcore.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.freebsd.ddb import Ddb  # noqa: E402
from harness.freebsd.replay import RecordedTranscript, ReplayConsoleSpawn  # noqa: E402
from harness.freebsd.stages import recognise  # noqa: E402
from harness.vm.console import Console  # noqa: E402

TRANSCRIPTS = REPO / "tests" / "data" / "transcripts" / "freebsd-12.1-amd64"


def replay_session() -> float:
    t = RecordedTranscript.load(TRANSCRIPTS, "mini")
    start = time.perf_counter()
    spawn = ReplayConsoleSpawn(t)
    console = Console(spawn)
    console.expect({"wait": r"mountroot: waiting"}, 10)
    spawn.inject_nmi()
    ddb = Ddb(console)
    ddb.wait_prompt(10)
    ddb.show_registers(), ddb.bt(), ddb.ps(), ddb.x_gx("dumper"), ddb.x("do_minidump", "lx")
    ddb.dump()
    ddb.set_minidump(False)
    ddb.x("do_minidump", "lx")
    ddb.dump()
    ddb.show_msgbuf()
    elapsed = time.perf_counter() - start
    console.close()
    return elapsed


def replay_panic_flow() -> float:
    from harness.freebsd.panicdump import panic_dump, select_flow

    t = RecordedTranscript.load(TRANSCRIPTS.parent / "freebsd-edited", "edited-noddb-altpanic")
    start = time.perf_counter()
    spawn = ReplayConsoleSpawn(t)
    console = Console(spawn)
    console.expect({"wait": r"mountroot: waiting for device"}, 10)
    choice = select_flow(console, "alt_break", kenv={"debug.kdb.alt_break_to_debugger": "1"})
    result = panic_dump(console, choice, memory_mib=512, deadline=30)
    elapsed = time.perf_counter() - start
    console.close()
    if not (result.ok and result.held):
        raise SystemExit(f"panic flow replay failed: {result}")
    return elapsed


def recognise_rate() -> float:
    texts = [RecordedTranscript.load(TRANSCRIPTS, n).text() for n in ("mini", "full", "panic", "ada")]
    total = sum(len(t) for t in texts)
    rounds = 20
    start = time.perf_counter()
    for _ in range(rounds):
        for text in texts:
            recognise(text)
    return total * rounds / (time.perf_counter() - start) / (1 << 20)


def sftp_rate(size_mib: int = 128) -> float | None:
    from harness.vm.ssh import SshSession
    from tests.ssh.sshd_server import running_sshd

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sshd").mkdir()
        src = root / "vmcore"
        with open(src, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        try:
            server_cm = running_sshd(root / "sshd")
            server = server_cm.__enter__()
        except FileNotFoundError:
            return None
        try:
            user = os.environ.get("USER") or "root"
            with SshSession(
                server.host,
                server.port,
                user=user,
                key=server.client_key,
                pinned_host_key=server.host_key_pub,
            ) as s:
                result = s.fetch(str(src), root / "got")
            return result.mib_per_s
        finally:
            server_cm.__exit__(None, None, None)


def main() -> int:
    print(f"replay_ddb_session_mini_and_full_dump: {replay_session():.3f} s")
    print(f"replay_panic_flow_noddb: {replay_panic_flow():.3f} s")
    print(f"stage_recognition: {recognise_rate():.1f} MiB/s")
    rate = sftp_rate()
    print(
        f"sftp_fetch_128MiB_localhost: {rate:.1f} MiB/s" if rate is not None else "sftp_fetch: n/a (no sshd)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
