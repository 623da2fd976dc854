"""One HellaSwag row schema: data_prep/hellaswag.py accepts exactly the rows evaluate scores.

A file that `python data_prep/hellaswag.py --file` accepts must never be refused later by
`python -m gpt2repro.evaluate`; both refuse a bad row with the same one-line `FILE:LINE:` error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.hellaswag import rows

from gpt2repro.errors import UserError, run_cli
from gpt2repro.hellaswag import check_hellaswag_row, load_hellaswag
from gpt2repro.prep import hellaswag

GOOD = {"ctx": "A man is", "endings": ["a", "b", "c", "d"], "label": 0}
BAD_LINE = 5000  # deep inside a file of the right length, so only the row itself is wrong

BAD_ROWS = [
    pytest.param({**GOOD, "label": True}, "'label' must be an integer", id="label-true"),
    pytest.param({**GOOD, "label": 7}, "out of range", id="label-7"),
    pytest.param({**GOOD, "endings": ["a", "b", 3, "d"]}, "non-empty strings", id="int-ending"),
    pytest.param({**GOOD, "endings": ["a", "b", None, "d"]}, "non-empty strings", id="null-end"),
    pytest.param({**GOOD, "endings": ["a", "b", "", "d"]}, "non-empty strings", id="empty-end"),
    pytest.param({**GOOD, "ctx": 12}, "'ctx' must be a non-empty string", id="int-ctx"),
    pytest.param({**GOOD, "label": "two"}, "'label' must be an integer", id="label-word"),
    pytest.param({**GOOD, "label": "9"}, "out of range", id="label-str-9"),
    pytest.param({"ctx": "x", "label": 0}, "missing key(s) endings", id="no-endings"),
    pytest.param([1, 2], "expected a JSON object", id="not-object"),
]


def full_size_file(path: Path, bad: object) -> Path:
    """hellaswag.N_EXAMPLES lines, all good but line BAD_LINE."""
    lines = [json.dumps({**GOOD, "ind": i}) for i in range(hellaswag.N_EXAMPLES)]
    lines[BAD_LINE - 1] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad, needle", BAD_ROWS)
def test_data_prep_refuses_what_evaluate_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: object, needle: str
) -> None:
    src = full_size_file(tmp_path / "hs.jsonl", bad)
    out = tmp_path / "out"
    assert run_cli(hellaswag.main, ["--file", str(src), "--out-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert f"{src}:{BAD_LINE}: " in err and needle in err, err
    assert not (out / hellaswag.FILENAME).exists()  # nothing copied
    # the evaluate side refuses the same line with the same problem
    with pytest.raises(UserError) as e:
        load_hellaswag(src)
    assert f"{src}:{BAD_LINE}: {check_hellaswag_row(bad)}" == str(e.value)


def test_one_schema_for_both() -> None:
    """The fixture rows (the real file's keys) pass; each bad row names its problem."""
    assert all(check_hellaswag_row(r) is None for r in rows(20))
    assert check_hellaswag_row(GOOD) is None
    for p in BAD_ROWS:
        bad, needle = p.values
        problem = check_hellaswag_row(bad)
        assert problem is not None and needle in problem, (p.id, problem)


def test_data_prep_names_a_line_that_is_not_json(tmp_path: Path) -> None:
    src = tmp_path / "hs.jsonl"
    src.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(UserError) as e:
        hellaswag.prepare(tmp_path / "out", src, quiet=True)
    msg = str(e.value)
    assert f"{src}:2: " in msg and "not valid JSON" in msg and hellaswag.URL in msg


def test_the_hugging_face_copy_with_string_labels_is_read(tmp_path: Path) -> None:
    """Hugging Face's copy of HellaSwag stores the label as a string ("2"): accepted by both
    data prep and evaluate, and read as the integer."""
    src = tmp_path / "hs.jsonl"
    lines = [json.dumps({**GOOD, "label": str(i % 4)}) for i in range(hellaswag.N_EXAMPLES)]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert run_cli(hellaswag.main, ["--file", str(src), "--out-dir", str(out), "--quiet"]) == 0
    examples = load_hellaswag(out / hellaswag.FILENAME, limit=8)
    assert [ex.label for ex in examples] == [0, 1, 2, 3, 0, 1, 2, 3]
