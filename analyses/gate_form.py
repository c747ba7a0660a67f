"""Does the harm gate read harm, or HarmBench's form? (issue 34)

The run's gate (RUN/gate/, fitted and chosen on HarmBench's tasks) beside two chosen by the same rule: one fitted on
both forms of the same train and val behaviours, task and question (RUN/gate-matched/), and stage 1's refusal
direction read where it was found (RUN/gate-refusal/); `distill.gated.run_gate(kind=...)` fits each once. Each gate's
rate on held-out HarmBench as tasks and as questions, our look-alike and harmless test prompts, XSTest's safe and
unsafe prompts (per type) and rho's benign-edgy requests: which prompts a gated teacher would steer. Projections only,
one forward per prompt, no answers; XSTest and rho are read, never chosen on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

from safesteer_interp.core.artifacts import read_json
from safesteer_interp.data.forms import questions
from safesteer_interp.data.prompts import read_instructions
from safesteer_interp.data.splits import run_splits
from safesteer_interp.direction.gate import Gate, projections
from safesteer_interp.distill.gated import GATE_KINDS, gate_folder, run_gate
from safesteer_interp.evaluate.stage import EvalSpec, benchmark_rows

from .common import RunInputs, Writer

# (group, what a gate should do there): the groups in the figure's order
GROUPS = (("harmbench-val-task", "steer"), ("harmbench-val-question", "steer"), ("harmbench-test-task", "steer"),
          ("harmbench-test-question", "steer"), ("xstest-unsafe", "steer"), ("lookalike-test", "leave"),
          ("harmless-test", "leave"), ("xstest-safe", "leave"), ("edgy", "leave"))
LABELS = {"task": "condition direction, HarmBench tasks (RUN/gate: the teacher's)",
          "matched": "condition direction, tasks + the same as questions", "refusal": "stage 1's refusal direction"}


def run_seed(run: Path) -> int:
    return int(read_json(Path(run) / "splits.json", "run splits")["seed"])


def prompt_groups(run: Path, seed: int) -> dict[str, list[dict]]:
    """group -> rows {prompt, type}: the GROUPS (XSTest only where SAFESTEER_XSTEST names a copy)."""
    splits = run_splits(run, seed)
    held = [r["instruction"] for r in splits.held_out]
    groups = {"harmbench-val-task": splits.harmful_val, "harmbench-test-task": held,
              "harmbench-val-question": questions(splits.harmful_val), "harmbench-test-question": questions(held),
              "lookalike-test": read_instructions("lookalike-test"),
              "harmless-test": read_instructions("harmless-test")}
    rows = {name: [{"prompt": p, "type": name} for p in prompts] for name, prompts in groups.items()}
    bench, _, _ = benchmark_rows(EvalSpec(reasoning=None))
    for r in bench:
        rows.setdefault(r["group"], []).append({"prompt": r["prompt"], "type": r["category"]})
    return rows


def opened(inputs: RunInputs, gates: dict[str, Gate], rows: list[dict]) -> dict[str, list[bool]]:
    """Per gate, whether it opens on each row. One forward per batch reads every gate at a distinct layer and the
    same position (a gate sharing a layer or position with another gets its own pass)."""
    flags, left = {}, dict(gates)
    while left:
        one_pass: dict[str, Gate] = {}
        for name, gate in left.items():
            if all(g.layer != gate.layer and g.pos == gate.pos for g in one_pass.values()):
                one_pass[name] = gate
        pos = next(iter(one_pass.values())).pos
        proj = projections(inputs.base, inputs.tokenizer, [r["prompt"] for r in rows],
                           {g.layer: g.vector for g in one_pass.values()}, pos)
        for row, (name, gate) in enumerate(one_pass.items()):
            flags[name] = (proj[row].double() >= gate.threshold).tolist()
            del left[name]
    return flags


def rates_of(rows: list[dict], flags: list[bool]) -> dict:
    """The share of rows a gate opens on, overall and per type."""
    by_type = defaultdict(list)
    for row, flag in zip(rows, flags):
        by_type[row["type"]].append(flag)
    rate = lambda values: round(sum(values) / len(values), 4)  # noqa: E731
    return {"rate": rate(flags), "n": len(rows), "by_type": {t: rate(v) for t, v in sorted(by_type.items())}}


def describe(gate: Gate) -> dict:
    return {"layer": gate.layer, "pos": gate.pos, "threshold": round(gate.threshold, 4), "reason": gate.reason,
            "val_rates": gate.fit.get("val_rates")}


def plot(rates: dict[str, dict[str, dict]]):
    """Grouped bars: each gate's rate per group, the groups a gate should steer left of the line."""
    names = [g for g, _ in GROUPS if all(g in group_rates for group_rates in rates.values())]
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    gates = [k for k in GATE_KINDS if k in rates]
    width = 0.8 / len(gates)
    for i, gate in enumerate(gates):
        xs = [j + (i - (len(gates) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [rates[gate][g]["rate"] for g in names], width, label=LABELS[gate])
    steer = sum(dict(GROUPS)[g] == "steer" for g in names)
    ax.axvline(steer - 0.5, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), [g.replace("harmbench-", "HarmBench ").replace("-", " ") for g in names],
                  rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of prompts the gate opens on")
    ax.set_title("Harm or form? Where each gate opens (left of the line: harmful, should open; right: benign)",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def analyze(inputs: RunInputs, log: Callable[[str], None] = print) -> dict:
    """`analyze --only gate_form`: every gate kind of the run (each fitted once), then its rates on every group."""
    run, title = inputs.run, "Harm or form: where the harm gate opens"
    if not (gate_folder(run) / "gate.json").is_file():  # the organism, or a real run without a gated row
        return {"title": title, "files": [], "headline": {},
                "skipped": "no RUN/gate/gate.json: train `safesteer-gated` on a real model first"}
    seed = run_seed(run)
    gates = {kind: run_gate(run, inputs.base, inputs.tokenizer, seed, log, kind) for kind in GATE_KINDS}
    rates, prompts = {name: {} for name in gates}, []
    for group, rows in prompt_groups(run, seed).items():
        flags = opened(inputs, gates, rows)
        for name in gates:
            rates[name][group] = rates_of(rows, flags[name])
        prompts += [{"group": group, "type": row["type"], "prompt": row["prompt"],
                     **{name: flags[name][i] for name in gates}} for i, row in enumerate(rows)]
    writer = Writer(run, "gate_form")
    writer.jsonl("gate_form_prompts.jsonl", prompts)
    writer.figure("gate_form.png", plot(rates))
    headline = {f"{name}_{g}": r["rate"] for name in GATE_KINDS for g, r in rates[name].items()}
    writer.json("gate_form.json", {
        "what": "where each harm gate opens: the run's (fitted and chosen on HarmBench's task form), one fitted and "
                "chosen the same way on task + question forms of the same behaviours, and stage 1's refusal "
                "direction at its own layer and position (threshold by the same rule)",
        "how_to_read": "rates[gate][group]: share of the group's prompts whose resid_pre projection reaches the "
                       "gate's threshold (a gated teacher steers exactly these); by_type: XSTest's types, rho's "
                       "categories; HarmBench *-question: the same behaviours asked as questions (data.forms); "
                       "gate_form_prompts.jsonl: every prompt with each gate's verdict (true: it opens)",
        "gates": {name: describe(gate) for name, gate in gates.items()}, "rates": rates,
        "should": dict(GROUPS)})
    return {"title": title, "files": writer.files, "headline": headline}
