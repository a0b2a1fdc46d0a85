"""Fail CI when the JUnit report shows that no test actually ran (all skipped or none collected)."""

import sys
import xml.etree.ElementTree as ET

path = sys.argv[1]
try:
    root = ET.parse(path).getroot()
except (OSError, ET.ParseError) as exc:
    print(f"check_junit: cannot read {path}: {exc}", file=sys.stderr)
    sys.exit(1)
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
tests = sum(int(s.get("tests", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
ran = tests - skipped
print(f"check_junit: {tests} tests, {ran} ran, {skipped} skipped, {failed} failed/errored")
if ran <= 0:
    print("check_junit: no test ran", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if failed else 0)
