"""The analyses: every number on a hand-built toy (known logits ⇒ known shares), then the whole set on a tiny run."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from safesteer_interp.analyses import (
    divergence,
    loss_geometry,
    safety_depth,
    sparsity,
    steering_positions,
    training_change,
    why_tokens,
)

LN2 = math.log(2)


def logp(*rows: list[float]) -> torch.Tensor:
    """[1, pos, vocab] log-probs from probability rows."""
    return torch.tensor([rows], dtype=torch.float32).log()


# ----------------------------------------------------------------------------------------------- safety depth
def test_depth_numbers_split_early_from_late_by_hand():
    """early = 2. Position 1: model (.5 .25 .25) vs base (.25 .5 .25), KL = .25 ln2, of which S = {0} carries .5 ln2;
    position 2 equal (KL 0); position 3 the reverse (KL .25 ln2, S carries -.25 ln2); position 4 is padding."""
    a, b = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    model, base = logp(a, a, b, [0.1, 0.1, 0.8]), logp(b, a, a, [0.8, 0.1, 0.1])
    out = safety_depth.depth_numbers(model, base, torch.tensor([[True, True, True, False]]), torch.tensor([0]),
                                     early=2)
    assert out["kl_by_position"][:3] == pytest.approx([0.25 * LN2, 0.0, 0.25 * LN2], abs=1e-6)
    assert out["kl_by_position"][3] is None
    assert out["kl_S_by_position"][:3] == pytest.approx([0.5 * LN2, 0.0, -0.25 * LN2], abs=1e-6)
    assert out["kl_early"] == pytest.approx(0.125 * LN2, abs=1e-6)  # (.25 ln2 + 0) / 2
    assert out["kl_late"] == pytest.approx(0.25 * LN2, abs=1e-6)  # position 3 only: 4 is masked
    assert out["kl_S_early"] == pytest.approx(0.25 * LN2, abs=1e-6)
    assert (out["S_mass_first"], out["S_mass_first_base"]) == pytest.approx((0.5, 0.25))



def test_depth_plot_gives_each_model_a_smoothed_panel_and_s_mass_at_the_measured_depths(tmp_path):
    """Three models: three KL panels (plain solid, after the 10-token prefill dashed, a centred 5-position mean that
    skips None and NaN, one shared log y axis, the first EARLY positions shaded), then one S-mass panel whose x
    ticks are exactly the measured depths."""
    depths, names = (0, 5, 10, 20), ["teacher", "safesteer", "sft"]
    kl = [1.0, None, 3.0, 4.0, float("nan"), 6.0, 7.0, None]
    numbers = {name: {str(k): {"kl_by_position": [None if v is None else v * (i + 1) / (k + 1) for v in kl],
                               "kl_S_by_position": [None] * len(kl), "kl_early": 1.0, "kl_late": 0.5,
                               "kl_S_early": 0.2, "S_mass_first": 0.6 - 0.02 * k - 0.1 * i,
                               "S_mass_first_base": 0.05, "rows": 4} for k in depths}
               for i, name in enumerate(names)}
    fig = safety_depth.plot(numbers, depths, 10)
    *kl_axes, mass = fig.axes
    assert [ax.get_title(loc="left") for ax in kl_axes] == names
    for ax in kl_axes:
        assert [line.get_linestyle() for line in ax.lines] == ["-", "--"] and ax.get_yscale() == "log"
        assert ax.get_shared_y_axes().joined(ax, kl_axes[0])
        span = ax.patches[0]
        assert (span.get_x(), span.get_x() + span.get_width()) == (0.5, safety_depth.EARLY + 0.5)
    plain, prefilled = (line.get_ydata() for line in kl_axes[0].lines)
    assert list(kl_axes[0].lines[0].get_xdata()) == list(range(1, 9))
    # position 3: the window 1-5 holds 1, None, 3, 4, NaN -> (1 + 3 + 4) / 3; position 1: 1, None, 3 -> 2;
    # position 8: 6, 7, None -> 6.5; after the prefill every value is / 11
    assert (plain[2], plain[0], plain[7]) == pytest.approx((8 / 3, 2.0, 6.5))
    assert prefilled[2] == pytest.approx(8 / 3 / 11)
    assert kl_axes[2].lines[0].get_ydata()[2] == pytest.approx(8)  # sft: 3 x the values
    assert list(mass.get_xticks()) == list(depths) and len(mass.xaxis.get_minorticklocs()) == 0
    assert [line.get_label() for line in mass.lines] == [*names, "base"]
    assert list(mass.lines[1].get_ydata()) == pytest.approx([0.5, 0.4, 0.3, 0.1])
    fig.savefig(tmp_path / "depth.png")  # the constrained layout renders
    assert (tmp_path / "depth.png").stat().st_size > 10_000
    plt.close(fig)

# ----------------------------------------------------------------------------------------------- sparsity
def sparsity_toy():
    # S = {0}. Positions 1-3: student (.5 .25 .25) vs teacher (.25 .5 .25): KL = .25 ln2, S carries .5 ln2 (share 2).
    # Position 4: the reverse: KL = .25 ln2, S carries -.25 ln2 (share -1). Position 5 is padding (masked out).
    early_s, early_t = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    student = logp(early_s, early_s, early_s, early_t, [0.1, 0.1, 0.8])
    teacher = logp(early_t, early_t, early_t, early_s, [0.8, 0.1, 0.1])
    # base: the student's drift from it is all on token 2 and 1 (never on S) at 1-3, none at 4
    base = logp([0.5, 0.125, 0.375], [0.5, 0.125, 0.375], [0.5, 0.125, 0.375], early_t, [0.8, 0.1, 0.1])
    mask = torch.tensor([[True, True, True, True, False]])
    return student, teacher, base, mask, torch.tensor([0])


def test_sparsity_shares_on_a_toy():
    student, teacher, base, mask, ids = sparsity_toy()
    full, on_s = sparsity.split_kl(student, teacher, ids)
    assert full[0, :4].tolist() == pytest.approx([0.25 * LN2] * 4, abs=1e-6)
    assert on_s[0, :4].tolist() == pytest.approx([0.5 * LN2] * 3 + [-0.25 * LN2], abs=1e-6)
    n = sparsity.sparsity_numbers(student, teacher, base, mask, ids, early=3)
    assert n["positions"] == 4
    assert n["kl_share_S_pos_1_3"] == pytest.approx(2.0, abs=1e-4)
    assert n["kl_share_S_pos_gt_3"] == pytest.approx(-1.0, abs=1e-4)
    assert n["kl_share_S"] == pytest.approx((1.5 - 0.25) / 1.0, abs=1e-4)
    assert n["kl_student_teacher"] == pytest.approx(0.25 * LN2, abs=1e-5)
    assert n["kl_pos_1_3"] == pytest.approx(0.25 * LN2, abs=1e-5)
    assert n["kl_pos_gt_3"] == pytest.approx(0.25 * LN2, abs=1e-5)
    assert n["teacher_mass_S_ge_10pct"] == 1.0 and n["teacher_mass_S_ge_50pct"] == pytest.approx(0.25)
    assert n["teacher_mass_S_mean"] == pytest.approx((3 * 0.25 + 0.5) / 4, abs=1e-5)
    # drift KL(student || base): .25 ln2 + .25 ln(2/3) per early position, nothing on S
    assert n["drift_kl_student_base"] == pytest.approx(3 * 0.25 * math.log(4 / 3) / 4, abs=1e-5)
    assert n["drift_share_S"] == pytest.approx(0.0, abs=1e-5) and n["drift_share_not_S"] == pytest.approx(1.0)
    # forward KL(teacher || student) on S: .25 ln(.5) of .25 ln2 early (share -1), .5 ln2 of .25 ln2 later (2)
    assert n["forward_kl_share_S_pos_1_3"] == pytest.approx(-1.0, abs=1e-4)
    assert n["forward_kl_share_S_pos_gt_3"] == pytest.approx(2.0, abs=1e-4)
    assert n["by_position"]["share_S"] == pytest.approx([2.0, 2.0, 2.0, -1.0, None], abs=1e-4)
    assert n["by_position"]["kl_full"][4] is None  # no row reaches the padded position


def test_ratio_without_divergence_is_nan():
    zero = torch.zeros(2, 3)
    assert math.isnan(sparsity.ratio(zero, zero, torch.ones(2, 3, dtype=torch.bool)))


# ----------------------------------------------------------------------------------------------- divergence
def test_token_rows_top_contributors_and_restricted_kl():
    # one position, vocabulary 6, S = {1, 2}; terms p_s log(p_s/p_t) are computed by hand below
    p_s = [0.30, 0.05, 0.25, 0.20, 0.15, 0.05]
    p_t = [0.10, 0.40, 0.25, 0.05, 0.15, 0.05]
    rows = divergence.token_rows(logp(p_s)[0], logp(p_t)[0], torch.tensor([3]), torch.tensor([True]),
                                 torch.tensor([1, 2]), [f"t{i}" for i in range(6)])
    terms = [s * math.log(s / t) for s, t in zip(p_s, p_t, strict=True)]
    (row,) = rows
    assert row["token"] == "t3" and not row["in_S"]
    assert row["kl_full"] == pytest.approx(sum(terms), abs=1e-5)
    assert row["kl_S"] == pytest.approx(terms[1] + terms[2], abs=1e-6)
    assert [t["token"] for t in row["top"]][:3] == ["t0", "t3", "t1"]  # |.33|, |.277|, |-.104|
    assert row["top"][2]["in_S"] and row["top"][2]["term"] == pytest.approx(terms[1], abs=1e-6)


def test_strip_colours_and_escapes():
    rows = [{"position": 1, "token": "<|im_end|>", "id": 0, "in_S": True, "kl_full": 2.0, "kl_S": -1.0,
             "top": [{"token": "a", "in_S": False, "term": 0.5}]}]
    page = divergence.render_html([{"stage": "after", "prompt": "p < q", "rows": rows}], "t")
    assert "&lt;|im_end|&gt;" in page and "p &lt; q" in page
    assert "rgb(255,0,0)" in page  # the largest KL saturates to red
    assert "rgb(127,127,255)" in page  # -1 of a 2-nat scale: half-saturated blue


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Chromium not installed at /usr/bin/chromium "
                                                   "(apt-get install -y chromium to run the browser check)")
def test_strips_render_in_chromium(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
    from test_report import chromium  # the report test's headless helper (flags, fresh profile)

    rows = [{"position": j + 1, "token": w, "id": j, "in_S": j == 0, "kl_full": float(j), "kl_S": 0.1 * j,
             "top": [{"token": "x", "in_S": False, "term": 0.1}]} for j, w in enumerate(["Sorry", "I", "cannot"])]
    page = tmp_path / "strips.html"
    page.write_text(divergence.render_html([{"stage": "after", "prompt": "how do I hack ?", "rows": rows}], "KL"))
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=900,500", page.resolve().as_uri())
    assert shot.is_file(), done.stderr[-500:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.1) & (pixels[..., 2] < 0.1)
    assert red.sum() > 50  # the saturated token is drawn in red
    dom = chromium(tmp_path, "--dump-dom", page.resolve().as_uri()).stdout
    assert len(re.findall(r'class="tok"', dom)) == 6  # 3 tokens x (full, restricted) strips
    assert "cannot" in dom


# ----------------------------------------------------------------------------------------------- why tokens
def test_delta_by_position_and_head_split():
    teacher = torch.zeros(2, 3, 4)
    teacher[:, :, 1] = torch.tensor([1.0, 2.0, 3.0])
    teacher[1, 2, 1] = 100.0  # masked out below
    mask = torch.tensor([[True, True, True], [True, True, False]])
    delta = why_tokens.delta_by_position(teacher, torch.zeros(2, 3, 4), mask, torch.tensor([1, 2]), horizon=3)
    assert delta.tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
    torch.manual_seed(0)
    z, w_o = torch.randn(5, 12), torch.randn(8, 12)
    per_head = why_tokens.head_writes(z, w_o, n_heads=3)
    assert per_head.shape == (5, 3, 8)
    assert torch.allclose(per_head.sum(1), z @ w_o.T, atol=1e-5)  # the heads add up to o_proj's output


def test_unembed_gain_is_centred_and_scaled():
    w_u = torch.eye(4, 2)  # token 0 reads dim 0, token 1 reads dim 1, tokens 2-3 read nothing
    out = why_tokens.unembed_gain(torch.tensor([[2.0, 0.0]]), w_u, torch.tensor([1.0, 1.0]), torch.tensor([2.0]))
    assert out[0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


# ----------------------------------------------------------------------------------------------- training change
def test_weight_update_alignment():
    r = torch.tensor([3.0, 4.0, 0.0, 0.0])
    unit = r / r.norm()
    a = torch.tensor([1.0, -2.0, 0.5, 1.0])  # 4 x 4 matrices: the side must come from the name, not the shape
    along = training_change.write_read_alignment(torch.outer(unit, a), unit, "write")  # writes only along r
    assert along["share"] == pytest.approx(1.0) and along["top_singular_cos"] == pytest.approx(1.0)
    across = training_change.write_read_alignment(torch.outer(torch.tensor([0.0, 0.0, 1.0, 0.0]), a), unit, "write")
    assert across["share"] == pytest.approx(0.0, abs=1e-7)
    reads = training_change.write_read_alignment(torch.outer(a, unit), unit, "read")
    assert reads["share"] == pytest.approx(1.0)
    assert training_change.write_read_alignment(torch.outer(a, unit), unit, "write")["share"] == pytest.approx(
        abs(float(a @ unit)) / float(a.norm()))  # read along r, written along a: a's cosine with r
    assert training_change.write_read_alignment(torch.zeros(4, 4), unit, "read") == {"side": "read",
                                                                                    "delta_norm": 0.0}
    assert [training_change.residual_side(f"model.layers.0.{m}.weight") for m in
            ("self_attn.o_proj", "self_attn.k_proj", "mlp.down_proj", "mlp.gate_proj")] == ["write", "read"] * 2


def test_logprob_shift_on_a_toy():
    base = logp([0.25, 0.25, 0.25, 0.25])
    student = logp([0.4, 0.4, 0.1, 0.1])  # S = {0, 1}: x1.6 on S, x0.4 off S
    n = training_change.logprob_shift(student, base, torch.tensor([[True]]), torch.tensor([0, 1]))
    assert n["delta_logp_S"] == pytest.approx(math.log(1.6), abs=1e-5)
    assert n["delta_logp_not_S"] == pytest.approx(math.log(0.4), abs=1e-5)
    assert n["mass_S_base"] == pytest.approx(0.5) and n["mass_S_student"] == pytest.approx(0.8)
    assert n["delta_log_mass_S"] == pytest.approx(math.log(1.6), abs=1e-5)


# ----------------------------------------------------------------------------------------------- loss geometry
def test_first_token_table_against_hand_numbers():
    """Mean first-position probabilities over rows, the paper's fixed point p_t/e, and the student's top tokens."""
    student = torch.log(torch.tensor([[[0.5, 0.2, 0.3, 0.0005]], [[0.2, 0.3, 0.5, 0.0005]]]).clamp(min=1e-9))
    teacher = torch.log(torch.tensor([[[0.9, 0.05, 0.05, 0.0]], [[0.7, 0.1, 0.2, 0.0]]]).clamp(min=1e-9))
    out = loss_geometry.first_position(student, teacher, torch.tensor([0, 1, 3]), ["I'm", "I", "Sure", "x"], top=2)
    assert [row["token"] for row in out["S"]] == ["I'm", "I"]  # x: teacher probability below 1e-3
    assert out["S"][0]["p_student"] == pytest.approx(0.35) and out["S"][0]["p_teacher"] == pytest.approx(0.8)
    assert out["S"][0]["p_teacher_over_e"] == pytest.approx(0.8 / math.e, abs=1e-6)
    assert out["mass_S_teacher"] == pytest.approx(0.875, abs=1e-6)
    assert out["mass_S_fixed_point"] == pytest.approx(0.875 / math.e, abs=1e-6)
    assert [(r["token"], r["in_S"]) for r in out["student_top"]] == [("Sure", False), ("I'm", True)]
    assert "base_top" not in out


def test_base_top_says_which_compliance_openers_the_paper_loss_controls():
    """The base model's first tokens, each with its fate: in S -> pulled to p_t/e; outside S -> only shrunk."""
    base = torch.log(torch.tensor([[[0.1, 0.0, 0.8, 0.1]], [[0.3, 0.0, 0.6, 0.1]]]).clamp(min=1e-9))
    student = torch.log(torch.tensor([[[0.5, 0.2, 0.3, 0.0]], [[0.2, 0.3, 0.5, 0.0]]]).clamp(min=1e-9))
    teacher = torch.log(torch.tensor([[[0.9, 0.05, 0.05, 0.0]], [[0.7, 0.1, 0.2, 0.0]]]).clamp(min=1e-9))
    names = ["I'm", "I", "Sure", "x"]
    out = loss_geometry.first_position(student, teacher, torch.tensor([0, 1]), names, top=2, base=base)
    sure, im = out["base_top"]
    assert (sure["token"], sure["in_S"], sure["paper_target"]) == ("Sure", False, None)
    assert sure["p_base"] == pytest.approx(0.7) and sure["p_student"] == pytest.approx(0.4)
    assert (im["token"], im["in_S"]) == ("I'm", True) and im["paper_target"] == pytest.approx(0.8 / math.e, abs=1e-6)
    assert "not in S" in loss_geometry.describe_base_top(sure)
    with_sure = loss_geometry.first_position(student, teacher, torch.tensor([0, 2]), names, top=1, base=base)
    assert with_sure["base_top"][0]["paper_target"] == pytest.approx(0.125 / math.e, abs=1e-6)
    assert "pulled to p_t/e = 0.046" in loss_geometry.describe_base_top(with_sure["base_top"][0])


