"""Shared helpers of the tests/deploy suites (run by ctest, label `deploy`).

Each suite is a unittest program. A missing tool (prometheus, promtool,
kubectl, docker-compose, a Python module) skips the tests that need it with a
message; main() then exits with SKIP_CODE, which ctest reports as skipped
(SKIP_RETURN_CODE). A failure or error always exits 1.
"""

import os
import shutil
import sys
import unittest

SKIP_CODE = 77
SOURCE_DIR = os.environ.get(
    "RAINSERVE_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def source_path(*parts):
    return os.path.join(SOURCE_DIR, *parts)


def require_tool(name):
    """The tool's path on PATH, or skips the calling test with a message."""
    path = shutil.which(name)
    if path is None:
        raise unittest.SkipTest(f"{name} not found on PATH (scripts/install_deps.sh installs it)")
    return path


def require_module(name):
    try:
        return __import__(name)
    except ImportError:
        raise unittest.SkipTest(f"python3 cannot import {name} (scripts/install_deps.sh installs it)")


def main():
    """unittest.main() with ctest's skip convention."""
    program = unittest.main(exit=False, verbosity=2)
    result = program.result
    if not result.wasSuccessful():
        sys.exit(1)
    if result.skipped:
        for test, reason in result.skipped:
            print(f"SKIPPED {test.id()}: {reason}", file=sys.stderr)
        sys.exit(SKIP_CODE)
    sys.exit(0)
