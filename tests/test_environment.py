"""The environment reproduce.sh builds is consistent: every installed distribution's requirements
hold (`pip check`), so the optional cross-check (torchattacks, which pins an old requests) lives in an
environment of its own."""

from __future__ import annotations

import subprocess
import sys


def test_the_installed_environment_passes_pip_check():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_crosscheck_constraints_pin_what_the_main_ones_pin_but_for_torchattacks_and_its_requests():
    """constraints-crosscheck.txt is constraints.txt with torchattacks and the versions its pin forces:
    a package upgraded in one and forgotten in the other would make the cross-check test other code."""
    from tests.conftest import REPO

    def pins(name):
        lines = (REPO / name).read_text().splitlines()
        return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))

    main, cross = pins("constraints.txt"), pins("constraints-crosscheck.txt")
    forced = {"requests", "idna", "urllib3", "chardet", "dulwich", "scmrepo", "torchattacks"}
    assert {k: v for k, v in cross.items() if k not in forced} == {k: v for k, v in main.items() if k not in forced}
    assert cross["torchattacks"] == "3.5.1" and cross["requests"].startswith("2.25.")
