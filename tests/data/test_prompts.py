"""Instruction loading: local JSON / JSONL / CSV, seeded sampling, and one-line errors."""

from __future__ import annotations

import json

import pytest

from safesteer_interp import SafeSteerError
from safesteer_interp.data.prompts import load_instructions

ROWS = [{"instruction": f"request number {i}", "category": "x"} for i in range(10)]


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    (tmp_path / "c.csv").write_text("instruction,category\n" + "".join(f"{r['instruction']},x\n" for r in ROWS))
    (tmp_path / "d.json").write_text(json.dumps({"data": ROWS}))
    (tmp_path / "e.json").write_text(json.dumps([r["instruction"] for r in ROWS]))
    return tmp_path


def test_every_local_format_reads_the_same_column(files):
    want = [r["instruction"] for r in ROWS]
    for name in ("a.json", "b.jsonl", "c.csv", "d.json", "e.json"):
        assert load_instructions(files / name) == want, name


def test_sampling_is_seeded_and_keeps_file_order(files):
    first = load_instructions(files / "a.json", n=4, seed=7)
    assert first == load_instructions(files / "c.csv", n=4, seed=7)
    assert len(first) == 4 and first == sorted(first, key=lambda x: int(x.split()[-1]))
    assert first != load_instructions(files / "a.json", n=4, seed=8)
    other = files / "o.jsonl"
    other.write_text("".join(json.dumps({"prompt": r["instruction"]}) + "\n" for r in ROWS))
    assert load_instructions(other, n=2, seed=7, column="prompt") == load_instructions(files / "a.json", 2, 7)


def test_errors_are_one_line_and_name_the_problem(files, tmp_path):
    cases = {
        "missing.jsonl": "prompt file .*missing.jsonl not found",
        "empty.jsonl": "has no rows",
        "header.csv": "has no rows",
        "nocol.jsonl": "row 1 has no 'instruction' column \\(columns: prompt\\)",
        "blank.json": "row 2: 'instruction' must be a non-empty string",
        "bad.jsonl": "line 2 is not valid JSON",
        "prompts.txt": "use .json, .jsonl or .csv",
    }
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "header.csv").write_text("instruction\n")
    (tmp_path / "nocol.jsonl").write_text(json.dumps({"prompt": "hi"}) + "\n")
    (tmp_path / "blank.json").write_text(json.dumps([{"instruction": "ok"}, {"instruction": "  "}]))
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a"}\n{"instruction": \n')
    (tmp_path / "prompts.txt").write_text("hello\n")
    for name, pattern in cases.items():
        with pytest.raises(SafeSteerError, match=pattern) as info:
            load_instructions(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(SafeSteerError, match="asked for 11 instructions but only 10"):
        load_instructions(files / "a.json", n=11)


def test_offline_hub_name_points_at_local_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SafeSteerError, match="pass a local .json/.jsonl/.csv file with an 'instruction' column"):
        load_instructions("nobody-here/no-such-dataset-xyz")
