"""constraints.txt (the versions CI installs) must pin every dependency pyproject.toml names,
inside the range pyproject.toml gives it."""
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def read_pins(path):
    """{canonical name: Version} from a pip constraints file of `name==version` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        assert match, f"constraints.txt: not a `name==version` line: {line!r}"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def declared_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return [Requirement(spec) for spec in specs]


def test_every_dependency_is_pinned_within_its_range():
    pins = read_pins(ROOT / "constraints.txt")
    problems = []
    for req in declared_requirements():
        name = canonicalize_name(req.name)
        if name == "torch":  # installed by TORCH_SPEC (CI: its local wheel), not constrained
            continue
        if name not in pins:
            problems.append(f"{req.name}: not in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}: pinned {pins[name]}, outside {req.specifier}")
    assert not problems, "run `make constraints` after `make test` in a fresh venv:\n" + "\n".join(problems)


def test_read_pins_rejects_a_range(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\nnumpy==2.0.1\n")
    assert read_pins(path) == {"numpy": Version("2.0.1")}
    path.write_text("numpy>=2\n")
    try:
        read_pins(path)
    except AssertionError as err:
        assert "numpy>=2" in str(err)
    else:
        raise AssertionError("a range was accepted as a pin")
