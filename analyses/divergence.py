"""Per-token divergence: where along a sampled answer the student and the teacher disagree, and over which tokens.

For each answer token we show KL(student ‖ teacher) over the full vocabulary and restricted to S (the paper's
partial sum), and the five vocabulary entries whose terms p_s log(p_s/p_t) are largest in size. Answers sampled
from the base model (before training) and from the trained student (after) are rendered as coloured token strips.
"""

from __future__ import annotations

import html

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.anatomy import vocab_size

from .common import RunInputs, Writer, as_float, score
from .sparsity import in_set, kl_terms


# ----------------------------------------------------------------------------------------------- pure tensors
def token_rows(student: Float[Tensor, "pos vocab"], teacher: Float[Tensor, "pos vocab"], answer: Int[Tensor, " pos"],
               mask: Bool[Tensor, " pos"], ids: Int[Tensor, " k"], names: list[str], top: int = 5) -> list[dict]:
    """One record per answer token of one rollout: the token, full / S-restricted KL, the top contributors."""
    terms = kl_terms(student, teacher)
    on_set = in_set(terms.shape[-1], ids)
    rows = []
    for j in range(int(mask.sum())):
        biggest = terms[j].abs().topk(min(top, terms.shape[-1])).indices
        rows.append({"position": j + 1, "token": names[int(answer[j])], "id": int(answer[j]),
                     "in_S": bool(on_set[int(answer[j])]),
                     "kl_full": as_float(terms[j].sum()), "kl_S": as_float(terms[j][on_set].sum()),
                     "p_student": as_float(student[j, answer[j]].exp()),
                     "p_teacher": as_float(teacher[j, answer[j]].exp()),
                     "top": [{"token": names[int(v)], "in_S": bool(on_set[v]), "term": as_float(terms[j, v]),
                              "p_student": as_float(student[j, v].exp()), "p_teacher": as_float(teacher[j, v].exp())}
                             for v in biggest]})
    return rows


# ----------------------------------------------------------------------------------------------- rendering
def colour(value: float, scale: float) -> str:
    """White at 0, red for positive KL (blue for a negative partial sum), saturating at `scale` nats."""
    x = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    fade = int(255 * (1 - abs(x)))
    return f"rgb(255,{fade},{fade})" if x >= 0 else f"rgb({fade},{fade},255)"


def strip(rows: list[dict], key: str, scale: float) -> str:
    """One answer as inline token spans coloured by `key`; hovering shows the numbers and top contributors."""
    spans = []
    for r in rows:
        tip = (f"pos {r['position']}: KL full {r['kl_full']:.3f}, on S {r['kl_S']:.3f} | top: "
               + ", ".join(f"{t['token']} {t['term']:+.3f}" for t in r["top"]))
        border = "border-bottom:2px solid #333;" if r["in_S"] else ""
        spans.append(f'<span class="tok" style="background:{colour(r[key] or 0.0, scale)};{border}" '
                     f'title="{html.escape(tip)}">{html.escape(r["token"])}</span>')
    return " ".join(spans)


def table(rows: list[dict]) -> str:
    body = "".join(
        f"<tr><td>{r['position']}</td><td>{html.escape(r['token'])}{' (S)' if r['in_S'] else ''}</td>"
        f"<td>{r['kl_full']:.3f}</td><td>{r['kl_S']:.3f}</td><td>"
        + ", ".join(f"{html.escape(t['token'])}{'*' if t['in_S'] else ''} {t['term']:+.3f}" for t in r["top"])
        + "</td></tr>" for r in rows)
    return ("<table><tr><th>pos</th><th>token</th><th>KL full (nats)</th><th>KL on S (nats)</th>"
            "<th>top-5 terms p_s log(p_s/p_t) (* = in S)</th></tr>" + body + "</table>")


def render_html(samples: list[dict], title: str) -> str:
    scale = max([abs(r["kl_full"] or 0) for s in samples for r in s["rows"]] + [1e-6])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:24px auto;color:#222}"
             ".tok{padding:2px 3px;margin:1px;border-radius:3px;font-family:monospace;display:inline-block}"
             "table{border-collapse:collapse;font-size:12px;margin:8px 0 24px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Red = KL(student ‖ teacher) at that token (saturates at {scale:.2f} nats); blue = a negative "
             "partial sum over S. Underlined tokens are in S. Hover a token for its top-5 contributors.</p>"]
    for s in samples:
        parts.append(f"<h2>{html.escape(s['stage'])}: {html.escape(s['prompt'])}</h2>")
        parts.append(f"<p><b>full vocabulary</b><br>{strip(s['rows'], 'kl_full', scale)}</p>")
        parts.append(f"<p><b>restricted to S</b><br>{strip(s['rows'], 'kl_S', scale)}</p>")
        parts.append(table(s["rows"]))
    return "".join(parts) + "</body></html>\n"


# ----------------------------------------------------------------------------------------------- run
def analyze(inputs: RunInputs, *, n_answers: int = 3, max_new_tokens: int = 24, seed: int = 0) -> dict:
    """Per-token KL strips for a few harmful and one harmless prompt, before and after training."""
    prompts = inputs.prompts["harmful"][:n_answers] + inputs.prompts["harmless"][:1]
    names = inputs.token_strings(range(vocab_size(inputs.base)))
    samples, summary = [], {}
    stages = [("before (base model as student)", "base")]
    if inputs.student is not None:
        stages.append(("after (trained student)", "student"))
    for stage, sampler in stages:
        s = score(inputs, prompts, sampler=sampler, samples=1, max_new_tokens=max_new_tokens, seed=seed)
        student = s.base if sampler == "base" else s.student  # before training the student *is* the base model
        full, on_s = [], []
        for i in range(len(prompts)):
            rows = token_rows(student[i], s.teacher[i], s.answers[i], s.mask[i], inputs.safety_ids, names)
            samples.append({"stage": stage, "prompt": s.prompts[i], "rows": rows})
            full += [r["kl_full"] for r in rows]
            on_s += [r["kl_S"] for r in rows]
        summary[sampler] = {"kl_full_mean": as_float(torch.tensor(full).mean()),
                            "kl_S_mean": as_float(torch.tensor(on_s).mean())}
    out = Writer(inputs.run, "divergence")
    out.text("strips.html", render_html(samples, "Per-token KL(student ‖ teacher): before vs after training"))
    headline = {f"{k}_{stage}": v for stage, d in summary.items() for k, v in d.items()}
    result = {"name": "divergence", "title": "Per-token divergence", "headline": headline, "samples": samples}
    out.json("divergence.json", result)
    return {**result, "files": out.files}


__all__ = ["analyze", "colour", "render_html", "strip", "table", "token_rows"]
