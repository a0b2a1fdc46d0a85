"""drgn on FreeBSD dumps: a `drgn.Program` over our reader with types from a kernel.debug.

The "kernel.debug" here is a tiny C file compiled with `gcc -g` whose `struct proc` / `struct thread`
have the layout the synthetic dump (tests/dumpwriter/kstructs.py) writes, so DWARF types and the
dump agree the way a real kernel.debug and its vmcore do.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

import reader
from reader.cli import main
from reader.errors import KernelMismatchError, ReaderError
from reader.kernel import Kernel
from tests.dumpwriter.kstructs import ProcSpec, ThreadSpec, write_threads_dump
from tests.reader.kernel_elf import write_elf

drgn = pytest.importorskip("drgn", reason="drgn is not installed (pip install 'fbsd-hil[drgn]')")

SOURCE = r"""
struct pcb { unsigned long pcb_r15, pcb_r14, pcb_r13, pcb_r12, pcb_rbp, pcb_rsp, pcb_rbx, pcb_rip; };
struct thread { int td_tid; int _pad0; char td_name[20]; int _pad1; int td_oncpu; int _pad2;
                struct pcb *td_pcb; struct thread *td_plist; };
struct proc { struct proc *p_list; void *le_prev; struct thread *p_threads; void *tqh_last; int p_pid;
              int _pad[3]; char p_comm[20]; struct proc *p_pptr; int p_state; int p_flag; };