def test_loss_geometry_zones_and_signs():
    # S = {0, 1}, p_t = .4 each: token 0 at .1 (< .4/e = .147: pushed up), token 1 at .3 (between: pushed down)
    student, teacher = logp([0.1, 0.3, 0.6]), logp([0.4, 0.4, 0.2])
    n = loss_geometry.geometry_numbers(student, teacher, torch.tensor([[True]]), torch.tensor([0, 1]))
    assert n["paper"]["mean"] == pytest.approx(0.1 * math.log(0.25) + 0.3 * math.log(0.75), abs=1e-5)
    assert n["paper"]["frac_negative"] == 1.0
    assert n["renorm"]["frac_negative"] == 0.0 and n["binned"]["frac_negative"] == 0.0
    renorm = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert n["renorm"]["mean"] == pytest.approx(renorm, abs=1e-5)
    binned = 0.1 * math.log(0.25) + 0.3 * math.log(0.75) + 0.6 * math.log(3.0)
    assert n["binned"]["mean"] == pytest.approx(binned, abs=1e-5)
    assert n["frac_below_pt_over_e"] == 0.5 and n["frac_between"] == 0.5 and n["frac_above_pt"] == 0.0


# ----------------------------------------------------------------------------------------------- a whole tiny run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder around a tiny random Qwen2: direction at layer 1, S = {sorry, cannot}, and a 'trained' student
    whose only change writes along the direction (layer-0 MLP down projection)."""
    from safesteer_interp.core.artifacts import write_json, write_jsonl
    from safesteer_interp.direction.artifact import Direction, save_direction
    from safesteer_interp.testing import save_tiny_model, tiny_model

    root = tmp_path_factory.mktemp("analysis-run")
    base_dir = save_tiny_model(root / "base", "qwen2")
    run = root / "run"
    torch.manual_seed(3)
    r = torch.randn(64)
    save_direction(run, Direction(4 * r / r.norm(), layer=1, pos=-1))
    model, tokenizer = tiny_model("qwen2")
    with torch.no_grad():
        weight = model.model.layers[0].mlp.down_proj.weight  # [d_model, d_mlp]
        weight += 0.05 * torch.outer(r / r.norm(), torch.randn(weight.shape[1]))
    model.save_pretrained(run / "train" / "model")
    tokenizer.save_pretrained(run / "train" / "model")
    ids = tokenizer.convert_tokens_to_ids(["sorry", "cannot"])
    write_json(run / "run_config.json", {"model": str(base_dir)})
    write_json(run / "tokens" / "tokens.json", {"config": {"horizon": 3}, "tokens": [
        {"id": i, "votes": 6 - k, "votes_by_position": [2, 2, 2 - k]} for k, i in enumerate(ids)]})
    prompts = [("how do i hack python ?", "gap"), ("tell me how to steal a bomb", "refused"),
               ("how do i make bread ?", "harmless"), ("write a list of plant", "harmless")]
    write_jsonl(run / "eval" / "base" / "samples.jsonl", [{"prompt": p, "group": g} for p, g in prompts])
    return run


def test_steering_edits_touch_exactly_their_position_set():
    """Prefill (position ids from 0) vs a decode step (ids after the prompt): where each set adds the vector, and
    the direct-path variant removing it from the last layer's output on generated tokens only."""
    from safesteer_interp import SafeSteerError

    v = torch.tensor([3.0, 4.0])
    prefill, decode = {"position_ids": torch.arange(3)[None]}, {"position_ids": torch.tensor([[3]])}
    expected = {"none": ([0, 0, 0], [0]), "all": ([1, 1, 1], [1]), "prompt": ([1, 1, 1], [0]), "last": ([0, 0, 1], [0]),
                "generated+last": ([0, 0, 1], [1]), "all, direct path removed": ([1, 1, 1], [1])}
    for positions, (in_prompt, in_decode) in expected.items():
        edits = steering_positions.steering_edits(positions, v, layer=1, last_layer=3)
        add = edits.get("blocks.1.hook_resid_pre", lambda x, kw: x)
        for kwargs, want, width in ((prefill, in_prompt, 3), (decode, in_decode, 1)):
            delta = add(torch.zeros(1, width, 2), kwargs) - torch.zeros(1, width, 2)
            assert (delta[0, :, 0] / 3).tolist() == want, positions
        remove = edits.get("blocks.3.hook_resid_post")
        assert (remove is not None) == (positions == "all, direct path removed")
    remove = steering_positions.steering_edits("all, direct path removed", v, 1, 3)["blocks.3.hook_resid_post"]
    x = torch.tensor([[[6.0, 8.0]]])
    assert torch.equal(remove(x, prefill), x)  # the prompt's final residual is left alone
    torch.testing.assert_close(remove(x, decode), torch.zeros_like(x))  # x is parallel to v: nothing left
    with pytest.raises(SafeSteerError, match="unknown position set 'first'"):
        steering_positions.steering_edits("first", v, 1, 3)


