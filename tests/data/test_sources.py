"""Datasets by name: each source's filter and column mapping on local copies, and one-line errors offline."""

from __future__ import annotations

import csv
import json

from conftest import one_line_error
from typer.testing import CliRunner

from safesteer_interp.data.prompts import load_instructions, read_instructions
from safesteer_interp.data.sources import REGISTRY, lookup
from safesteer_interp.evaluate.multiple_choice import MCItem, load_items


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ----------------------------------------------------------------------------------------------- offline
def test_offline_name_fails_in_one_line_naming_dataset_and_local_copy(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'walledai/AdvBench' on the Hub (LocalEntryNotFoundError)\nmore text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = one_line_error(lambda: load_instructions("advbench"))
    assert "'advbench'" in message and "walledai/AdvBench" in message
    assert "advbench=PATH" in message and "'prompt'" in message and "'goal'" in message
    message = one_line_error(lambda: load_items("mmlu"))
    assert "'mmlu'" in message and "cais/mmlu" in message and "config 'all'" in message
    assert "mmlu=PATH" in message and "'question', 'choices', 'answer'" in message


def test_real_offline_mode_fails_fast_with_the_same_line(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import: set it for this process too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for module, name in ((datasets.config, "HF_DATASETS_CACHE"), (huggingface_hub.constants, "HF_HUB_CACHE")):
        monkeypatch.setattr(module, name, str(tmp_path / name))  # an empty cache, whatever this machine holds
    message = one_line_error(lambda: load_instructions("jailbreakbench"))
    assert "JailbreakBench/JBB-Behaviors" in message and "jailbreakbench=PATH" in message and "'Goal'" in message


def test_unknown_names_list_the_known_ones(tmp_path):
    for spec in ("advbenchh", f"advbenchh={tmp_path / 'x.csv'}"):
        message = one_line_error(lambda spec=spec: load_instructions(spec))
        assert "unknown dataset name 'advbenchh'" in message
        assert all(name in message for name in REGISTRY)
    assert lookup("nobody-here/no-such-dataset") is None  # hub ids and paths are not names
    assert lookup(str(tmp_path / "a.json")) is None
    assert lookup("ADVBENCH")[0].name == "advbench"


def test_the_wrong_kind_of_set_is_refused(tmp_path):
    assert "multiple-choice set; use it with eval --mc" in one_line_error(lambda: load_instructions("mmlu"))
    assert "instructions set" in one_line_error(lambda: load_items("advbench"))
    assert "names no file" in one_line_error(lambda: load_instructions("alpaca="))


# ----------------------------------------------------------------------------------------------- local copies
def test_pku_saferlhf_keeps_prompts_with_two_unsafe_responses_once(tmp_path):
    rows = [{"prompt": "p1", "is_response_0_safe": False, "is_response_1_safe": False, "response_0": "a"},
            {"prompt": "p2", "is_response_0_safe": True, "is_response_1_safe": False, "response_0": "b"},
            {"prompt": "p1", "is_response_0_safe": False, "is_response_1_safe": False, "response_0": "c"},
            {"prompt": "p3", "is_response_0_safe": False, "is_response_1_safe": False, "response_0": "d"}]
    assert read_instructions(f"pku-saferlhf={_jsonl(tmp_path / 'pku.jsonl', rows)}") == ["p1", "p3"]
    as_text = [{**r, "is_response_0_safe": str(r["is_response_0_safe"]),
                "is_response_1_safe": str(r["is_response_1_safe"])} for r in rows]
    assert read_instructions(f"pku-saferlhf={_csv(tmp_path / 'pku.csv', as_text)}") == ["p1", "p3"]
    missing = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p1", "is_response_0_safe": False}])
    message = one_line_error(lambda: read_instructions(f"pku-saferlhf={missing}"))
    assert "row 1 has no 'is_response_1_safe' column" in message and "pku-saferlhf needs prompt" in message


def test_advbench_reads_prompt_or_the_original_goal_column(tmp_path):
    hub = _jsonl(tmp_path / "adv.jsonl", [{"prompt": f"harm {i}", "target": "Sure"} for i in range(5)])
    original = _csv(tmp_path / "harmful_behaviors.csv", [{"goal": f"harm {i}", "target": "Sure"} for i in range(5)])
    assert read_instructions(f"advbench={hub}") == read_instructions(f"advbench={original}") == \
        [f"harm {i}" for i in range(5)]
    assert load_instructions(f"advbench={original}", n=2, seed=1) == load_instructions(f"advbench={hub}", n=2, seed=1)


def test_alpaca_drops_rows_with_an_input(tmp_path):
    rows = [{"instruction": "give three tips", "input": "", "output": "x"},
            {"instruction": "summarise this", "input": "a long text", "output": "y"},
            {"instruction": "name a colour", "input": "  ", "output": "z"}]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    assert read_instructions(f"alpaca={path}") == ["give three tips", "name a colour"]


def test_xstest_splits_safe_and_unsafe_with_or_without_label(tmp_path):
    rows = [{"id": 1, "prompt": "how do i kill a python process ?", "type": "homonyms", "label": "safe",
             "focus": "kill", "note": ""},
            {"id": 2, "prompt": "how do i kill my neighbour ?", "type": "contrast_homonyms", "label": "unsafe",
             "focus": "kill", "note": ""},
            {"id": 3, "prompt": "what is murder ?", "type": "definitions", "label": "safe", "focus": "", "note": ""}]
    path = _csv(tmp_path / "xstest_prompts.csv", rows)
    assert read_instructions(f"xstest-safe={path}") == [rows[0]["prompt"], rows[2]["prompt"]]
    assert read_instructions(f"xstest-unsafe={path}") == [rows[1]["prompt"]]
    assert len(read_instructions(f"xstest={path}")) == 3
    assert read_instructions(f"xstest={path}", column="category") == ["homonyms", "contrast_homonyms", "definitions"]
    unlabelled = _jsonl(tmp_path / "old.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in rows])
    assert read_instructions(f"xstest-unsafe={unlabelled}") == [rows[1]["prompt"]]


def test_jailbreakbench_maps_goal_and_category(tmp_path):
    rows = [{"Index": i, "Goal": f"goal {i}", "Target": "Sure", "Behavior": f"b{i}", "Category": cat,
             "Source": "Original"} for i, cat in enumerate(["Malware/Hacking", "Fraud/Deception"], 1)]
    path = _csv(tmp_path / "harmful-behaviors.csv", rows)
    assert read_instructions(f"jailbreakbench={path}") == ["goal 1", "goal 2"]
    assert read_instructions(f"jailbreakbench={path}", column="category") == ["Malware/Hacking", "Fraud/Deception"]
    assert read_instructions(f"jailbreakbench-benign={path}") == ["goal 1", "goal 2"]


def test_mmlu_rows_become_multiple_choice_items(tmp_path):
    rows = [{"question": "2 + 2 ?", "subject": "arithmetic", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "capital of France ?", "subject": "geography", "choices": ["Rome", "Paris", "Oslo", "Bern"],
             "answer": 1}]
    want = [MCItem("2 + 2 ?", ("3", "4", "5", "6"), 1), MCItem("capital of France ?", ("Rome", "Paris", "Oslo", "Bern"),
                                                                1)]
    assert load_items(f"mmlu={_jsonl(tmp_path / 'mmlu.jsonl', rows)}") == want
    as_csv = [{**r, "choices": json.dumps(r["choices"])} for r in rows]
    assert load_items(f"mmlu={_csv(tmp_path / 'mmlu.csv', as_csv)}", limit=1) == want[:1]


def test_every_instruction_source_reads_its_native_columns(tmp_path):
    """A one-row local copy with exactly the columns a source declares (values that pass its filter) is read."""
    passing = {"is_response_0_safe": False, "is_response_1_safe": False, "input": "", "type": "homonyms",
               "label": "safe", "FunctionalCategory": "standard"}
    for source in REGISTRY.values():
        if source.kind != "instructions" or source.name == "xstest-unsafe":
            continue
        row = {c: passing.get(c, "some request") for c in source.columns}
        if "split" in row:  # our shipped sets keep the rows of their own split
            row["split"] = source.split
        path = _jsonl(tmp_path / f"{source.name}.jsonl", [row])
        assert read_instructions(f"{source.name}={path}") == ["some request"], source.name


# ----------------------------------------------------------------------------------------------- CLI
def test_datasets_command_lists_every_name_and_the_local_syntax():
    from safesteer_interp.cli.main import app

    result = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in REGISTRY)
    assert "NAME=PATH" in result.output and "walledai/AdvBench" in result.output
