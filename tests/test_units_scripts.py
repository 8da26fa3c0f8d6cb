"""The scripts' source is the same in every process, so their SHA1s are stable."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from engine.scripts import NAMES, source


def test_script_sources_do_not_depend_on_the_process() -> None:
    here = {n: hashlib.sha1(source(n).encode()).hexdigest() for n in NAMES}
    code = (
        "import hashlib, json; from engine.scripts import NAMES, source; "
        "print(json.dumps({n: hashlib.sha1(source(n).encode()).hexdigest() for n in NAMES}))"
    )
    for seed in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(out) == here