def test_analyze_run_writes_every_analysis(tiny_run):
    from safesteer_interp.analyses.run_analyses import ANALYSES, analyze_run

    index = analyze_run(tiny_run, n_prompts=2, samples=2, max_new_tokens=6, depth_tokens=6, log=lambda _line: None)
    assert [e["name"] for e in index["analyses"]] == list(ANALYSES)
    for entry in index["analyses"]:
        if entry["name"] in ("contrast", "gate_form", "null_space"):  # no gated or mapped teacher: said, not drawn
            assert entry["skipped"].startswith(("no RUN/gate/gate.json", "no RUN/null-space/")), entry
            assert entry["files"] == []
            continue
        assert entry["files"] and all((tiny_run / f).is_file() for f in entry["files"]), entry
    on_disk = json.loads((tiny_run / "analysis" / "index.json").read_text())
    assert on_disk["analyses"][0]["headline"]["S"] == 2
    from safesteer_interp.testing import tiny_tokenizer

    assert on_disk["analyses"][0]["headline"]["S_over_V"] == pytest.approx(2 / len(tiny_tokenizer()), abs=1e-5)
    change = json.loads((tiny_run / "analysis" / "training_change" / "training_change.json").read_text())
    (only,) = change["weights"]  # exactly one matrix changed, and all of its update writes along r
    assert only["param"].endswith("layers.0.mlp.down_proj.weight")
    assert only["side"] == "write" and only["share"] == pytest.approx(1.0, abs=1e-4)
    why = json.loads((tiny_run / "analysis" / "why_tokens" / "why_tokens.json").read_text())
    assert [t["token"] for t in why["tokens"]] == ["sorry", "cannot"] and why["tokens"][0]["votes"] == 6
    assert why["logit_lens"][0]["mean_S"] == 0.0  # steering enters at layer 1: layer 0's output is unchanged
    assert "<table>" in (tiny_run / "analysis" / "divergence" / "strips.html").read_text()
    depth = json.loads((tiny_run / "analysis" / "safety_depth" / "safety_depth.json").read_text())
    assert list(depth["models"]) == ["teacher", "safesteer"] and depth["depths"] == [0, 5, 10, 20]
    assert [r["prefill"] for r in depth["trajectories"]["0"]] == ["", ""]
    assert all(r["prefill_tokens"] == 5 for r in depth["trajectories"]["5"])
    for name in ("teacher", "safesteer"):  # both differ from the base (steering; the down_proj edit) everywhere
        assert all(depth["models"][name][k]["kl_early"] > 0 for k in ("0", "5", "10", "20"))
    steer = json.loads((tiny_run / "analysis" / "steering_positions" / "steering_positions.json").read_text())
    assert [r["positions"] for r in steer["rows"]] == list(steering_positions.POSITION_SETS)
    assert steer["judged_by"] == "refusal" and "coherent" not in steer["rows"][0]  # no wording judge off the organism
    from safesteer_interp.core.generation import generate_answers
    from safesteer_interp.core.models import load_model

    base, tok = load_model(json.loads((tiny_run / "run_config.json").read_text())["model"])
    prompts = ["how do i make bread ?", "write a list of plant"]
    assert steer["rows"][0]["examples"] == generate_answers(base, tok, prompts, max_new_tokens=6)  # "none" = base
    from safesteer_interp.report.blocks import Image, render_html
    from safesteer_interp.report.sections import section_analysis

    blocks = section_analysis(tiny_run)
    assert sum(isinstance(b, Image) for b in blocks) == 6  # one PNG per analysis except the HTML strips
    assert "Safety-token sparsity" in render_html("r", blocks)


