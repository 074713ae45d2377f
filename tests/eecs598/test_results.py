"""eecs598.results: records, merging into results.json, and RESULTS.md."""
import json

import numpy as np
import pytest
import torch

from eecs598.results import load_records, make_record, render_markdown, write_results


def _record(metric, value, mode="full", **details):
    return make_record("A9", metric, value, "%", data="toy", device="cpu", seconds=1.0, mode=mode,
                       details=details)


def test_merge_replaces_same_key_and_keeps_the_rest(tmp_path):
    write_results(tmp_path, [_record("a", 1.0), _record("b", 2.0), _record("a", 5.0, mode="quick")])
    rows = write_results(tmp_path, [_record("a", 3.0)])
    got = {(r["metric"], r["mode"]): r["value"] for r in rows}
    assert got == {("a", "full"): 3.0, ("b", "full"): 2.0, ("a", "quick"): 5.0}
    assert load_records(tmp_path / "results.json") == rows
    assert (tmp_path / "RESULTS.md").read_text() == render_markdown(rows)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["RESULTS.md", "results.json"]


def test_tensor_and_numpy_details_are_written_as_numbers(tmp_path):
    write_results(tmp_path, [_record("a", torch.tensor(0.5), curve=torch.tensor([1.0, 2.0]),
                                     count=np.int64(3), best=torch.tensor(7))])
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["value"] == 0.5 and row["details"] == {"curve": [1.0, 2.0], "count": 3, "best": 7}


def test_non_finite_numbers_are_written_as_standard_json_null(tmp_path):
    """A diverged run's NaN loss (or an infinity) becomes null: the file parses without
    Python's NaN extension, and what write_results returns is what the file holds."""
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    rows = write_results(tmp_path, [_record("a", float("nan"), final_loss=float("nan"),
                                            curve=[1.0, float("inf"), np.float64("-inf")],
                                            t=torch.tensor([2.0, float("nan")]))])
    (row,) = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert row["value"] is None and row["details"] == {"final_loss": None, "curve": [1.0, None, None],
                                                       "t": [2.0, None]}
    assert rows == [row] and render_markdown(rows) == (tmp_path / "RESULTS.md").read_text()


def test_unserializable_detail_fails_before_the_file_changes(tmp_path):
    write_results(tmp_path, [_record("a", 1.0)])
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        write_results(tmp_path, [_record("b", 1.0, thing=object())])
    assert (tmp_path / "results.json").read_text() == before


@pytest.mark.parametrize("mode", ["gpu", "Full", ""])
def test_unknown_mode_is_refused(mode):
    with pytest.raises(ValueError, match="mode must be one of"):
        _record("a", 1.0, mode=mode)


def test_results_markdown_puts_each_field_in_its_column():
    r = make_record("A9", "acc", 1.5, "%", data="toy", device="cpu", seconds=1.0, reference=2.0, mode="full")
    assert f"| acc | 1.5 | % | 2 | toy | cpu | 1 | {r['date']} |" in render_markdown([r])


# --- merging and rendering ------------------------------------------------------------------

def test_merge_keeps_the_rows_of_other_assignments(tmp_path):
    """`make reproduce ONLY=A2` replaces A2's rows and keeps every other assignment's."""
    def rec(assignment, value):
        return make_record(assignment, "acc", value, "%", data="toy", device="cpu", seconds=1.0, mode="full")
    write_results(tmp_path, [rec("A1", 1.0), rec("A2", 2.0)])
    rows = write_results(tmp_path, [rec("A2", 3.0)])
    assert [(r["assignment"], r["value"]) for r in rows] == [("A1", 1.0), ("A2", 3.0)]


def test_quick_rows_are_not_shown_as_full_results():
    full, quick = _record("a", 1.0, mode="full"), _record("smoke_only", 2.0, mode="quick")
    text = render_markdown([full, quick])
    head, tail = text.split("## Quick mode")
    assert "| a |" in head and "smoke_only" not in head and "| smoke_only |" in tail
    assert "## Full mode" not in render_markdown([quick])


def test_mode_defaults_to_the_current_mode(monkeypatch):
    monkeypatch.setenv("EECS598_QUICK", "1")
    assert make_record("A9", "a", 1.0, "%", "toy", "cpu", 1.0)["mode"] == "quick"
    monkeypatch.setenv("EECS598_QUICK", "")
    assert make_record("A9", "a", 1.0, "%", "toy", "cpu", 1.0)["mode"] == "full"


# --- gaps found by mutation testing (each test fails on a one-line bug the others let through)

def test_merge_replaces_same_key_from_another_day(tmp_path):
    from eecs598 import results
    p = tmp_path / "r.json"
    old = results.make_record("A1", "acc", 0.1, "%", "d", "cpu", 1.0, mode="quick")
    old["date"] = "2020-01-01"
    results.merge_records(p, [old])
    rows = results.merge_records(p, [results.make_record("A1", "acc", 0.2, "%", "d", "cpu", 1.0, mode="quick")])
    assert len(rows) == 1 and rows[0]["value"] == 0.2
