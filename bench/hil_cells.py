"""Seconds per `hil` test (every cell of the dump matrix) on a guest source, from the suite's own junit.

    python bench/hil_cells.py [--kernel PATH] [--root-image PATH | --bare] [-k EXPR] [--memory 128]

Runs the HIL suite (`pytest -m hil`, the tests `tox -e hil` runs) in a child pytest against a kernel
(default: the mock FreeBSD kernel, a stand-in built with gcc and cached) and, unless ``--bare``, a
single-user UFS2 root image (default: a tiny one made with Debian's makefs), so the shell-driven cells
run. Prints one line per test, ``<test>: <seconds> s <outcome>`` (a skip with its reason), then the
totals. Needs libvirtd and QEMU (TCG here).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIL_TESTS = ["tests/hil", "tests/freebsd/test_hil.py", "tests/images/test_images_hil.py"]


def _kernel(path: str | None) -> Path:
    if path:
        return Path(path).resolve()
    from tests.mock_freebsd_kernel.mock_freebsd_kernel import build_mock_freebsd_kernel

    return build_mock_freebsd_kernel()


def _root_image(workdir: Path) -> Path:
    tree = workdir / "root"
    tree.mkdir()
    (tree / "README").write_text("fbsd-hil bench root image\n")
    image = workdir / "root.ufs"
    subprocess.run(
        ["makefs", "-t", "ffs", "-o", "version=2", "-s", "4m", str(image), str(tree)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return image


def _outcome(case: ET.Element) -> str:
    for tag in ("failure", "error"):
        if (el := case.find(tag)) is not None:
            return f"{tag.upper()}: {(el.get('message') or '').splitlines()[0][:100]}"
    if (el := case.find("skipped")) is not None:
        return f"skipped: {(el.get('message') or '')[:140]}"
    return "passed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", help="kernel file (default: the mock FreeBSD kernel)")
    ap.add_argument("--root-image", help="single-user root image (default: a makefs UFS2 image)")
    ap.add_argument("--bare", action="store_true", help="no root image: a bare kernel boot")
    ap.add_argument("-k", dest="keyword", help="pytest -k expression (narrow the cells)")
    ap.add_argument("--memory", default="128", help="guest memory in MiB")
    args = ap.parse_args(argv)
    kernel = _kernel(args.kernel)
    with tempfile.TemporaryDirectory(prefix="fbsd-hil-bench-cells-") as tmp:
        work = Path(tmp)
        cmd = [
            sys.executable, "-m", "pytest", "-q", "-m", "hil", "-p", "no:cacheprovider",
            "--fbsd-kernel", str(kernel), "--fbsd-memory", args.memory,
            "--fbsd-artifacts", str(work / "artifacts"), f"--junitxml={work / 'hil.xml'}",
        ]
        if not args.bare:
            image = Path(args.root_image).resolve() if args.root_image else _root_image(work)
            cmd += ["--fbsd-root-image", str(image)]
        if args.keyword:
            cmd += ["-k", args.keyword]
        env = dict(os.environ)
        env.pop("PYTEST_ADDOPTS", None)
        started = time.monotonic()
        proc = subprocess.run([*cmd, *HIL_TESTS], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        junit = work / "hil.xml"
        if not junit.is_file():
            print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)
            return 1
        suite = ET.parse(junit).getroot()
        counts = {"passed": 0, "skipped": 0, "failed": 0}
        ran_seconds = 0.0
        for case in suite.iter("testcase"):
            seconds = float(case.get("time") or 0.0)
            outcome = _outcome(case)
            kind = outcome if outcome == "passed" else outcome.split(":")[0]
            kind = {"FAILURE": "failed", "ERROR": "failed"}.get(kind, kind)
            counts[kind] += 1
            if kind != "skipped":
                ran_seconds += seconds
            print(f"{case.get('name')}: {seconds:.1f} s {outcome}")
    print(f"hil tests passed: {counts['passed']}")
    print(f"hil tests skipped: {counts['skipped']}")
    print(f"hil tests failed: {counts['failed']}")
    print(f"hil seconds in tests that ran: {ran_seconds:.1f} s")
    print(f"hil suite wall time: {wall:.1f} s")
    return 0 if counts["failed"] == 0 and proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