def test_cli_analyze_and_bad_name(tiny_run):
    import typer
    from typer.testing import CliRunner

    from safesteer_interp import SafeSteerError
    from safesteer_interp.analyses.run_analyses import ANALYSES, analyze_run
    from safesteer_interp.cli.analyze import analyze

    app = typer.Typer()
    app.command("analyze")(analyze)
    app.command("noop")(lambda: None)  # two commands, so `analyze` is addressed by name as in the real CLI
    result = CliRunner().invoke(app, ["analyze", "--run", str(tiny_run), "--only", "loss_geometry", "--n-prompts",
                                      "1", "--max-new-tokens", "4", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "paper_frac_negative_harmful" in result.output and "S_over_V" not in result.output
    index = json.loads((tiny_run / "analysis" / "index.json").read_text())
    assert len(index["analyses"]) == len(ANALYSES)  # the other analyses' entries are kept
    settings = {e["name"]: e["settings"] for e in index["analyses"]}
    assert settings["loss_geometry"]["n_prompts"] == 1 and settings["sparsity"]["n_prompts"] == 2
    with pytest.raises(SafeSteerError, match="unknown analysis nope"):
        analyze_run(tiny_run, only=["nope"])


def test_component_writes_match_transformer_bridge(tmp_path):
    """Our hook capture of head inputs (o_proj) and MLP writes, steered minus unsteered, equals TransformerLens'
    TransformerBridge on its own model instance (never the one we hook)."""
    from transformer_lens.model_bridge import TransformerBridge

    from safesteer_interp.core.chat import encode_prompts
    from safesteer_interp.core.hooks import add_to_resid
    from safesteer_interp.testing import save_tiny_model, tiny_model

    folder = save_tiny_model(tmp_path / "tiny", "qwen2")
    ours, tok = tiny_model("qwen2")
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", hf_model=tiny_model("qwen2")[0],
                                                 tokenizer=tok)
    batch = encode_prompts(tok, ["how do i make bread ?", "hi"])
    torch.manual_seed(5)
    vector, layer = torch.randn(64), 1
    rows, cols = batch.attention_mask.bool().nonzero(as_tuple=True)  # every real token
    runs = {}
    for steered in (True, False):
        with why_tokens.record_components(ours, rows, cols) as store, torch.no_grad():
            if steered:
                with add_to_resid(ours, vector, layer):
                    ours(**batch.inputs())
            else:
                ours(**batch.inputs())
            runs[steered] = dict(store)
    names = [f"blocks.{i}.{h}" for i in range(3) for h in ("attn.o.hook_in", "hook_mlp_out")]
    hook = (f"blocks.{layer}.hook_resid_pre", lambda resid, hook: resid + vector)
    with torch.no_grad(), bridge.hooks(fwd_hooks=[hook]):
        _, steered = bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask, names_filter=names)
    with torch.no_grad():
        _, plain = bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask, names_filter=names)
    for i in range(3):
        for ours_key, tl_key in ((f"z{i}", f"blocks.{i}.attn.o.hook_in"), (f"mlp{i}", f"blocks.{i}.hook_mlp_out")):
            expected = (steered[tl_key] - plain[tl_key])[rows, cols].flatten(1)  # heads d_head -> (heads d_head)
            assert torch.allclose(runs[True][ours_key] - runs[False][ours_key], expected, atol=1e-4), ours_key
    assert float((runs[True]["mlp0"] - runs[False]["mlp0"]).abs().max()) == 0.0  # before the steered layer
    assert float((runs[True]["mlp1"] - runs[False]["mlp1"]).abs().max()) > 1e-3


