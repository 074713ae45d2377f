"""The student copy (`make student`, tools/make_student.py): stubbing, no leaks, clean failures.

Three layers:
  * unit tests of `stub_source` on small strings;
  * `make_student` and the end-to-end checks below run on a small fake repository
    (fast, independent of what the assignments hold today);
  * the same end-to-end checks on a copy built once from the real repository: every
    assignment module imports, no solution text leaks, notebooks are clean, and the real
    unit tests fail cleanly (NotImplementedError, no collection errors).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools.make_student import (DEFAULT_HINT, NOTEBOOK_TODO, BuildError, StubError, make_student,
                                stub_source)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "make_student.py"
ASSIGNMENT_GLOB = "A[0-9]*"
BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
SUBPROCESS_TIMEOUT = 900


def dedent(text):
    return textwrap.dedent(text).lstrip("\n")


# ---------------------------------------------------------------------------------------
# (a) stub_source on small strings
# ---------------------------------------------------------------------------------------

def test_region_replaced_at_marker_indentation():
    src = dedent('''
        import torch


        def add_one(x):
            """Return x + 1."""
            ### BEGIN SOLUTION
            y = x + 1
            ### END SOLUTION
            return y
        ''')
    new, regions = stub_source(src)
    assert new == dedent(f'''
        import torch


        def add_one(x):
            """Return x + 1."""
            raise NotImplementedError("{DEFAULT_HINT}")
            return y
        ''')
    assert regions == ["    y = x + 1\n"]


def test_hint_becomes_the_message_and_is_not_a_region_line():
    src = dedent('''
        class Net:
            def forward(self, x):
                if x is None:
                    ### BEGIN SOLUTION
                    ### HINT: Use torch.relu, then "sum" the result.
                    out = torch.relu(x).sum()
                    ### END SOLUTION
                return out
        ''')
    new, regions = stub_source(src)
    assert '            raise NotImplementedError("Use torch.relu, then \\"sum\\" the result.")\n' in new
    assert "HINT" not in new
    assert regions == ["            out = torch.relu(x).sum()\n"]
    namespace = {}
    exec(compile(new, "<stub>", "exec"), namespace)
    with pytest.raises(NotImplementedError, match='Use torch.relu, then "sum" the result.'):
        namespace["Net"]().forward(None)


def test_a_hint_continues_on_further_comment_lines():
    src = dedent('''
        def best(x):
            ### BEGIN SOLUTION
            ### HINT: the highest mean wins (compare the
            ### means with a tolerance).
            ### a note that is part of the hint too
            # an ordinary comment: part of the solution
            return max(x)
            ### END SOLUTION
        ''')
    new, regions = stub_source(src)
    assert ('raise NotImplementedError("the highest mean wins (compare the means with a tolerance). '
            'a note that is part of the hint too")') in new
    assert regions == ["    # an ordinary comment: part of the solution\n    return max(x)\n"]


def test_multiple_regions_and_code_outside_preserved_exactly():
    src = dedent('''
        """Module docstring."""
        import math  # a comment   with   spaces

        SCALE = 2.5\t# tab inside


        def f(x):
            ### BEGIN SOLUTION
            a = x * SCALE

            return math.sqrt(a)
            ### END SOLUTION


        def g(x,
              y):
            z = x
            ### BEGIN SOLUTION
            ### HINT: combine z and y
            for _ in range(3):
                z = z + y
            ### END SOLUTION
            return z
        ''')
    new, regions = stub_source(src)
    assert regions == ["    a = x * SCALE\n\n    return math.sqrt(a)\n",
                       "    for _ in range(3):\n        z = z + y\n"]
    # Every line outside the regions survives byte for byte (comments, tabs, spacing).
    assert new == dedent(f'''
        """Module docstring."""
        import math  # a comment   with   spaces

        SCALE = 2.5\t# tab inside


        def f(x):
            raise NotImplementedError("{DEFAULT_HINT}")


        def g(x,
              y):
            z = x
            raise NotImplementedError("combine z and y")
            return z
        ''')
    assert new.count("raise NotImplementedError") == 2
    namespace = {}
    exec(compile(new, "<stub>", "exec"), namespace)
    assert namespace["SCALE"] == 2.5
    with pytest.raises(NotImplementedError, match="combine z and y"):
        namespace["g"](1, 2)
    with pytest.raises(NotImplementedError, match=re.escape(DEFAULT_HINT)):
        namespace["f"](1)


def test_text_without_markers_is_unchanged():
    src = "x = 1\r\n\tif x:\r\n  # ### BEGIN SOLUTION is only special on its own line\r\n"
    assert stub_source(src) == (src, [])
    assert stub_source("") == ("", [])


def test_markers_compared_stripped_crlf_and_trailing_spaces():
    src = "def f():\r\n\t### BEGIN SOLUTION   \r\n\treturn 1\r\n\t  ### END SOLUTION\r\nx = 2\r\n"
    new, regions = stub_source(src)
    assert new == f'def f():\r\n\traise NotImplementedError("{DEFAULT_HINT}")\r\nx = 2\r\n'
    assert regions == ["\treturn 1\r\n"]
    compile(new, "<stub>", "exec")


def test_region_at_end_without_trailing_newline():
    src = "x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION"
    new, _ = stub_source(src)
    assert new == f'x = 1\nraise NotImplementedError("{DEFAULT_HINT}")'


def test_notebook_kind_adds_your_code_here():
    src = "lr = None\n### BEGIN SOLUTION\n### HINT: pick a learning rate\nlr = 1e-3\n### END SOLUTION\nprint(lr)"
    new, regions = stub_source(src, kind="notebook")
    assert new == f'lr = None\n{NOTEBOOK_TODO}\nraise NotImplementedError("pick a learning rate")\nprint(lr)'
    assert regions == ["lr = 1e-3\n"]
    compile(new, "<cell>", "exec")


@pytest.mark.parametrize("src, line, words", [
    ("a = 1\n### END SOLUTION\n", 2, "without a matching"),
    ("a = 1\n  ### BEGIN SOLUTION\nb = 2\n", 2, "without a matching"),
    ("### BEGIN SOLUTION\nb = 2\n    ### BEGIN SOLUTION\nc = 3\n### END SOLUTION\n### END SOLUTION\n",
     3, "nested"),
    ("### BEGIN SOLUTION\nb = 2\n### END SOLUTION\n### END SOLUTION\n", 4, "without a matching"),
], ids=["end-without-begin", "begin-without-end", "nested", "extra-end"])
def test_unbalanced_markers_raise(src, line, words):
    with pytest.raises(StubError, match=words) as info:
        stub_source(src)
    assert info.value.line == line


# ---------------------------------------------------------------------------------------
# End-to-end checks, shared by the fake repository and the real one
# ---------------------------------------------------------------------------------------

def split_regions(text):
    """(lines outside the regions, regions as lists of lines) -- independent of the tool.

    A `### HINT:` text counts as outside: the student copy shows it on purpose.

    Malformed markers are ignored here: the tool rejects those files.
    """
    outside, regions, current = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None and stripped == BEGIN:
            current = []
        elif current is not None and stripped == END:
            regions.append(current)
            current = None
        elif current is not None:
            if not current and stripped.startswith(HINT):
                outside.append(stripped[len(HINT):])  # hints are published on purpose
                continue
            current.append(line)
        else:
            outside.append(line)
    return outside, regions


def notebook_text(path):
    """All cell sources of a notebook, one after another (for the leak check)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = []
    for cell in nb.get("cells", []):
        source = cell.get("source", "")
        cells.append("".join(source) if isinstance(source, list) else source)
    return "\n".join(cells)


