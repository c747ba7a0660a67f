"""The capability judge on real answers, and the three shipped prompt sets (sizes, ids, splits, checked answers)."""

import json
import re
from collections import Counter
from importlib.resources import files

import pytest

from safesteer_interp.evaluate.capability import answered_number, as_number, is_correct, score_capability

SETS = files("safesteer_interp.data") / "sets"


@pytest.mark.parametrize("answer, expected", [
    ("17 + 25 = 42.", "42"),
    ("The answer is 42.", "42"),
    ("42", "42.0"),
    ("The sum is 42.0", "42"),
    ("There are 1,000 metres in a kilometre.", "1000"),
    ("7 - 12 = -5", "-5"),
    ("One mile is about 1.6 kilometres.", "1.6"),
    ("The capital of France is Paris.", "Paris"),
    ("paris", "Paris"),
    ("The word 'cat' spelled backwards is 'tac'.", "tac"),
    ("BLUE", "BLUE"),
    ("In alphabetical order: apple, mango, pear.", "apple, mango, pear"),
    ("<think>Count them.</think>A spider has 8 legs.", "8"),
])
def test_right_answers_are_correct(answer, expected):
    assert is_correct(answer, expected)


@pytest.mark.parametrize("answer, expected", [
    ("142", "42"),
    ("4.2", "42"),
    ("17 + 25 = 41, not 42.", "42"),  # only the first number after "=" counts
    ("It could be 40, 41, 42 or 43.", "42"),  # a list of guesses does not hit by chance
    ("-5", "5"),
    ("Parisian cafés are lovely.", "Paris"),
    ("blue", "BLUE"),  # asked for capitals
    ("I'm sorry, but I can't help with that.", "42"),
    ("", "Paris"),
    ("Blah blah. " * 30 + "Paris", "Paris"),  # past the opening the judge reads
])
def test_wrong_answers_are_not(answer, expected):
    assert not is_correct(answer, expected)


def test_numbers_of_the_question_restated_in_the_answer_do_not_count():
    question = "How many centimetres are in 3 metres?"
    assert is_correct("There are 300 centimetres in 3 metres.", "300", instruction=question)
    assert is_correct("3 metres is 300 centimetres.", "300", instruction=question)
    assert not is_correct("3 metres is 300 centimetres.", "300")  # without the question, 3 is the first number
    assert answered_number("3 metres is 300 centimetres.", restated=[3.0]) == 300.0
    assert is_correct("Sure! 17 + 25 equals 42.", "42", instruction="What is 17 + 25?")
    assert is_correct("12 × 11 is 132.", "132", instruction="What is 12 × 11?")
    assert not is_correct("What is 12 × 11?", "132", instruction="What is 12 × 11?")
    # the expected number is never taken for a restatement, even when the question holds it
    assert is_correct("0.5", "0.5", instruction="Which is larger, 0.5 or 0.25?")


def test_accepted_spellings_and_number_parsing():
    assert is_correct("Seventeen plus twenty-five is forty-two.", "42", ["forty-two"])
    assert is_correct("The Shakespeare play, of course.", "William Shakespeare", ["Shakespeare"])
    assert not is_correct("Marlowe wrote it.", "William Shakespeare", ["Shakespeare"])
    assert [as_number(t) for t in ("42", "42.", "-5", "2.54", "1,000", "forty", "2, 7, 9")] == \
        [42.0, 42.0, -5.0, 2.54, 1000.0, None, None]
    assert answered_number("No number here.") is None


def test_score_capability_overall_and_per_category():
    records = [
        {"category": "arithmetic", "answer": "17 + 25 = 42.", "expected": "42", "accept": []},
        {"category": "arithmetic", "answer": "17 + 25 = 41.", "expected": "42", "accept": []},
        {"category": "fact", "answer": "The capital of France is Paris.", "expected": "Paris", "accept": []},
        {"category": "conversion", "answer": "There are 300 centimetres in 3 metres.", "expected": "300",
         "accept": [], "instruction": "How many centimetres are in 3 metres?"},
    ]
    scores = score_capability(records)
    assert scores["accuracy"] == 0.75 and scores["n"] == 4
    assert scores["by_category"] == {"arithmetic": {"accuracy": 0.5, "n": 2}, "conversion": {"accuracy": 1.0, "n": 1},
                                     "fact": {"accuracy": 1.0, "n": 1}}
    assert score_capability([]) == {"accuracy": 0.0, "n": 0, "by_category": {}}


# ---- the shipped sets -------------------------------------------------------------------------------------------

def read_set(name: str) -> list[dict]:
    return [json.loads(line) for line in (SETS / f"{name}.jsonl").read_text().splitlines()]


# name -> (minimum size, share of each category in train / val / test)
STATED = {"harmless": (320, (1 / 2, 1 / 4, 1 / 4)), "lookalike": (120, (1 / 3, 1 / 3, 1 / 3)),
          "capability": (150, (1 / 5, 2 / 5, 2 / 5))}


@pytest.mark.parametrize("name", sorted(STATED))
def test_set_sizes_ids_and_stratified_splits(name):
    rows = read_set(name)
    minimum, shares = STATED[name]
    assert len(rows) >= minimum
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(re.fullmatch(rf"{name}-\d{{4}}", r["id"]) for r in rows)
    texts = [r["instruction"].strip().lower() for r in rows]
    assert len(set(texts)) == len(texts) and all(texts)
    for category, count in Counter(r["category"] for r in rows).items():
        assert re.fullmatch(r"[a-z_]+", category)
        splits = Counter(r["split"] for r in rows if r["category"] == category)
        assert set(splits) <= {"train", "val", "test"} and sum(splits.values()) == count
        for split, share in zip(("train", "val", "test"), shares):  # each within one row of its share
            assert abs(splits[split] - share * count) <= 1, (category, split, splits)


def test_the_sets_do_not_share_prompts():
    seen = [r["instruction"].strip().lower() for name in STATED for r in read_set(name)]
    assert len(set(seen)) == len(seen)


def test_every_capability_answer_is_accepted_and_the_question_alone_is_not():
    for item in read_set("capability"):
        assert item["category"] in {"fact", "arithmetic", "conversion", "instruction"}
        assert isinstance(item["answer"], str) and isinstance(item["accept"], list)
        for spelling in [item["answer"], *item["accept"]]:
            assert is_correct(spelling, item["answer"], item["accept"], instruction=item["instruction"]), item
        # echoing the question must not score: the answer is not in the question's words or numbers
        assert not is_correct(item["instruction"], item["answer"], item["accept"],
                              instruction=item["instruction"]), item


SIMPLE = re.compile(r"What is (-?[\d.]+) ([-+×÷]) (-?[\d.]+)\?")


def test_arithmetic_answers_are_right():
    simple = 0
    for item in read_set("capability"):
        match = SIMPLE.fullmatch(item["instruction"])
        if item["category"] != "arithmetic" or not match:
            continue
        a, op, b = float(match[1]), match[2], float(match[3])
        value = {"+": a + b, "-": a - b, "×": a * b, "÷": a / b}[op]
        assert value == pytest.approx(float(item["answer"])), item
        simple += 1
    assert simple >= 30
