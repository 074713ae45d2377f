"""eecs598.submit: zip contents, missing files, headless names."""
import builtins
import io
import sys
import zipfile
from pathlib import Path

import pytest

from eecs598 import submit
from eecs598.submit import SUBMISSION_FILES

MAKERS = {f"A{i}": getattr(submit, f"make_a{i}_submission") for i in range(1, 7)}


@pytest.fixture(autouse=True)
def headless(monkeypatch):
    """No names in the environment, no terminal, and input() must not be called."""
    monkeypatch.delenv(submit.UNIQUENAME_ENV, raising=False)
    monkeypatch.delenv(submit.UMID_ENV, raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    def no_input(prompt=""):
        raise AssertionError(f"input() called headless: {prompt}")

    monkeypatch.setattr(builtins, "input", no_input)


def populate(folder, names):
    for name in names:
        (folder / name).write_bytes(f"content of {name}".encode())


@pytest.mark.parametrize("assignment", sorted(SUBMISSION_FILES))
def test_zip_contents(tmp_path, assignment):
    populate(tmp_path, SUBMISSION_FILES[assignment])
    (tmp_path / "unrelated.txt").write_text("not submitted")
    path = MAKERS[assignment](tmp_path, "justincj", "12345678")
    expected = tmp_path / f"justincj_12345678_{assignment}.zip"
    assert str(path) == str(expected) and expected.is_file()
    with zipfile.ZipFile(expected) as zf:
        assert zf.namelist() == SUBMISSION_FILES[assignment]
        for name in SUBMISSION_FILES[assignment]:
            assert zf.read(name) == f"content of {name}".encode()


def test_project_numbering():
    assert "rnn_lstm_captioning.py" in SUBMISSION_FILES["A4"] and "arithmetic_transformer.py" in SUBMISSION_FILES["A4"]
    assert "one_stage_detector.py" in SUBMISSION_FILES["A5"] and "common.py" in SUBMISSION_FILES["A5"]


def test_all_missing_files_in_one_error(tmp_path):
    files = SUBMISSION_FILES["A3"]
    present, missing = files[::2], files[1::2]
    populate(tmp_path, present)
    with pytest.raises(FileNotFoundError) as info:
        submit.make_a3_submission(tmp_path, "justincj", "12345678")
    message = str(info.value)
    for name in missing:
        assert name in message
    for name in present:
        assert name not in message
    assert not list(tmp_path.glob("*.zip")), "nothing is written when files are missing"


def test_missing_files_reported_before_names(tmp_path):
    with pytest.raises(FileNotFoundError):
        submit.make_a1_submission(tmp_path)


def test_missing_files_are_also_the_courses_value_error(tmp_path):
    """Code written for the course catches ValueError around the submit call."""
    with pytest.raises(ValueError, match="Cannot make the A1 submission"):
        submit.make_a1_submission(tmp_path, "justincj", "12345678")


def test_headless_without_names_raises_clear_error(tmp_path):
    populate(tmp_path, SUBMISSION_FILES["A1"])
    with pytest.raises(ValueError) as info:
        submit.make_a1_submission(tmp_path)
    message = str(info.value)
    assert "uniquename" in message and "umid" in message
    assert submit.UNIQUENAME_ENV in message and submit.UMID_ENV in message
    assert not list(tmp_path.glob("*.zip"))


def test_names_from_environment(tmp_path, monkeypatch):
    populate(tmp_path, SUBMISSION_FILES["A2"])
    monkeypatch.setenv("EECS598_UNIQUENAME", "envname")
    monkeypatch.setenv("EECS598_UMID", "87654321")
    submit.make_a2_submission(tmp_path)
    assert (tmp_path / "envname_87654321_A2.zip").is_file()
    submit.make_a2_submission(tmp_path, uniquename="argname")  # arguments win over the environment
    assert (tmp_path / "argname_87654321_A2.zip").is_file()


def test_prompts_on_a_terminal(tmp_path, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    populate(tmp_path, SUBMISSION_FILES["A1"])
    monkeypatch.setattr(sys, "stdin", Tty(""))
    answers = iter(["promptname", "11112222"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    submit.make_a1_submission(tmp_path)
    assert (tmp_path / "promptname_11112222_A1.zip").is_file()


class _FakeKernelShell:
    kernel = object()


def _fake_ipython(monkeypatch, shell):
    fake = type(sys)("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)


def test_prompts_in_a_notebook_kernel(tmp_path, monkeypatch):
    """Jupyter / Colab: stdin is no terminal, but the frontend answers input(), as in the course."""
    populate(tmp_path, SUBMISSION_FILES["A3"])
    _fake_ipython(monkeypatch, _FakeKernelShell())
    answers = iter(["nbname", "33334444"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(answers))
    submit.make_a3_submission(tmp_path)
    assert (tmp_path / "nbname_33334444_A3.zip").is_file()


def test_kernel_without_a_frontend_stdin_raises_the_clear_error(tmp_path, monkeypatch):
    class StdinNotImplementedError(RuntimeError):  # what ipykernel raises when allow_stdin is False
        pass

    def no_stdin(prompt=""):
        raise StdinNotImplementedError("raw_input was called, but this frontend does not support input requests.")

    populate(tmp_path, SUBMISSION_FILES["A1"])
    _fake_ipython(monkeypatch, _FakeKernelShell())
    monkeypatch.setattr(builtins, "input", no_stdin)
    with pytest.raises(ValueError, match=submit.UNIQUENAME_ENV):
        submit.make_a1_submission(tmp_path)
    assert not list(tmp_path.glob("*.zip"))


def test_plain_ipython_without_a_kernel_does_not_prompt(tmp_path, monkeypatch):
    populate(tmp_path, SUBMISSION_FILES["A1"])
    _fake_ipython(monkeypatch, None)  # IPython imported, no shell running (the autouse input() would fail)
    with pytest.raises(ValueError, match="uniquename"):
        submit.make_a1_submission(tmp_path)


def test_rejects_path_like_names(tmp_path):
    populate(tmp_path, SUBMISSION_FILES["A1"])
    with pytest.raises(ValueError):
        submit.make_a1_submission(tmp_path, "../evil", "123")
    with pytest.raises(ValueError):
        submit.make_a1_submission(tmp_path, "name", "")


def test_listed_code_and_notebooks_exist_in_the_repository():
    root = Path(__file__).resolve().parents[2]
    present = [a for a in SUBMISSION_FILES if (root / a).is_dir()]  # `make student UPTO=A2`: fewer
    assert "A1" in present
    missing = [f"{a}/{name}" for a in present for name in SUBMISSION_FILES[a]
               if name.endswith((".py", ".ipynb")) and not (root / a / name).is_file()]
    assert not missing, f"SUBMISSION_FILES lists files that do not exist: {missing}"


def test_the_courses_graded_files_are_in_the_zips():
    """The models the course grades (COURSE_API.md) must stay in SUBMISSION_FILES."""
    assert {"svm_best_model.pt", "softmax_best_model.pt", "nn_best_model.pt"} <= set(SUBMISSION_FILES["A2"])
    assert {"best_overfit_five_layer_net.pth", "one_minute_deepconvnet.pth",
            "overfit_deepconvnet.pth"} <= set(SUBMISSION_FILES["A3"])


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_submission_lists_hold_every_student_file():
    """Every notebook of A1 / A3 / A4 / A6 and every weight file the A3 notebooks save is in
    SUBMISSION_FILES (an entry deleted from the lists went unnoticed); assignments absent from a
    partial student release are skipped."""
    import os
    import re
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    for a in ("A1", "A3", "A4", "A6"):
        if not os.path.isdir(os.path.join(root, a)):
            continue
        for nb in os.listdir(os.path.join(root, a)):
            if nb.endswith(".ipynb"):
                assert nb in submit.SUBMISSION_FILES[a], (a, nb)
    # weight files the A3 notebooks save
    for a, nbs in (("A3", ["fully_connected_networks.ipynb", "convolutional_networks.ipynb"]),):
        for nb in nbs if os.path.isdir(os.path.join(root, a)) else []:
            text = open(os.path.join(root, a, nb)).read()
            for w in set(re.findall(r"[a-z_]+\.pth", text)):
                assert w in submit.SUBMISSION_FILES[a], w
    for f in ("gan.py", "vae.py", "caption_decoding.py", "knn.py", "pytorch101.py"):
        assert any(f in v for v in submit.SUBMISSION_FILES.values()), f


@pytest.mark.parametrize("quick", ["0", "1"])
def test_one_missing_file_is_reported_and_no_zip(tmp_path, monkeypatch, quick):
    """In quick mode the notebooks save their files to a temporary folder: the error says so."""
    monkeypatch.setenv("EECS598_QUICK", quick)
    files = submit.SUBMISSION_FILES["A1"]
    for f in files[1:]:
        (tmp_path / f).write_text("x")
    with pytest.raises(submit.MissingSubmissionFiles) as err:
        submit.make_a1_submission(tmp_path, uniquename="u", umid="1")
    assert files[0] in str(err.value)
    assert ("Quick mode (EECS598_QUICK=1) is on" in str(err.value)) == (quick == "1")
    assert not list(tmp_path.glob("*.zip"))


def test_names_are_stripped_and_empty_env_means_unset(tmp_path, monkeypatch):
    for f in submit.SUBMISSION_FILES["A1"]:
        (tmp_path / f).write_text("x")
    z = submit.make_a1_submission(tmp_path, uniquename=" u ", umid=" 1\n")
    assert Path(z).name == "u_1_A1.zip"
    monkeypatch.setenv("EECS598_UNIQUENAME", "")
    monkeypatch.setattr(submit, "_can_prompt", lambda: True)
    monkeypatch.setattr("builtins.input", lambda q: "v")
    assert submit._get_user_info(None, "2") == ("v", "2")


def test_second_submission_replaces_the_zip(tmp_path):
    for f in submit.SUBMISSION_FILES["A1"]:
        (tmp_path / f).write_text("x")
    submit.make_a1_submission(tmp_path, uniquename="u", umid="1")
    z = submit.make_a1_submission(tmp_path, uniquename="u", umid="1")
    names = zipfile.ZipFile(z).namelist()
    assert sorted(names) == sorted(submit.SUBMISSION_FILES["A1"])
