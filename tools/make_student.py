"""Write the stubbed student copy of the repository (`make student`).

    python tools/make_student.py --out build/student [--root .] [--upto A2]

Copies the course files (README.md, CONTRIBUTING.md, Makefile, pyproject.toml,
requirements.txt, .gitignore, eecs598/, tests/, tools/, benchmarks/ and every assignment
folder A1/, A2/, ...) to --out, which is recreated. Virtual environments, build outputs,
results, caches and data files (*.pt, *.pth, *.pkl, *.zip, *.npz) are left out.

In every assignment file (A*/**/*.py and the cells of A*/**/*.ipynb) each solution region

        ### BEGIN SOLUTION
        ### HINT: optional message (must directly follow BEGIN;
        ### further "###" lines continue it)
        ...solution...
        ### END SOLUTION

is replaced, at the BEGIN marker's indentation, by

        raise NotImplementedError("optional message")

(notebook code cells get a `# YOUR CODE HERE` line above the raise; notebook markdown cells
get `YOUR ANSWER HERE`). Notebooks are also stripped of outputs and execution counts.
Files without markers are copied unchanged. Unbalanced or nested markers are errors
(reported as file:line, exit status 1) and leave any previous copy untouched.

`--upto A2` releases the assignments up to A2 only: later assignment folders, their test
folders (tests/A3, ...) and their benchmarks (benchmarks/bench_a3.py, ...) are left out. Later
assignments give some earlier solutions as provided code (A3's `svm_loss` and `softmax_loss`
are A2's vectorized losses), so a copy for students still working on A2 must not hold A3.

`stub_source(text)` and `make_student(root, out)` are importable for tests.
"""
import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HINT = "### HINT:"
DEFAULT_HINT = "Implement this: see the docstring above"
NOTEBOOK_HINT = "Implement this cell"
NOTEBOOK_TODO = "# YOUR CODE HERE"
MARKDOWN_TODO = "YOUR ANSWER HERE"

# What the student copy holds (relative to the repository root); missing ones are skipped.
TOP_FILES = ["README.md", "CONTRIBUTING.md", "Makefile", "pyproject.toml", "requirements.txt", "constraints.txt",
             ".gitignore"]
TOP_DIRS = ["eecs598", "tests", "tools", "benchmarks"]
ASSIGNMENT_GLOB = "A[0-9]*"  # the same folders tests/conftest.py puts on sys.path
# Never copied, at any depth.
SKIP_DIRS = {".venv", "venv", "build", "dist", "results", "__pycache__", ".git",
             ".ipynb_checkpoints", ".pytest_cache", "cifar-10-batches-py", "VOCdevkit"}
SKIP_PATTERNS = ["*.pt", "*.pth", "*.pkl", "*.zip", "*.npz", "*.pyc", "*.egg-info"]


class StubError(ValueError):
    """A malformed solution region; `line` is 1-based within the text that was stubbed."""

    def __init__(self, message, line):
        super().__init__(f"line {line}: {message}")
        self.message = message
        self.line = line


def _literal(text):
    """A double-quoted Python string literal for `text`."""
    return json.dumps(text, ensure_ascii=False)


def _line_ending(line):
    for ending in ("\r\n", "\n", "\r"):
        if line.endswith(ending):
            return ending
    return ""