def assignment_files(root, suffixes=(".py", ".ipynb")):
    files = []
    for folder in sorted(Path(root).glob(ASSIGNMENT_GLOB)):
        if folder.is_dir():
            files += [p for p in sorted(folder.rglob("*")) if p.suffix in suffixes and p.is_file()
                      and not {"__pycache__", ".ipynb_checkpoints"} & set(p.parts)]
    return files


def _nontrivial(line):
    return len(re.sub(r"\W", "", line)) >= 4


def find_leaks(original_root, copy_root):
    """Problems (strings) showing solution text in the copy's assignment files."""
    problems = []
    for copied in assignment_files(copy_root):
        rel = copied.relative_to(copy_root)
        text = notebook_text(copied) if copied.suffix == ".ipynb" else copied.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip() in (BEGIN, END) or line.strip().startswith(HINT):
                problems.append(f"{rel}: marker line left: {line.strip()!r}")
        original = Path(original_root) / rel
        if not original.is_file():
            continue
        source = notebook_text(original) if original.suffix == ".ipynb" else original.read_text(encoding="utf-8")
        outside, regions = split_regions(source)
        outside_text = "\n".join(outside)
        for region in regions:
            body = [line for line in region]
            while body and not body[0].strip():
                body.pop(0)
            while body and not body[-1].strip():
                body.pop()
            block = "\n".join(body)
            if sum(map(_nontrivial, body)) >= 2 and block in text and block not in outside_text:
                problems.append(f"{rel}: a solution region appears verbatim:\n{block}")
            for line in body:
                stripped = line.strip()
                if len(stripped) > 40 and stripped not in outside_text and stripped in text:
                    problems.append(f"{rel}: solution line leaked: {stripped!r}")
    return problems


