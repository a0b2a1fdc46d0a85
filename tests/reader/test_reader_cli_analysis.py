"""`fbsd-vmcore` crash-analysis commands (bt, ps, crashinfo, symbolize, typed read) and CLI hygiene."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import reader.cli
from reader.cli import MAX_READ, build_parser, main
from tests.dumpwriter.kstructs import ProcSpec, ThreadSpec, write_threads_dump
from tests.reader.kernel_elf import write_elf
from tests.reader.test_reader_backtrace import FUNCS, TEXT


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _no_big_json_numbers(value) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _no_big_json_numbers(v)
    elif isinstance(value, list):
        for v in value:
            _no_big_json_numbers(v)
    elif isinstance(value, int) and not isinstance(value, bool):
        assert abs(value) < 1 << 53, value


@pytest.fixture
def threads_dump(tmp_path):
    regs = [0, 0, 0, 0, 0xFFFFFE0000FF0000, 0xFFFFFE0000FEFF00, 0, 0xFFFFFFFF80C09ADE]
    procs = [ProcSpec(42, "sh", [ThreadSpec(100042, "sh", regs, crashed=True)]),
             ProcSpec(0, "kernel", [ThreadSpec(100000, "swapper", regs),
                                    ThreadSpec(100001, "softirq", regs, oncpu=1)])]
    msg = b"".join(f"line {i}\n".encode() for i in range(100))
    return write_threads_dump(tmp_path, procs, osreldate=1201000, msgbuf=(msg, len(msg)))


@pytest.mark.parametrize("command", ["info", "threads", "bt", "ps", "crashinfo"])
def test_json_outputs_write_addresses_as_strings(capsys, lldb_paths, command):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    extra = ["--all"] if command == "bt" else []
    rc, out, err = run(capsys, "--kernel", kernel, "--zero-fill", command, vmcore, "--json", *extra)
    assert rc == 0, err
    data = json.loads(out)
    _no_big_json_numbers(data)
    if command == "info":
        assert data["header"]["kernbase"] == "0xfffffe0000000000"
    if command == "bt":
        assert data[0]["frames"][0]["pc"] == "0xffffffff80c09ade" and len(data) == 16


def test_info_text_is_for_people(capsys, threads_dump):
    vmcore, kernel = threads_dump
    rc, out, _ = run(capsys, "--kernel", kernel, "info", vmcore)
    assert rc == 0
    assert "osreldate: 1201000" in out and "hz: 100" in out
    assert "None" not in out and "[[" not in out and "{" not in out and "True" not in out
    assert "kernbase: 0xfffffe0000000000" in out
    assert "msgbufsize: " in out and "bytes" in out


def test_info_reports_the_real_size_of_a_compressed_file(capsys, tmp_path, threads_dump):
    vmcore, kernel = threads_dump
    gz = tmp_path / "vmcore.0.gz"
    gz.write_bytes(gzip.compress(vmcore.read_bytes()))
    rc, out, _ = run(capsys, "info", gz, "--json")
    info = json.loads(out)
    assert rc == 0 and info["file_size"] == gz.stat().st_size
    assert info["payload_size"] == vmcore.stat().st_size and info["container"] == "gzip"


def test_bt_ps_crashinfo_on_a_synthetic_dump(capsys, threads_dump):
    vmcore, kernel = threads_dump
    rc, out, _ = run(capsys, "--kernel", kernel, "bt", vmcore)
    assert rc == 0 and out.startswith("thread 100042 (pid 42) sh (crashed)")
    rc, out, _ = run(capsys, "--kernel", kernel, "bt", vmcore, "--all")
    assert rc == 0 and out.count("thread 1000") == 3
    rc, out, _ = run(capsys, "--kernel", kernel, "bt", vmcore, "--tid", "100001")
    assert rc == 0 and "softirq (on CPU 1)" in out
    rc, out, err = run(capsys, "--kernel", kernel, "bt", vmcore, "--tid", "7")
    assert rc == 2 and "no thread with tid 7" in err and err.count("\n") == 1
    rc, out, _ = run(capsys, "--kernel", kernel, "ps", vmcore)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["PID", "PPID", "UID", "STATE", "FLAGS", "THR", "COMMAND"]
    assert lines[1].split() == ["42", "-", "-", "-", "-", "1", "sh"]
    assert lines[2].split() == ["0", "-", "-", "-", "-", "2", "kernel"]
    rc, out, _ = run(capsys, "--kernel", kernel, "crashinfo", vmcore, "--msgbuf-lines", "5")
    assert rc == 0
    assert "osreldate:  1201000" in out and "Backtrace of the crashed thread (pid 42) sh" in out
    assert "Message buffer (last 5 lines):\n  line 95\n" in out and "line 99" in out and "line 94" not in out
    assert "Processes:" in out and "format: minidump" in out
    rc, out, _ = run(capsys, "--kernel", kernel, "crashinfo", vmcore, "--json")
    ci = json.loads(out)
    assert ci["crashed_thread"]["tid"] == 100042 and ci["msgbuf_tail"][-1] == "line 99"
    assert ci["ps"][0]["pid"] == 42 and ci["crashed_thread"]["backtrace"][0]["pc"] == "0xffffffff80c09ade"


def test_crashinfo_without_a_kernel_still_summarises(capsys, lldb_paths):
    rc, out, _ = run(capsys, "--zero-fill", "crashinfo", lldb_paths["amd64-minidump"][0])
    assert rc == 0 and "no --kernel" in out and "Backtrace of the crashed thread: -" in out


def test_crashinfo_of_the_lldb_minidump_has_lldbs_crashed_frames(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "crashinfo", vmcore)
    assert rc == 0 and "(pid 800) sysctl (crashed)" in out and "#10 0xffffffff810620ce" in out


def test_symbolize_command(capsys, tmp_path):
    k = write_elf(tmp_path / "kernel", [(".text", TEXT, bytes(0x4000), True)], FUNCS)
    rc, out, _ = run(capsys, "--kernel", k, "symbolize", hex(TEXT + 0x123), hex(TEXT + 0x408), "0x10")
    assert rc == 0 and out.splitlines() == [f"{TEXT + 0x123:#x} sched_switch+0x23",
                                            f"{TEXT + 0x408:#x} calltrap+0x8",
                                            "0x10 ?? (no function symbol covers it)"]
    rc, _, err = run(capsys, "symbolize", "0x10")
    assert rc == 2 and "--kernel" in err


def test_typed_read_and_translate_by_symbol(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["arm64-minidump"]
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "read", vmcore, "--symbol", "hz",
                     "--type", "u32")
    assert rc == 0 and out.split() == ["0xffff000000e2651c", "1000"]
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "read", vmcore, "--symbol", "hz",
                     "--type", "s64")
    assert rc == 0 and len(out.split()) == 2
    rc, out, _ = run(capsys, "--kernel", kernel, "--zero-fill", "read", vmcore, "--symbol", "allproc",
                     "--type", "ptr")
    assert rc == 0 and out.split()[1].startswith("0xffff")
    rc, a, _ = run(capsys, "--kernel", kernel, "--zero-fill", "translate", vmcore, "hz")
    rc2, b, _ = run(capsys, "--kernel", kernel, "--zero-fill", "translate", vmcore, "0xffff000000e2651c")
    assert rc == rc2 == 0 and a == b
    rc, _, err = run(capsys, "--kernel", kernel, "--zero-fill", "read", vmcore, "--symbol", "hz",
                     "--type", "struct proc")
    assert rc == 2 and "--debug" in err and err.count("\n") == 1


def test_read_string(capsys, threads_dump):
    vmcore, kernel = threads_dump
    rc, out, _ = run(capsys, "--kernel", kernel, "read", vmcore, "--va", "0xfffffe0000001030",
                     "--type", "string")
    assert rc == 0 and out == "sh\n"     # the first proc's p_comm


def test_read_size_is_bounded(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    t0 = time.monotonic()
    rc, out, err = run(capsys, "--zero-fill", "read", vmcore, "--pa", "0", "--size", str(3 << 30))
    assert rc == 2 and out == "" and "--size" in err and str(MAX_READ) in err and err.count("\n") == 1
    assert time.monotonic() - t0 < 5


def test_extract_of_a_directory_is_one_line(capsys, tmp_path):
    rc, out, err = run(capsys, "extract", tmp_path, "-o", tmp_path / "out")
    assert rc == 2 and "is a directory" in err and err.count("\n") == 1
    rc, out, err = run(capsys, "info", tmp_path)
    assert rc == 2 and "is a directory" in err


def test_a_fifo_without_writer_does_not_hang(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(reader.cli, "FIFO_WAIT", 0.5)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    rc, _, err = run(capsys, "info", fifo)
    assert rc == 2 and "nothing arrived" in err and time.monotonic() - t0 < 5


def test_a_fifo_with_a_writer_is_read(capsys, tmp_path, threads_dump):
    vmcore, _ = threads_dump
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "wb") as f:
            f.write(vmcore.read_bytes())

    th = threading.Thread(target=writer)
    th.start()
    rc, out, err = run(capsys, "info", fifo, "--json")
    th.join(5)
    assert rc == 0, err and json.loads(out)["format"] == "minidump"
    assert json.loads(out)["path"] == str(fifo)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash for <(...)")
def test_process_substitution(threads_dump):
    vmcore, _ = threads_dump
    r = subprocess.run(["bash", "-c", f'"{sys.executable}" -m reader info <(cat "{vmcore}")'],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "format: minidump" in r.stdout


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield "COMMAND", action
            for name, sub in action.choices.items():
                for a in _all_actions(sub):
                    yield f"{name} {a[0]}", a[1]
        else:
            yield "/".join(action.option_strings) or action.dest, action


def test_every_option_and_positional_has_help():
    missing = [name for name, action in _all_actions(build_parser())
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert missing == []


def test_version_and_description(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    out, _ = capsys.readouterr()
    assert exc.value.code == 0 and out.startswith("fbsd-vmcore ")
    with pytest.raises(SystemExit):
        main(["--help"])
    out, _ = capsys.readouterr()
    assert "crash analysis of FreeBSD kernel dumps" in out and "crashinfo" in out and "0x..." in out


def test_cli_errors_speak_in_options_not_api_keywords(capsys, lldb_paths):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    # the last page of this cut-short dump lies past the end of the file
    import reader as api

    with api.open_vmcore(vmcore, zero_fill=True) as vm:
        last = int(vm.phys_page_frames()[-1]) << 12
    rc, _, err = run(capsys, "read", vmcore, "--pa", hex(last), "--size", "16")
    assert rc == 2 and "--zero-fill" in err and "zero_fill=True" not in err
    rc, _, err = run(capsys, "threads", vmcore)
    assert rc == 2 and "--kernel PATH" in err and "open_vmcore" not in err


def test_a_stream_larger_than_the_bound_is_refused(capsys, tmp_path, monkeypatch, threads_dump):
    vmcore, _ = threads_dump
    monkeypatch.setattr(reader.cli, "MAX_STREAM", 64 << 10)
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer():
        try:
            with open(fifo, "wb") as f:
                f.write(vmcore.read_bytes())
        except BrokenPipeError:
            pass

    th = threading.Thread(target=writer)
    th.start()
    rc, out, err = run(capsys, "info", fifo)
    th.join(5)
    assert rc == 2 and out == "" and "larger than 65536 bytes" in err and err.count("\n") == 1
    assert list(spool.iterdir()) == []          # the partial copy is gone


def test_savecore_info_file_fills_hostname_time_and_panic(capsys, tmp_path, threads_dump):
    vmcore, kernel = threads_dump
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "vmcore.3").write_bytes(vmcore.read_bytes())
    (crash / "info.3").write_text("Dump header from device: /dev/ada0p3\n  Architecture: amd64\n"
                                  "  Dumptime: 2024-05-06 07:08:09 +0000\n  Hostname: build1.example.org\n"
                                  "  Panic String: page fault\n  Dump Status: good\n")
    rc, out, _ = run(capsys, "--kernel", kernel, "crashinfo", crash / "vmcore.3")
    assert rc == 0 and "Hostname:   build1.example.org" in out and "Panic:      page fault" in out
    assert "Dump time:  2024-05-06 07:08:09 UTC" in out
    rc, out, _ = run(capsys, "info", crash / "vmcore.3", "--json")
    info = json.loads(out)
    assert info["info_file"] == str(crash / "info.3") and info["dumptime"] == 1714979289
