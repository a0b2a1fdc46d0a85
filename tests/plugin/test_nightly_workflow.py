"""The nightly workflow cannot run here; it must at least be valid YAML with the promised shape."""

from __future__ import annotations

from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "nightly.yml"


def test_nightly_workflow_shape():
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert "schedule" in triggers and "workflow_dispatch" in triggers
    job = wf["jobs"]["hil"]
    assert "release" in job["strategy"]["matrix"] and job["strategy"]["fail-fast"] is False
    steps = {s.get("name", s.get("uses")): s for s in job["steps"]}
    assert steps["Restore the FreeBSD image cache"]["with"]["path"] == "${{ env.FBSD_HIL_CACHE }}"
    assert "tox -e hil" in steps["tox -e hil"]["run"] and "--fbsd-artifacts" in steps["tox -e hil"]["run"]
    upload = steps["Upload artifacts of failed tests"]
    assert upload["if"] == "failure()" and upload["uses"].startswith("actions/upload-artifact@")
    assert job["env"]["FBSD_HIL_RELEASE"] == "${{ matrix.release }}"