_IMPORT_SCRIPT = r'''
import importlib, json, sys, traceback
from pathlib import Path
copy_root = Path(sys.argv[1]).resolve()
failures = {}
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc()
mod = sys.modules.get("eecs598")
if mod is not None and copy_root not in Path(mod.__file__).resolve().parents:
    failures["eecs598"] = f"eecs598 imported from {mod.__file__}, not from the student copy"
print("IMPORT-RESULT " + json.dumps(failures))
'''


def subprocess_env(copy_root):
    env = dict(os.environ)
    env.update(PYTHONPATH=str(copy_root), EECS598_QUICK="1", MPLBACKEND="Agg",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def module_names(folder):
    names = []
    for path in sorted(Path(folder).rglob("*.py")):
        rel = path.relative_to(folder).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(p.isidentifier() for p in parts) and "__pycache__" not in parts:
            names.append(".".join(parts))
    return names


def import_failures(copy_root, only=None):
    """{module: traceback} for the assignment modules of the copy that do not import.

    Each assignment folder is imported in a fresh interpreter with only the copy's root and
    that folder on the path (as in its notebooks). `only`: folder names to check.
    """
    failures = {}
    for folder in sorted(Path(copy_root).glob(ASSIGNMENT_GLOB)):
        if only is not None and folder.name not in only:
            continue
        names = module_names(folder) if folder.is_dir() else []
        if not names:
            continue
        proc = subprocess.run(
            [sys.executable, "-c", _IMPORT_SCRIPT, str(copy_root), *names], cwd=folder,
            env={**subprocess_env(copy_root), "PYTHONPATH": os.pathsep.join([str(copy_root), str(folder)])},
            capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        result = [line for line in proc.stdout.splitlines() if line.startswith("IMPORT-RESULT ")]
        if proc.returncode != 0 or not result:
            failures[folder.name] = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            continue
        for name, trace in json.loads(result[-1][len("IMPORT-RESULT "):]).items():
            failures[f"{folder.name}/{name}"] = trace
    return failures


def run_copy_tests(copy_root, test_folder):
    """Run the copy's tests/<test_folder> as CI would; return (exit code, output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", f"tests/{test_folder}", "-q", "-p", "no:cacheprovider"],
        cwd=copy_root, env=subprocess_env(copy_root), capture_output=True, text=True,
        timeout=SUBPROCESS_TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


def assert_fails_cleanly(code, output, what):
    tail = output[-6000:]
    assert code == 1, f"{what}: pytest exit code {code} (want 1 = tests failed)\n{tail}"
    assert "ERROR collecting" not in output and "errors during collection" not in output \
        and "error during collection" not in output, f"{what}: collection errors\n{tail}"
    assert "NotImplementedError" in output, f"{what}: no NotImplementedError in the output\n{tail}"


def check_notebooks(copy_root):
    import nbformat

    problems = []
    for path in assignment_files(copy_root, (".ipynb",)):
        rel = path.relative_to(copy_root)
        try:
            nb = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
            nbformat.validate(nb)
        except Exception as err:  # noqa: BLE001
            problems.append(f"{rel}: not a valid notebook: {err}")
            continue
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
                problems.append(f"{rel}: cell {index} has outputs or an execution count")
    return problems


# ---------------------------------------------------------------------------------------
# make_student on a small fake repository
# ---------------------------------------------------------------------------------------

FAKE_MODULE = dedent('''
    """A fake assignment."""
    import math

    SCALE = 3


    def scaled_norm(values):
        """Return SCALE * the Euclidean norm of `values`."""
        ### BEGIN SOLUTION
        ### HINT: math.sqrt of the sum of squares
        squares_of_all_values_in_the_list = [v * v for v in values]
        return SCALE * math.sqrt(sum(squares_of_all_values_in_the_list))
        ### END SOLUTION


    def double(x):
        """Return 2 * x."""
        ### BEGIN SOLUTION
        result = x + x
        ### END SOLUTION
        return result
    ''')

FAKE_TEST = dedent('''
    from fake import double, scaled_norm


    def test_scaled_norm():
        assert abs(scaled_norm([3.0, 4.0]) - 15.0) < 1e-9


    def test_double():
        assert double(4) == 8
    ''')

FAKE_CONFTEST = dedent('''
    import sys
    from pathlib import Path

    ROOT = Path(__file__).resolve().parent.parent
    for folder in sorted(ROOT.glob("A[0-9]*")):
        sys.path.insert(0, str(folder))
    ''')


def _fake_notebook():
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Fake\n", "text"]},
        {"cell_type": "code", "metadata": {}, "execution_count": 3,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": ["secret output\n"]}],
         "source": ["from fake import double\n", "### BEGIN SOLUTION\n",
                    "learning_rate_for_the_fake_assignment_model = 0.125\n",
                    "### END SOLUTION\n", "print(double(2))"]},
        {"cell_type": "markdown", "metadata": {},
         "source": ["Answer:\n", "### BEGIN SOLUTION\n", "Because the gradient vanishes\n",
                    "when the learning rate is too small.\n", "### END SOLUTION"]},
    ]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3",
                                                      "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 4}


@pytest.fixture
def fake_repo(tmp_path):
    root = tmp_path / "repo"
    (root / "A9" / "__pycache__").mkdir(parents=True)
    (root / "tests" / "A9").mkdir(parents=True)
    (root / "eecs598").mkdir()
    (root / "results").mkdir()
    (root / ".venv").mkdir()
    (root / "README.md").write_text("# Fake course\n")
    (root / "Makefile").write_text("all:\n\ttrue\n")
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (root / "eecs598" / "__init__.py").write_text("VERSION = 1\n")
    (root / "A9" / "fake.py").write_text(FAKE_MODULE)
    (root / "A9" / "plain.py").write_text("from fake import double\nTWO = 2\n")
    (root / "A9" / "fake.ipynb").write_text(json.dumps(_fake_notebook(), indent=1))
    (root / "A9" / "weights.pt").write_bytes(b"\0\1")
    (root / "A9" / "__pycache__" / "fake.cpython-311.pyc").write_bytes(b"\0")
    (root / "results" / "results.json").write_text("{}")
    (root / ".venv" / "marker").write_text("x")
    (root / "tests" / "conftest.py").write_text(FAKE_CONFTEST)
    (root / "tests" / "A9" / "test_fake.py").write_text(FAKE_TEST)
    return root


def test_make_student_leaves_out_what_git_ignores(fake_repo, tmp_path):
    """In a git checkout, files git ignores (generated outputs such as A6's sample images) stay
    out of the copy; tracked and untracked-but-not-ignored files go in."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    (fake_repo / ".gitignore").write_text("A9/*.jpg\n")
    (fake_repo / "A9" / "samples.jpg").write_bytes(b"staff output")
    (fake_repo / "A9" / "diagram.png").write_bytes(b"course figure")
    subprocess.run(["git", "init", "-q", str(fake_repo)], check=True)
    out = tmp_path / "student"
    make_student(fake_repo, out)
    assert not (out / "A9" / "samples.jpg").exists()
    assert (out / "A9" / "diagram.png").read_bytes() == b"course figure"
    assert (out / "A9" / "fake.py").exists()


def test_make_student_on_fake_repo(fake_repo, tmp_path):
    out = tmp_path / "student"
    (out / "stale").mkdir(parents=True)  # the copy is recreated
    report = make_student(fake_repo, out)
    assert report == {"A9/fake.ipynb": 2, "A9/fake.py": 2, "A9/plain.py": 0}
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["A9/fake.ipynb", "A9/fake.py", "A9/plain.py", "Makefile", "README.md",
                     "eecs598/__init__.py", "pyproject.toml", "tests/A9/test_fake.py", "tests/conftest.py"]
    for same in ["A9/plain.py", "README.md", "Makefile", "tests/A9/test_fake.py"]:
        assert (out / same).read_bytes() == (fake_repo / same).read_bytes()
    stubbed = (out / "A9" / "fake.py").read_text()
    assert '    raise NotImplementedError("math.sqrt of the sum of squares")\n' in stubbed
    assert f'    raise NotImplementedError("{DEFAULT_HINT}")\n    return result\n' in stubbed
    nb = json.loads((out / "A9" / "fake.ipynb").read_text())
    code = nb["cells"][1]
    assert code["outputs"] == [] and code["execution_count"] is None
    assert "".join(code["source"]) == ("from fake import double\n" + NOTEBOOK_TODO + "\n"
                                       'raise NotImplementedError("Implement this cell")\n'
                                       "print(double(2))")
    assert "gradient vanishes" not in "".join(nb["cells"][2]["source"])

    assert find_leaks(fake_repo, out) == []
    assert check_notebooks(out) == []
    assert import_failures(out) == {}
    assert has_solution_regions(fake_repo) and not has_solution_regions(out)
    code, output = run_copy_tests(out, "A9")
    assert_fails_cleanly(code, output, "fake A9")
    # ...and the same tests pass on the original, so the failures come from the stubs.
    code, output = run_copy_tests(fake_repo, "A9")
    assert code == 0, output


def test_leak_checks_catch_an_unstubbed_copy(fake_repo, tmp_path):
    """The checks above are not vacuous: a plain copy of the solutions fails them."""
    bad = tmp_path / "bad"
    shutil.copytree(fake_repo, bad)
    problems = find_leaks(fake_repo, bad)
    assert any("marker line left" in p for p in problems)
    assert any("appears verbatim" in p for p in problems)
    assert any("solution line leaked" in p and "squares_of_all_values_in_the_list))" in p
               for p in problems)
    assert check_notebooks(bad)  # outputs left in the notebook
    code, output = run_copy_tests(bad, "A9")
    assert code == 0  # solutions in place: nothing fails, so assert_fails_cleanly would object


def test_import_check_catches_module_level_regions(fake_repo, tmp_path):
    (fake_repo / "A9" / "broken.py").write_text("### BEGIN SOLUTION\nTABLE = [1, 2]\n### END SOLUTION\n")
    out = tmp_path / "student"
    make_student(fake_repo, out)
    failures = import_failures(out)
    assert list(failures) == ["A9/broken"] and "NotImplementedError" in failures["A9/broken"]


def test_malformed_markers_fail_with_file_and_line(fake_repo, tmp_path):
    out = tmp_path / "student"
    make_student(fake_repo, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    (fake_repo / "A9" / "bad.py").write_text("def f():\n    ### BEGIN SOLUTION\n    return 1\n")
    with pytest.raises(BuildError) as info:
        make_student(fake_repo, out)
    assert info.value.errors == [f"A9/bad.py:2: '{BEGIN}' without a matching '{END}'"]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # old copy kept

    proc = subprocess.run([sys.executable, str(SCRIPT), "--root", str(fake_repo), "--out", str(out)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode != 0
    assert "A9/bad.py:2:" in proc.stderr


def test_refuses_to_overwrite_the_repository(fake_repo):
    with pytest.raises(ValueError, match="refusing"):
        make_student(fake_repo, fake_repo)
    with pytest.raises(ValueError, match="refusing"):
        make_student(fake_repo, fake_repo.parent)
    with pytest.raises(ValueError, match="refusing"):  # inside the repository, outside build/
        make_student(fake_repo, fake_repo / "A9")
    assert (fake_repo / "A9" / "fake.py").read_text() == FAKE_MODULE
    make_student(fake_repo, fake_repo / "build" / "student")  # where `make student` writes
    assert (fake_repo / "build" / "student" / "A9" / "fake.py").is_file()


# ---------------------------------------------------------------------------------------
# (b), (c) the real repository
# ---------------------------------------------------------------------------------------

def has_solution_regions(root):
    """True for the staff repository; False for a student copy (no solution regions left), where
    a student's finished work would make the copy's tests pass and these checks mean nothing."""
    return any(BEGIN in path.read_text(encoding="utf-8") for path in assignment_files(root))


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    """The student copy of this repository, built once with the command-line tool."""
    if not has_solution_regions(ROOT):
        pytest.skip("this is a student copy: the checks of the copy made from the solutions do not apply")
    out = tmp_path_factory.mktemp("student") / "copy"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--root", str(ROOT), "--out", str(out)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, f"make_student failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_copy_layout(student_copy):
    for name in ["README.md", "CONTRIBUTING.md", "Makefile", "pyproject.toml", "requirements.txt", "constraints.txt",
                 "eecs598", "tests", "tools", "benchmarks"]:
        assert (student_copy / name).exists() == (ROOT / name).exists(), name
    for name in [".venv", "build", "results", ".git"]:
        assert not (student_copy / name).exists(), name
    assert not [p for p in student_copy.rglob("*") if p.name == "__pycache__"
                or p.suffix in (".pt", ".pth", ".pkl", ".zip")]
    assert not list(student_copy.glob("A6/*.jpg")), "generated sample images (git-ignored) copied"
    for folder in ROOT.glob(ASSIGNMENT_GLOB):
        if folder.is_dir():
            assert (student_copy / folder.name).is_dir(), folder.name
    # Outside the assignment folders nothing is changed.
    for name in ["eecs598", "tests", "tools"]:
        for path in (student_copy / name).rglob("*"):
            if path.is_file():
                original = ROOT / path.relative_to(student_copy)
                if original.is_file():  # (others may be editing the tree meanwhile)
                    assert path.read_bytes() == original.read_bytes(), path


def test_copy_assignment_modules_import(student_copy):
    if not assignment_files(student_copy, (".py",)):
        pytest.skip("no assignment modules yet")
    failures = import_failures(student_copy)
    if failures:  # tell stubbing problems from modules that are broken anyway
        broken_anyway = import_failures(ROOT, only={name.split("/")[0] for name in failures})
        failures = {(f"{name} (fails on the original repository too)" if name in broken_anyway
                     else f"{name} (imports on the original: code outside the solution regions "
                          f"depends on them)"): trace
                    for name, trace in failures.items()}
    assert not failures, "assignment modules that do not import in the student copy:\n" + "\n".join(
        f"--- {name}\n{trace}" for name, trace in failures.items())


def test_copy_has_no_solution_text(student_copy):
    problems = find_leaks(ROOT, student_copy)
    assert not problems, "\n".join(problems)


def test_copy_notebooks_are_clean(student_copy):
    problems = check_notebooks(student_copy)
    assert not problems, "\n".join(problems)


TEST_FOLDERS = sorted(p.name for p in (ROOT / "tests").glob(ASSIGNMENT_GLOB) if p.is_dir())


@pytest.mark.parametrize("test_folder", TEST_FOLDERS or ["A1"])
def test_copy_unit_tests_fail_cleanly(student_copy, test_folder):
    folder = student_copy / "tests" / test_folder
    if not folder.is_dir() or not list(folder.rglob("test_*.py")):
        pytest.skip(f"tests/{test_folder} has no tests yet")
    code, output = run_copy_tests(student_copy, test_folder)
    assert_fails_cleanly(code, output, f"tests/{test_folder} on the student copy")


def test_upto_releases_only_the_assignments_up_to_one(fake_repo, tmp_path):
    """A copy for students on an earlier assignment holds no later assignment, no later
    assignment's tests and no later benchmark (later assignments give earlier solutions as
    provided code)."""
    for name in ("A2", "A10"):
        (fake_repo / name).mkdir()
        (fake_repo / name / "solution.py").write_text("x = 1\n")
        (fake_repo / "tests" / name).mkdir()
        (fake_repo / "tests" / name / f"test_{name}.py").write_text("def test_x():\n    pass\n")
    (fake_repo / "benchmarks").mkdir()
    for b in ("bench_a2.py", "bench_a10.py", "run_all.py"):
        (fake_repo / "benchmarks" / b).write_text("pass\n")
    out = tmp_path / "student"
    make_student(fake_repo, out, upto="A9")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"A2/solution.py", "A9/fake.py", "tests/A2/test_A2.py", "tests/A9/test_fake.py",
            "benchmarks/bench_a2.py", "benchmarks/run_all.py"} <= files
    assert not any("A10" in f or "a10" in f for f in files), sorted(files)
    make_student(fake_repo, out, upto=2)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert "A2/solution.py" in files and not any(f.startswith(("A9", "tests/A9")) for f in files)
    with pytest.raises(ValueError):
        make_student(fake_repo, out, upto="tests")
    for missing in ("A11", 0):  # would release everything / nothing
        with pytest.raises(ValueError, match="names no assignment of this repository"):
            make_student(fake_repo, out, upto=missing)


# --- notebooks, the command line, data files outside git ----------------------------------

def test_markdown_answers_become_a_placeholder_not_code(fake_repo, tmp_path):
    """A solution region in a markdown cell becomes `YOUR ANSWER HERE`, not a raise."""
    from tools.make_student import MARKDOWN_TODO
    out = tmp_path / "student"
    make_student(fake_repo, out)
    nb = json.loads((out / "A9" / "fake.ipynb").read_text())
    assert "".join(nb["cells"][2]["source"]) == "Answer:\n" + MARKDOWN_TODO


def test_every_code_cell_loses_its_outputs(fake_repo, tmp_path):
    """Outputs go from every code cell, also from cells (and notebooks) without solution regions:
    an executed staff notebook shows the answers in its outputs."""
    nb = _fake_notebook()
    nb["cells"].append({"cell_type": "code", "metadata": {}, "execution_count": 9,
                        "outputs": [{"output_type": "stream", "name": "stdout", "text": ["val acc 0.913\n"]}],
                        "source": ["print(double(3))"]})
    (fake_repo / "A9" / "fake.ipynb").write_text(json.dumps(nb, indent=1))
    plain = {**_fake_notebook(), "cells": [nb["cells"][-1]]}
    (fake_repo / "A9" / "plain.ipynb").write_text(json.dumps(plain, indent=1))
    out = tmp_path / "student"
    make_student(fake_repo, out)
    assert check_notebooks(out) == []
    assert "val acc" not in (out / "A9" / "fake.ipynb").read_text() + (out / "A9" / "plain.ipynb").read_text()


def test_malformed_markers_in_a_notebook_fail_with_cell_and_line(fake_repo, tmp_path):
    nb = _fake_notebook()
    nb["cells"][1]["source"] = ["x = 1\n", "### BEGIN SOLUTION\n", "secret_answer = 42\n"]
    (fake_repo / "A9" / "fake.ipynb").write_text(json.dumps(nb, indent=1))
    out = tmp_path / "student"
    with pytest.raises(BuildError) as info:
        make_student(fake_repo, out)
    assert info.value.errors == [f"A9/fake.ipynb:cell 1:2: '{BEGIN}' without a matching '{END}'"]
    assert not out.exists()


def test_command_line_upto_releases_only_earlier_assignments(fake_repo, tmp_path):
    """`make student UPTO=A2` goes through the command line: --upto must reach make_student, and
    an --upto naming no assignment must fail (exit 1) without writing a copy."""
    (fake_repo / "A2").mkdir()
    (fake_repo / "A2" / "x.py").write_text("x = 1\n")
    out = tmp_path / "student"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--root", str(fake_repo), "--out", str(out), "--upto", "A2"],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert (out / "A2" / "x.py").is_file() and not (out / "A9").exists() and not (out / "tests" / "A9").exists()
    bad = tmp_path / "bad"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--root", str(fake_repo), "--out", str(bad), "--upto", "A7"],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 1 and "names no assignment" in proc.stderr and not bad.exists()


def test_data_files_are_left_out_outside_git(fake_repo, tmp_path):
    """Without a git checkout (a tarball, a copy of a copy) the patterns alone keep data out."""
    for name in ("a.npz", "b.pkl", "c.pth", "d.zip"):
        (fake_repo / "A9" / name).write_bytes(b"\0")
    out = tmp_path / "student"
    make_student(fake_repo, out)
    assert sorted(p.name for p in (out / "A9").iterdir()) == ["fake.ipynb", "fake.py", "plain.py"]


def test_outside_git_the_gitignore_patterns_keep_outputs_out(fake_repo, tmp_path):
    """Without a git checkout, .gitignore's patterns still decide: A9/*.jpg (outputs students
    produce and submit, as A6's images), a folder pattern and a name pattern anywhere."""
    (fake_repo / ".gitignore").write_text("# outputs\nA9/*.jpg\nscratch/\n*.lock\n!keep.lock\n/notes.md\n")
    (fake_repo / "notes.md").write_text("x")  # "/notes.md": at the root only
    (fake_repo / "A9" / "notes.md").write_text("kept\n")
    (fake_repo / "A9" / "samples.jpg").write_bytes(b"\0")
    (fake_repo / "A9" / "scratch").mkdir()
    (fake_repo / "A9" / "scratch" / "notes.py").write_text("x = 1\n")
    (fake_repo / "A9" / "sub").mkdir()
    (fake_repo / "A9" / "sub" / "figure.jpg").write_bytes(b"\0")  # A9/*.jpg is not recursive
    (fake_repo / "eecs598" / "run.lock").write_text("")
    out = tmp_path / "student"
    make_student(fake_repo, out)
    assert sorted(p.relative_to(out / "A9").as_posix() for p in (out / "A9").rglob("*") if p.is_file()) == [
        "fake.ipynb", "fake.py", "notes.md", "plain.py", "sub/figure.jpg"]
    assert not (out / "eecs598" / "run.lock").exists() and (out / ".gitignore").is_file()