def stub_source(text, *, kind="python", default_hint=None):
    """Replace every solution region in `text`; return `(new_text, regions)`.

    `regions` lists the removed solution texts (the lines strictly between the markers,
    without the HINT lines), in order. `kind` is "python" (a raise), "notebook" (a
    `# YOUR CODE HERE` line plus the raise) or "markdown" (a `YOUR ANSWER HERE` line).
    Raises StubError for an END without BEGIN, a BEGIN inside a region, or a BEGIN
    without END. Text outside the regions is returned unchanged.
    """
    if kind not in ("python", "notebook", "markdown"):
        raise ValueError(f"unknown kind {kind!r}")
    if default_hint is None:
        default_hint = NOTEBOOK_HINT if kind == "notebook" else DEFAULT_HINT
    lines = text.splitlines(keepends=True)
    out, regions = [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped == END:
            raise StubError(f"'{END}' without a matching '{BEGIN}'", i + 1)
        if stripped != BEGIN:
            out.append(line)
            i += 1
            continue
        begin = i
        indent = line[: len(line) - len(line.lstrip())]
        newline = _line_ending(line) or "\n"
        hint = None
        j = i + 1
        if j < len(lines) and lines[j].strip().startswith(HINT):
            parts = [lines[j].strip()[len(HINT):].strip()]
            j += 1
            while j < len(lines) and lines[j].strip().startswith("###") and lines[j].strip() not in (BEGIN, END):
                parts.append(lines[j].strip()[3:].strip())  # the hint goes on
                j += 1
            hint = " ".join(p for p in parts if p) or None
        body_start = j
        while j < len(lines) and lines[j].strip() not in (BEGIN, END):
            j += 1
        if j == len(lines):
            raise StubError(f"'{BEGIN}' without a matching '{END}'", begin + 1)
        if lines[j].strip() == BEGIN:
            raise StubError(f"nested '{BEGIN}' (the region opened on line {begin + 1} "
                            f"is not closed)", j + 1)
        regions.append("".join(lines[body_start:j]))
        message = hint or default_hint
        if kind == "markdown":
            out.append(f"{indent}{MARKDOWN_TODO}{newline}")
        else:
            if kind == "notebook":
                out.append(f"{indent}{NOTEBOOK_TODO}{newline}")
            out.append(f"{indent}raise NotImplementedError({_literal(message)}){newline}")
        end_line = lines[j]
        if not _line_ending(end_line):
            # The END marker closed the text without a newline: do the same.
            out[-1] = out[-1].rstrip("\r\n")
        i = j + 1
    return "".join(out), regions


def _source_text(source):
    return "".join(source) if isinstance(source, list) else source


def _source_lines(text):
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def stub_notebook(text):
    """Stub the cells of a notebook (JSON text); return `(new_text or None, regions)`.

    Regions are replaced in code and markdown cells; code cells lose their outputs and
    execution counts. Returns None as new text when nothing needed changing (the file is
    then copied byte for byte). StubError.line is the line within the cell and the error
    carries `cell` (0-based index).
    """
    nb = json.loads(text)
    changed = False
    regions = []
    for index, cell in enumerate(nb.get("cells", [])):
        cell_type = cell.get("cell_type")
        if cell_type in ("code", "markdown"):
            source = _source_text(cell.get("source", ""))
            try:
                new, found = stub_source(source, kind="notebook" if cell_type == "code" else "markdown")
            except StubError as err:
                err.cell = index
                raise
            if found:
                regions.extend(found)
                cell["source"] = _source_lines(new)
                changed = True
        if cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"] = []
            cell["execution_count"] = None
    if not changed:
        return None, regions
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n", regions


def _skipped(name, is_dir):
    if is_dir and name in SKIP_DIRS:
        return True
    return any(fnmatch.fnmatch(name, pattern) for pattern in SKIP_PATTERNS)


def _walk_files(directory, exclude):
    """Files under `directory` to copy (sorted), pruning skipped names and `exclude`."""
    for current, dirs, files in os.walk(directory):
        current = Path(current)
        dirs[:] = sorted(d for d in dirs if not _skipped(d, True)
                         and (current / d).resolve() not in exclude
                         and not (current / d).is_symlink())
        for name in sorted(files):
            if not _skipped(name, False):
                yield current / name


def assignment_number(name):
    """"A3" -> 3; None for names that are not an assignment ("A3x", "tests")."""
    return int(name[1:]) if len(name) > 1 and name[0] in "Aa" and name[1:].isdigit() else None


def _later(rel, upto):
    """True when `rel` belongs to an assignment after `upto` (its folder, its tests folder or
    its benchmark script benchmarks/bench_a<n>.py)."""
    if upto is None:
        return False
    parts = rel.parts
    if parts and parts[0] in ("tests",) and len(parts) > 1:
        number = assignment_number(parts[1])
    elif parts and parts[0] == "benchmarks" and len(parts) == 2 and parts[1].startswith("bench_a"):
        number = assignment_number(parts[1][len("bench_"):-len(".py")])
    else:
        number = assignment_number(parts[0]) if parts else None
    return number is not None and number > upto


def git_ignored(root, rels):
    """The paths among `rels` (relative to `root`) that git ignores in the repository at
    `root` (outputs such as A6's generated images, which would hand students the staff's
    results). Outside a git checkout (a tarball, a copy), or without git, the patterns of
    `root/.gitignore` decide (`gitignore_matches`)."""
    rels = [rel.as_posix() for rel in rels]
    if not rels:
        return set()
    if (root / ".git").exists():
        try:
            done = subprocess.run(["git", "-C", str(root), "check-ignore", "--stdin", "-z"],
                                  input="\0".join(rels) + "\0", capture_output=True, text=True, check=False)
        except OSError:
            done = None
        if done is not None and done.returncode in (0, 1):  # 1: nothing ignored
            return {Path(p) for p in done.stdout.split("\0") if p}
    return {Path(rel) for rel in gitignore_matches(root, rels)}


def gitignore_matches(root, rels):
    """The paths among `rels` (POSIX, relative to `root`) that the patterns of `root/.gitignore`
    match, in git's basic forms: "name/" matches a folder anywhere, a pattern with another "/"
    (leading or inside) matches the path from the root (a folder it matches takes its contents
    along), any other matches a file or folder name anywhere (negations "!" are not supported
    and skipped)."""
    path = root / ".gitignore"
    if not path.is_file():
        return []
    patterns = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    patterns = [p for p in patterns if p and not p.startswith(("#", "!"))]
    matched = []
    for rel in rels:
        parts = rel.split("/")
        for pattern in patterns:
            if pattern.endswith("/"):
                hit = any(fnmatch.fnmatchcase(part, pattern.rstrip("/")) for part in parts[:-1])
            elif "/" in pattern.rstrip("/"):  # from the root ("A6/*.jpg", "/build"); "*" within one name
                segments = pattern.strip("/").split("/")
                hit = len(parts) >= len(segments) and all(
                    fnmatch.fnmatchcase(part, segment) for part, segment in zip(parts, segments))
            else:
                hit = any(fnmatch.fnmatchcase(part, pattern.lstrip("/")) for part in parts)
            if hit:
                matched.append(rel)
                break
    return matched


def _sources(root, exclude, upto=None):
    """(path, relative path, is_assignment_file) for everything the copy holds: the files
    below, less those git ignores."""
    found = list(_candidates(root, exclude, upto))
    ignored = git_ignored(root, [rel for _, rel, _ in found])
    return [item for item in found if item[1] not in ignored]


def _candidates(root, exclude, upto=None):
    for name in TOP_FILES:
        path = root / name
        if path.is_file():
            yield path, Path(name), False
    for name in TOP_DIRS:
        if (root / name).is_dir():
            for path in _walk_files(root / name, exclude):
                if not _later(path.relative_to(root), upto):
                    yield path, path.relative_to(root), False
    for folder in sorted(root.glob(ASSIGNMENT_GLOB)):
        if (folder.is_dir() and not _skipped(folder.name, True) and folder.resolve() not in exclude
                and not _later(folder.relative_to(root), upto)):
            for path in _walk_files(folder, exclude):
                yield path, path.relative_to(root), True


class BuildError(Exception):
    """One or more assignment files have malformed solution regions."""

    def __init__(self, errors):
        super().__init__("\n".join(errors))
        self.errors = errors


def _stub_file(path, rel):
    """New content for an assignment file, or None to copy it unchanged; and #regions."""
    if path.suffix == ".py":
        text = path.read_text(encoding="utf-8")
        try:
            new, regions = stub_source(text)
        except StubError as err:
            raise BuildError([f"{rel}:{err.line}: {err.message}"]) from None
        return (new if regions else None), len(regions)
    if path.suffix == ".ipynb":
        text = path.read_text(encoding="utf-8")
        try:
            new, regions = stub_notebook(text)
        except StubError as err:
            raise BuildError([f"{rel}:cell {err.cell}:{err.line}: {err.message}"]) from None
        except json.JSONDecodeError as err:
            raise BuildError([f"{rel}:{err.lineno}: not a valid notebook ({err.msg})"]) from None
        return new, len(regions)
    return None, 0


def make_student(root, out, upto=None):
    """Write the stubbed copy of the repository at `root` to `out` (recreated); with `upto`
    ("A2" or 2), only the assignments up to that one (see the module docstring).

    Returns {relative path: number of regions stubbed} for every assignment .py/.ipynb.
    Raises BuildError (listing every file:line problem) without touching `out` when any
    assignment file has malformed markers.
    """
    root = Path(root).resolve()
    out = Path(out).resolve()
    if out == root or out in root.parents:
        raise ValueError(f"refusing to write the student copy over the repository itself: {out}")
    if root in out.parents and root / "build" not in (out, *out.parents):
        # e.g. --out A1 would replace the solutions of A1 by their stubs
        raise ValueError(f"refusing to write the student copy inside the repository outside build/: {out}")
    if not (root / "eecs598").is_dir() and not list(root.glob(ASSIGNMENT_GLOB)):
        raise ValueError(f"{root} does not look like the course repository (no eecs598/, no A*/)")

    if upto is not None and not isinstance(upto, int):
        number = assignment_number(str(upto))
        if number is None:
            raise ValueError(f"upto must name an assignment such as A2, not {upto!r}")
        upto = number
    if upto is not None:
        present = sorted(assignment_number(f.name) for f in root.glob(ASSIGNMENT_GLOB)
                         if f.is_dir() and assignment_number(f.name) is not None)
        if upto not in present:
            # A9 would quietly release everything, A0 nothing
            raise ValueError(f"upto names no assignment of this repository: A{upto} "
                             f"(it has {', '.join(f'A{n}' for n in present)})")

    # Stub everything first (in memory), so a malformed file leaves the old copy intact.
    plan, report, errors = [], {}, []
    for path, rel, assignment in _sources(root, exclude={out}, upto=upto):
        content = None
        if assignment and path.suffix in (".py", ".ipynb"):
            try:
                content, count = _stub_file(path, rel)
            except BuildError as err:
                errors.extend(err.errors)
                continue
            report[rel.as_posix()] = count
        plan.append((path, rel, content))
    if errors:
        raise BuildError(errors)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for path, rel, content in plan:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if content is None:
                shutil.copy2(path, target)
            else:
                with open(target, "w", encoding="utf-8", newline="") as f:
                    f.write(content)
                shutil.copymode(path, target)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the student copy (recreated)")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="repository root (default: this script's repository)")
    parser.add_argument("--upto", default=None,
                        help="release the assignments up to this one only, e.g. A2 (default: all)")
    args = parser.parse_args(argv)
    try:
        report = make_student(args.root, args.out, upto=args.upto)
    except BuildError as err:
        for line in err.errors:
            print(f"error: {line}", file=sys.stderr)
        print(f"make_student: {len(err.errors)} error(s); {args.out} left unchanged", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"make_student: {err}", file=sys.stderr)
        return 1
    width = max((len(name) for name in report), default=0)
    for name, count in sorted(report.items()):
        print(f"  {name:<{width}}  {count} region{'s' if count != 1 else ''} stubbed")
    total = sum(report.values())
    stubbed = sum(1 for count in report.values() if count)
    print(f"student copy written to {args.out}: {total} regions stubbed in {stubbed} of "
          f"{len(report)} assignment files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
