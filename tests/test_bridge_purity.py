"""The sans-IO core stays sans-IO: importing it loads no framework, event loop or socket
library, so it can be reasoned about (and tested) as plain functions of its inputs."""

from __future__ import annotations

import json
import subprocess
import sys

# calls.analysis and calls.agent_tests: the rules of post-call analysis and agent tests.
CORE = ("calls.bridge", "calls.twilio_media", "calls.realtime", "calls.analysis", "calls.agent_tests")
FORBIDDEN = ("django", "channels", "asyncio", "websockets", "daphne", "twisted")


def test_importing_the_core_loads_no_django_channels_asyncio_or_websockets():
    # A fresh interpreter: this one has imported everything already.
    program = (
        f"import json, sys\nfor name in {CORE!r}: __import__(name)\nprint(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(result.stdout)
    assert set(CORE) <= set(loaded)  # the check can fail: the modules were really imported
    offenders = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert offenders == []
