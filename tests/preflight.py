"""What `make test` checks before any test runs: the two programs the suite needs from the
machine, Chromium (the browser tests) and espeak-ng (the stand-in's speech). Missing either,
it prints what to install and fails, so that nobody waits minutes for a suite that cannot
pass. The suite never installs them itself (that needs root); CI's .ci/run does, on Debian."""

from __future__ import annotations

import shutil
import sys

from tests.chromium import INSTALL_HELP, chromium_missing, find_chromium


def problems() -> list[str]:
    found = []
    if find_chromium() is None:
        found.append(chromium_missing())
    if shutil.which("espeak-ng") is None:
        found.append(f"espeak-ng is missing (not on the PATH).\n{INSTALL_HELP}")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"make test: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
