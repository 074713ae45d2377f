"""Zip an assignment's submission files: ``make_a1_submission(...)`` ... ``make_a6_submission(...)``.

Each function writes ``{uniquename}_{umid}_{A#}.zip`` into the assignment folder. The
files to include are listed in ``SUBMISSION_FILES`` (paths relative to the assignment
folder); all of them are checked before anything is written, and one
MissingSubmissionFiles names every missing file (a FileNotFoundError, and a ValueError as the
course raised).

Names: pass ``uniquename`` and ``umid``; otherwise they are read from the environment
variables ``EECS598_UNIQUENAME`` / ``EECS598_UMID``; otherwise they are asked for with
``input()`` when someone can answer: on an interactive terminal, or in a Jupyter / Colab
notebook (as in the course). Without any of these (a headless run: CI, nbval, a script with
no terminal, a kernel whose frontend takes no input) a ValueError says what to pass.

Numbering: this project's A4 is sequence models (captioning + Transformers) and A5 is
detection; the zip name uses this project's number.
"""
import os
import sys
import zipfile

UNIQUENAME_ENV = "EECS598_UNIQUENAME"
UMID_ENV = "EECS598_UMID"

class MissingSubmissionFiles(FileNotFoundError, ValueError):
    """Submission files are missing. Both a FileNotFoundError and, as in the course, a ValueError."""


# Files each assignment's zip holds, relative to the assignment folder. Later assignments
# may adjust these lists (e.g. SUBMISSION_FILES["A4"].append(...)).
SUBMISSION_FILES = {
    "A1": [
        "pytorch101.py",
        "pytorch101.ipynb",
        "knn.py",
        "knn.ipynb",
    ],
    "A2": [
        "linear_classifier.py",
        "linear_classifier.ipynb",
        "two_layer_net.py",
        "two_layer_net.ipynb",
        "svm_best_model.pt",
        "softmax_best_model.pt",
        "nn_best_model.pt",
    ],
    "A3": [
        "fully_connected_networks.py",
        "fully_connected_networks.ipynb",
        "convolutional_networks.py",
        "convolutional_networks.ipynb",
        "best_overfit_five_layer_net.pth",
        "best_two_layer_net.pth",
        "one_minute_deepconvnet.pth",
        "overfit_deepconvnet.pth",
    ],
    "A4": [  # sequence models (the course's A5)
        "rnn_lstm_captioning.py",
        "caption_decoding.py",  # decoder_start / decoder_step (beam search and ensembles)
        "rnn_lstm_captioning.ipynb",
        "arithmetic_transformer.py",  # the course's transformers.py (renamed: clashes with HF)
        "Transformers.ipynb",
        # No weight files: the course's transformer.pt / rnn_lstm_attention_submission.pt are
        # not written by these notebooks (checkpoints stay in $EECS598_CACHE, never in git).
    ],
    "A5": [  # detection (the course's A4)
        "common.py",
        "one_stage_detector.py",
        "one_stage_detector.ipynb",
        "two_stage_detector.py",
        "two_stage_detector.ipynb",
        # No weight files: the course's fcos_detector.pt / rcnn_detector.pt are not written by
        # these notebooks (checkpoints stay in $EECS598_CACHE/checkpoints/A5).
    ],
    "A6": [
        "vae.py",
        "variational_autoencoders.ipynb",
        "gan.py",
        "generative_adversarial_networks.ipynb",
        "vae_generation.jpg",
        "conditional_vae_generation.jpg",
        "fc_gan_results.jpg",
        "ls_gan_results.jpg",
        "dc_gan_results.jpg",
    ],
}


def make_a1_submission(assignment_path, uniquename=None, umid=None):
    """Zip A1 (pytorch101, knn) into ``assignment_path``; returns the zip's path."""
    return _make_submission(assignment_path, SUBMISSION_FILES["A1"], "A1", uniquename, umid)


def make_a2_submission(assignment_path, uniquename=None, umid=None):
    """Zip A2 (linear classifiers, two-layer net, best models); returns the zip's path."""
    return _make_submission(assignment_path, SUBMISSION_FILES["A2"], "A2", uniquename, umid)


def make_a3_submission(assignment_path, uniquename=None, umid=None):
    """Zip A3 (fully connected and convolutional networks, saved nets); returns the zip's path."""
    return _make_submission(assignment_path, SUBMISSION_FILES["A3"], "A3", uniquename, umid)


