"""The Makefile's targets pass their variables to the tools (checked with `make -n`: nothing runs)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_make_passes_upto_quick_and_only():
    """The Makefile turns UPTO, QUICK and ONLY into the tools' options (make -n: nothing runs)."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")

    def dry(*args):
        return subprocess.run(["make", "-n", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout
    assert "tools/make_student.py --out build/student --upto A2" in dry("student", "UPTO=A2")
    assert "--upto" not in dry("student")
    assert "-m eecs598.reproduce --quick --only A1 A2" in dry("reproduce", "QUICK=1", "ONLY=A1 A2")
    assert "--quick" not in dry("reproduce", "QUICK=0") and "--quick" not in dry("reproduce")