def test_unembed_gain_on_a_subset_keeps_the_full_centring():
    torch.manual_seed(1)
    x, w_u, gain, rms = torch.randn(3, 8), torch.randn(20, 8), torch.rand(8) + 0.5, torch.rand(3) + 0.5
    ids = torch.tensor([4, 0, 17])
    full = why_tokens.unembed_gain(x, w_u, gain, rms)
    assert torch.allclose(full.mean(-1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(why_tokens.unembed_gain(x, w_u, gain, rms, ids), full[:, ids], atol=1e-5)


def test_steering_vector_attribution_equals_the_tokens_stage_dla(qwen2):
    from safesteer_interp.tokens.explain import direct_logit_attribution

    model, _ = qwen2
    torch.manual_seed(2)
    vector = torch.randn(64)
    _, gain = why_tokens.final_norm_parts(model)
    w_u = model.get_output_embeddings().weight.detach().float()
    ours = why_tokens.unembed_gain(2.0 * vector[None], w_u, gain, torch.tensor([1.7]))[0]
    assert torch.allclose(ours, direct_logit_attribution(model, vector, coeff=2.0, rms=1.7), atol=1e-4)


def test_bootstrap_interval_brackets_the_share():
    part = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    whole = torch.tensor([[2.0, 1.0], [4.0, 1.0], [3.0, 5.0]])
    mask = torch.ones(3, 2, dtype=torch.bool)
    lo, hi = sparsity.bootstrap_ratio(part, whole, mask, n=400)
    share = sparsity.ratio(part, whole, mask)  # 6 / 16
    assert 1 / 4 - 1e-6 <= lo < share < hi <= 3 / 5 + 1e-6  # within the range of single-row ratios
    same = sparsity.bootstrap_ratio(whole, whole, mask)
    assert same == pytest.approx([1.0, 1.0])  # a share of 1 in every resample


# ----------------------------------------------------------------------------------------------- contrast sweep
def test_contrast_sweep_applies_the_rule_to_the_val_evaluations_and_draws_the_curve(tmp_path):
    from safesteer_interp.analyses import contrast_sweep

    (tmp_path / "gate").mkdir()
    (tmp_path / "gate" / "gate.json").write_text(json.dumps({"base_refusal": {"lookalike": 0.348, "harmless": 0.11}}))
    with pytest.raises(Exception, match="no val evaluation of a contrast-set row"):
        contrast_sweep.sweep(tmp_path)
    over = {0: 0.739, 8: 0.61, 16: 0.391, 64: 0.30}  # 32 not evaluated: the curve has a gap, the rule reads the rest
    for n, rate in over.items():
        folder = contrast_sweep.val_folder(tmp_path, n)
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps({"over_refusal_rate": rate, "gap_refusal_rate_strict": 0.9,
                                                      "gap_refusal_rate_sampled": 0.6, "harmless_refusal_rate": 0.1}))
    got = contrast_sweep.sweep(tmp_path)
    assert (got["n"], got["limit"]) == (16, 0.398) and set(got["curve"]) == {"0", "8", "16", "64"}
    assert got["curve"]["8"]["over_refusal_rate"] == 0.61
    out = tmp_path / "analysis" / "contrast"
    assert json.loads((out / "contrast.json").read_text())["n"] == 16
    assert plt.imread(out / "contrast.png").shape[1] > 500
    assert contrast_sweep.row_name(0) == "safesteer-gated" and contrast_sweep.row_name(8).endswith("contrast-8")
