"""Pictures and tables that explain a refusal direction: score heatmaps over (pos, layer) and its logit lens.

The logit lens reads the direction as the model's last layer would: unembed(final_norm_weight * unit(r)). Its top
tokens are what adding r promotes at the output (for a refusal direction: refusal openers), its bottom tokens what it
suppresses (compliance openers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from jaxtyping import Float  # noqa: E402
from torch import Tensor  # noqa: E402

from safesteer_interp.core.anatomy import unembed_direction  # noqa: E402

TITLES = {
    "ablation": ("Refusal score of harmful val prompts, direction ablated at every layer", "lower = removes refusal"),
    "steering": ("Refusal score of harmless val prompts, direction added at its layer", "higher = induces refusal"),
    "kl": ("KL(base || ablated) at the last position, harmless val prompts (nats)", "lower = less collateral"),
}


def heatmap(scores: Float[Tensor, "pos layer"], kind: str, pos_labels: Sequence[str], path: Path,
            chosen: tuple[int, int] | None = None, baseline: float | None = None) -> Path:
    title, hint = TITLES[kind]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * scores.shape[1] + 3), 0.5 * scores.shape[0] + 2.2))
    image = ax.imshow(scores.numpy(), aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label=("nats" if kind == "kl" else "refusal log-odds"))
    ax.set_xlabel("layer (direction read at / added to resid_pre)")
    ax.set_ylabel("post-instruction position")
    ax.set_xticks(range(scores.shape[1]))
    ax.set_yticks(range(scores.shape[0]), [f"{-len(pos_labels) + i} {t!r}" for i, t in enumerate(pos_labels)])
    extra = f"; unsteered baseline {baseline:.2f}" if baseline is not None else ""
    ax.set_title(f"{title}\n({hint}{extra})", fontsize=9)
    if chosen is not None:
        ax.scatter([chosen[1]], [chosen[0]], marker="*", s=200, c="red", label="selected")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def logit_lens(model, tokenizer, direction: Float[Tensor, " d_model"], k: int = 15) -> dict[str, list[dict]]:
    """Top / bottom tokens of W_U (final_norm(unit(direction)))."""
    logits = unembed_direction(model, direction)

    def rows(values, ids):
        return [{"token": tokenizer.convert_ids_to_tokens(int(i)), "id": int(i), "logit": round(float(v), 4)}
                for v, i in zip(values, ids, strict=True)]

    top, bottom = logits.topk(k), (-logits).topk(k)
    return {"top": rows(top.values, top.indices), "bottom": rows(-bottom.values, bottom.indices)}
