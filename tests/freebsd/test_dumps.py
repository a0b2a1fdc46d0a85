"""DumpPlan: validation names every reason a plan cannot work; the guest and ddb commands it needs."""

from __future__ import annotations

import pytest

from harness.freebsd.dumps import DumpPlan, DumpPlanError, MinidumpVia


def test_default_plan_is_a_minidump_to_the_raw_disk_via_nmi_read_on_the_host():
    plan = DumpPlan()
    assert (
        plan.describe()
        == "[minidump, set via sysctl, trigger nmi, device disk (/dev/vtbd1), retrieve via host]"
    )
    assert plan.problems(has_shell=True) == []
    assert plan.shell_commands() == [
        "sysctl -n debug.kdb.available | grep -qw ddb || (echo 'kernel has no ddb (options DDB)'; false)",
        "sysctl -i debug.ddb.textdump.pending=0",
        "ddb unscript kdb.enter.panic >/dev/null 2>&1 || true",
        "dumpon off",
        "dumpon -v /dev/vtbd1",
        "sysctl debug.minidump=1",
    ]
    assert plan.ddb_commands() == [] and plan.loader_tunables() == {"dumpdev": "/dev/vtbd1"}


def test_bare_kernel_without_shell_needs_ddb_write_or_tunable():
    plan = DumpPlan(minidump=False, minidump_via="sysctl", trigger="alt_break")
    with pytest.raises(DumpPlanError) as info:
        plan.validate(has_shell=False)
    assert "minidump via sysctl needs a root shell" in str(info.value)
    ok = DumpPlan(minidump=False, minidump_via="ddb_write", trigger="alt_break")
    assert ok.problems(has_shell=False) == []
    assert ok.ddb_commands() == ["write/l do_minidump 0"]
    tunable = DumpPlan(minidump_via=MinidumpVia.TUNABLE, trigger="nmi")
    assert tunable.problems(has_shell=False, can_set_kenv=True) == []
    assert tunable.loader_tunables() == {"dumpdev": "/dev/vtbd1", "debug.minidump": "1"}
    assert "loader tunable needs the kernel environment" in " ".join(tunable.problems(has_shell=False))
    assert "ddb `write/l do_minidump` needs ddb" in " ".join(ok.problems(has_shell=False, has_ddb=False))


def test_every_problem_is_listed_at_once():
    plan = DumpPlan(trigger="sysctl", compression="zstd", encrypt=True, device="swap", retrieval="host")
    problems = plan.problems(has_shell=False, freebsd_version=(12, 1))
    text = "\n".join(problems)
    for needle in (
        "trigger sysctl runs a sysctl: needs a root shell",
        "zstd compression is set with `dumpon`",
        "encryption is set with `dumpon -k`",
        "dumping to swap needs `dumpon",
        "with swap use retrieval=savecore",
        "FreeBSD 12.x refuses compression together with encryption",
    ):
        assert needle in text
    with pytest.raises(DumpPlanError, match="cannot work:\n  - "):
        plan.validate(has_shell=False, freebsd_version=(12, 1))


def test_compression_encryption_and_swap_commands():
    plan = DumpPlan(compression="gzip", encrypt=True, retrieval="savecore")
    assert plan.dumpon_command() == "dumpon -v -z -k /root/fbsd-hil-dump-pub.pem /dev/vtbd1"
    assert DumpPlan(compression="zstd").dumpon_command("/tmp/k.pem") == "dumpon -v -Z /dev/vtbd1"
    swap = DumpPlan(device="swap", retrieval="savecore")
    assert swap.dumpon_command() == "dumpon -v \"$(swapctl -l | awk 'NR==2 {print $1}')\""
    assert "needs SSH" in " ".join(swap.problems(has_shell=True, has_ssh=False))
    assert swap.problems(has_shell=True, has_ssh=True) == []


def test_full_dump_must_fit_the_dump_disk():
    plan = DumpPlan(minidump=False)
    assert "does not fit the 512 MiB dump disk" in " ".join(
        plan.problems(has_shell=True, memory_mib=512, dump_disk_mib=512)
    )
    assert plan.problems(has_shell=True, memory_mib=512, dump_disk_mib=1024) == []
    assert DumpPlan(minidump=True).problems(has_shell=True, memory_mib=512, dump_disk_mib=64) == []


def test_plans_come_from_plain_strings_and_refuse_unknown_values():
    assert DumpPlan(trigger="panic").to_dict()["trigger"] == "panic"
    with pytest.raises(ValueError, match="'teleport' is not a valid DdbRoute"):
        DumpPlan(trigger="teleport")


def test_tunable_plan_with_a_shell_writes_loader_conf_and_sets_the_knob_now():
    cmds = DumpPlan(minidump=False, minidump_via="tunable").shell_commands()
    assert cmds[-2:] == ["sysrc -f /boot/loader.conf debug.minidump=0", "sysctl debug.minidump=0"]
    assert DumpPlan(minidump_via="tunable").problems(has_shell=True) == []


def test_swap_partition_on_the_hosts_dump_disk():
    """`swap_device`: the freebsd-swap partition the host laid out (`dumpon /dev/vtbd0p2`), readable on the
    host, so host retrieval is fine; without it, swap means the guest's own first swap device."""
    plan = DumpPlan(device="swap", swap_device="/dev/vtbd0p2", compression="zstd")
    assert plan.dumpon_command() == "dumpon -v -Z /dev/vtbd0p2"
    assert "dumpon -v -Z /dev/vtbd0p2" in plan.shell_commands(minimal_userland=True)
    assert plan.problems(has_shell=True) == []
    assert "(/dev/vtbd0p2)" in plan.describe() and plan.to_dict()["swap_device"] == "/dev/vtbd0p2"
    assert "dumpdev" not in plan.loader_tunables()
    assert "with swap use retrieval=savecore" in " ".join(DumpPlan(device="swap").problems(has_shell=True))