def make_a4_submission(assignment_path, uniquename=None, umid=None):
    """Zip A4 (this project's numbering: captioning + Transformers); returns the zip's path."""
    return _make_submission(assignment_path, SUBMISSION_FILES["A4"], "A4", uniquename, umid)


def make_a5_submission(assignment_path, uniquename=None, umid=None):
    """Zip A5 (this project's numbering: FCOS and Faster R-CNN detection); returns the zip's path."""
    return _make_submission(assignment_path, SUBMISSION_FILES["A5"], "A5", uniquename, umid)


def make_a6_submission(assignment_path, uniquename=None, umid=None):
    """Zip A6 (VAE, GAN and their generated images); returns the zip's path."""
    return _make_submission(assignment_path, SUBMISSION_FILES["A6"], "A6", uniquename, umid)


def _make_submission(assignment_path, file_list, assignment_no, uniquename=None, umid=None):
    """Write ``{uniquename}_{umid}_{assignment_no}.zip`` holding `file_list` into `assignment_path`.

    assignment_path: the assignment folder; file_list: paths relative to it (each one
    is stored under that same relative name); assignment_no: e.g. "A1".
    Raises MissingSubmissionFiles naming every missing file (nothing is written then), and
    ValueError when the names cannot be found (see the module docstring).
    Returns the zip's path.
    """
    assignment_path = os.fspath(assignment_path)
    missing = [f for f in file_list if not os.path.isfile(os.path.join(assignment_path, f))]
    if missing:
        from .utils import quick_mode
        advice = "Run the notebooks to the end (they save the models and images) and try again."
        if quick_mode():
            advice += ("\nQuick mode (EECS598_QUICK=1) is on: the notebooks then save them to a temporary "
                       "folder, not here. Unset it and run them in full mode.")
        raise MissingSubmissionFiles(
            "Cannot make the %s submission: %d file(s) missing in %s:\n  %s\n%s"
            % (assignment_no, len(missing), os.path.abspath(assignment_path), "\n  ".join(missing), advice))

    uniquename, umid = _get_user_info(uniquename, umid)
    zip_path = os.path.join(assignment_path, "{}_{}_{}.zip".format(uniquename, umid, assignment_no))
    print("Writing zip file to: ", zip_path)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for filename in file_list:
            zf.write(os.path.join(assignment_path, filename), filename)
    return zip_path


_MISSING_NAMES = (
    "Missing uniquename and/or umid: pass them, e.g. "
    "make_a1_submission(path, uniquename='justincj', umid='12345678'), or set the "
    "environment variables %s and %s (nowhere to prompt for them)." % (UNIQUENAME_ENV, UMID_ENV))


def _in_notebook_kernel():
    """True inside a Jupyter / Colab kernel, whose frontend may answer ``input()``."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


def _can_prompt():
    try:
        if sys.stdin is not None and sys.stdin.isatty():
            return True
    except (AttributeError, ValueError):
        pass
    return _in_notebook_kernel()


def _ask(question):
    """``input(question)``; a kernel run without a frontend stdin (nbval, nbclient) -> ValueError."""
    try:
        return input(question)
    except Exception as error:
        if type(error).__name__ == "StdinNotImplementedError":  # ipykernel, allow_stdin=False
            raise ValueError(_MISSING_NAMES) from error
        raise


def _get_user_info(uniquename=None, umid=None):
    """Resolve (uniquename, umid): arguments, then env variables, then input() where someone can answer."""
    if uniquename is None:
        uniquename = os.environ.get(UNIQUENAME_ENV) or None
    if umid is None:
        umid = os.environ.get(UMID_ENV) or None
    if uniquename is None or umid is None:
        if not _can_prompt():
            raise ValueError(_MISSING_NAMES)
        if uniquename is None:
            uniquename = _ask("Enter your uniquename (e.g. justincj): ")
        if umid is None:
            umid = _ask("Enter your umid (e.g. 12345678): ")
    uniquename, umid = str(uniquename).strip(), str(umid).strip()
    for what, value in (("uniquename", uniquename), ("umid", umid)):
        if not value or any(c in value for c in "/\\:") or value in {".", ".."}:
            raise ValueError("Invalid %s %r: it must be non-empty and contain no path separators." % (what, value))
    return uniquename, umid