struct proc *allproc;
struct thread *curthread_example;
int MARKER;
void _start(void) {}
"""


def _gcc(tmp_path, name: str, source: str):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build a DWARF file")
    c = tmp_path / f"{name}.c"
    c.write_text(source)
    out = tmp_path / name
    subprocess.run(["gcc", "-g", "-O0", "-nostdlib", "-static", "-no-pie", "-fno-pie", "-mcmodel=kernel",
                    "-Wl,-Ttext=0xffffffff80200000", "-Wl,--build-id", "-o", str(out), str(c)], check=True)
    return out


@pytest.fixture
def dump(tmp_path):
    procs = [ProcSpec(42, "sh", [ThreadSpec(100042, "sh", [0] * 8, crashed=True)]),
             ProcSpec(0, "kernel", [ThreadSpec(100000, "swapper", [0] * 8),
                                    ThreadSpec(100001, "idle", [0] * 8)])]
    vmcore, synthetic_kernel = write_threads_dump(tmp_path, procs, msgbuf=(b"hello\nworld\n", 12))
    # the same symbols as absolute ones, with no section headers that a debug file could contradict
    k = Kernel(synthetic_kernel)
    kernel = write_elf(tmp_path / "kernel.syms", [],
                       [(s.name, s.address, s.size, "object") for s in k._symbols.values()])
    return vmcore, kernel, _gcc(tmp_path, "kernel.debug", SOURCE)


def test_program_reads_the_dump_with_dwarf_types(dump):
    vmcore, kernel, debug = dump
    with reader.open_vmcore(vmcore, kernel) as vm:
        prog = reader.drgn_program(vm, debug=debug)
        procs = list(reader.fbsd_drgn.for_each_proc(prog))
        assert [int(p.p_pid) for p in procs] == [42, 0]
        assert procs[0].p_comm.string_() == b"sh"
        assert str(procs[0].type_) == "struct proc *"
        threads = list(reader.fbsd_drgn.for_each_thread(prog, procs[1]))
        assert [t.td_name.string_().decode() for t in threads] == ["swapper", "idle"]
        assert reader.fbsd_drgn.msgbuf(prog) == "hello\nworld\n"
        # plain memory reads go through our reader
        hz = vm.symbol("hz")
        assert prog.read_u32(hz) == 100
        with pytest.raises(drgn.FaultError):
            prog.read(0xFFFFFE00DEAD0000, 8)


def test_program_without_dwarf_yields_addresses(dump):
    vmcore, kernel, _ = dump
    with reader.open_vmcore(vmcore, kernel) as vm:
        prog = reader.drgn_program(vm)
        procs = list(reader.fbsd_drgn.for_each_proc(prog))
        assert all(isinstance(p, int) for p in procs) and len(procs) == 2


def test_read_decodes_a_dwarf_type(dump, capsys):
    vmcore, kernel, debug = dump
    with reader.open_vmcore(vmcore, kernel) as vm:
        first = vm.read_pointer(vm.symbol("allproc"))
    rc = main(["--kernel", str(kernel), "--debug", str(debug), "read", str(vmcore), "--va", hex(first),
               "--type", "struct proc"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert ".p_pid = (int)42" in out and '.p_comm = (char [20])"sh"' in out


def test_ps_fills_what_the_dwarf_struct_has(dump, capsys):
    vmcore, kernel, debug = dump
    rc = main(["--kernel", str(kernel), "--debug", str(debug), "ps", str(vmcore), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    import json

    rows = json.loads(out)
    # the synthetic procs hold zeros past p_comm: no parent (ppid 0), PRS_NEW, no flags; this struct
    # proc has no p_ucred, so uid stays unknown (null) rather than made up
    assert [(r["pid"], r["ppid"], r["state"], r["flags"], r["uid"]) for r in rows] == [
        (42, 0, "NEW", "0x0", None), (0, 0, "NEW", "0x0", None)]


def test_debug_file_of_another_build_is_refused(dump, tmp_path, capsys):
    vmcore, _, debug = dump
    other = _gcc(tmp_path, "other.debug", SOURCE.replace("int MARKER;", "int MARKER = 7;"))
    with reader.open_vmcore(vmcore, other, force=True) as vm, pytest.raises(KernelMismatchError) as exc:
        reader.drgn_program(vm, debug=debug)
    assert str(debug) in str(exc.value) and str(other) in str(exc.value) and "build-id" in str(exc.value)
    rc = main(["--kernel", str(other), "--debug", str(debug), "ps", str(vmcore)])
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "build-id" in err


def test_section_difference_is_named(tmp_path):
    from reader.fbsd_drgn import _section_difference

    a = _gcc(tmp_path, "a", SOURCE)
    b = _gcc(tmp_path, "b", SOURCE + "\nint more[64] = {1};\n")
    diff = _section_difference(a, b)
    assert diff is not None and "section" in diff


def test_missing_drgn_is_one_line(monkeypatch, dump):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kw):
        if name == "drgn" or name.startswith("drgn."):
            raise ImportError("no drgn")
        return real_import(name, *args, **kw)

    vmcore, kernel, _ = dump
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with reader.open_vmcore(vmcore, kernel) as vm, pytest.raises(ReaderError) as exc:
        reader.drgn_program(vm)
    assert "drgn is not installed" in str(exc.value) and "pip install" in str(exc.value)


def test_shell_helpers_bt_and_globals(dump, capsys):
    from reader.fbsd_drgn import shell_globals

    vmcore, kernel, debug = dump
    with reader.open_vmcore(vmcore, kernel) as vm:
        prog = reader.drgn_program(vm, debug=debug)
        g = shell_globals(prog)
        assert set(g) == {"vm", "for_each_proc", "for_each_thread", "msgbuf", "bt"}
        assert g["bt"]() is None
        out = capsys.readouterr().out
        assert out.startswith("thread 100042 (pid 42) sh (crashed)\n#0  0x0/frame 0x0")
        g["bt"](100001)
        assert "thread 100001 (pid 0) kernel/idle" in capsys.readouterr().out
        with pytest.raises(ReaderError, match="no thread with tid 5"):
            g["bt"](5)


def test_shell_runs_a_piped_session(dump, tmp_path):
    import os
    import sys
    from pathlib import Path

    vmcore, kernel, debug = dump
    repo = str(Path(__file__).resolve().parents[2])
    script = "[int(p.p_pid) for p in for_each_proc()]\nprog.read_u32(vm.symbol('hz'))\n"
    r = subprocess.run([sys.executable, "-m", "reader", "--kernel", str(kernel), "--debug", str(debug),
                        "shell", str(vmcore)], input=script, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": repo}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[42, 0]" in r.stdout and ">>> 100" in r.stdout
    assert "FreeBSD helpers" in r.stderr      # drgn prints the banner on stderr


@pytest.mark.parametrize("fixture", ["amd64-minidump", "amd64-full", "i386-minidump", "arm64-minidump"])
def test_drgn_reads_the_real_lldb_dumps(lldb_paths, fixture):
    """No DWARF for these kernels: memory and the process walk only (hz as LLDB's test reads it)."""
    vmcore, kernel = lldb_paths[fixture]
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        prog = reader.drgn_program(vm)
        assert prog.read_u32(vm.symbol("hz")) == (1000 if fixture.startswith("arm64") else 100)
        procs = list(reader.fbsd_drgn.for_each_proc(prog))
        assert procs and procs == sorted({t.proc for t in vm.threads()}, key=procs.index)
