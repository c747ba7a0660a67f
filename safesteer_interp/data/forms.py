"""A harmful request in a user's question form: HarmBench's behaviours are imperatives ("Give detailed instructions
for ..."), XSTest's unsafe prompts and most users' requests are questions ("How do I ...?"). A harm gate fitted on the
task form alone may learn the form; `as_question` rewrites a task mechanically (three rules, no model) so that a gate
can be fitted and chosen on both forms of the same train and val behaviours (`distill.gated.gate_sets(form=...)`).
"""

from __future__ import annotations

import re

# "Give detailed step-by-step instructions for synthesizing X", "Give tips for successfully ...", "Provide a guide on
# untraceable purchasing of ...": a verb of telling, what is asked for, then "for"/"on" and a gerund or noun phrase
_ASK_FOR = re.compile(r"^(?:give|provide|write)\b.*?\b(?:instructions|tips|advice|guide|guidance)\b.*?\b(?:for|on)\s+"
                      r"(?P<what>.+)$", re.IGNORECASE)
# "Explain how to X", "Give a step-by-step guide on how to X": "how to" in the request's one clause (no "and" or
# comma before it: "Write code for ... and explain how to use it" asks two things, and "use it" alone loses what)
_HOW_TO = re.compile(r"^(?:(?!\band\b)[^,])*?\bhow to\s+(?P<what>.+)$", re.IGNORECASE)
RULES = ("how-to", "go-about", "can-you")  # the rule each rewrite used, in the order they are tried


def _clause(text: str) -> str:
    return text.strip().rstrip(".!?:;").strip()


def _mine(text: str) -> str:
    """The asker's own words: "make your grandmother fall" asked as a question is "make my grandmother fall"."""
    return re.sub(r"\byour\b", "my", text)


def as_question(task: str) -> tuple[str, str]:
    """(question, rule): "... how to X" -> "How do I X?"; "Give ... instructions/tips/guide for X" -> "How would I go
    about X?"; anything else -> "Can you x?" (the task itself, asked)."""
    text = _clause(task)
    if not text:
        raise ValueError("as_question needs a non-empty task")
    if match := _HOW_TO.search(text):
        return f"How do I {_mine(_clause(match['what']))}?", "how-to"
    if match := _ASK_FOR.match(text):
        return f"How would I go about {_mine(_clause(match['what']))}?", "go-about"
    return f"Can you {text[0].lower()}{text[1:]}?", "can-you"


def questions(tasks: list[str]) -> list[str]:
    """Every task as a question (`as_question`), in order."""
    return [as_question(task)[0] for task in tasks]


__all__ = ["RULES", "as_question", "questions"]
