"""The named variants of the distillation: what each trains on, with which loss and which teacher, as typed records.

vocab: the tokens the loss sees (the safety set S, the teacher's top-K per position, or all); divergence: reverse KL
(SafeSteer), forward KL or generalised JSD; restrict: how a token set enters it (`paper`, the published unnormalised
partial sum; `renorm` and `binned`, our variants). `distill.losses` computes each loss; `VARIANTS` names every row a
run can train (no torch here: the CLI lists them in its help).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Vocab = Literal["full", "topk", "safe"]
Divergence = Literal["reverse", "forward", "jsd"]
Restrict = Literal["paper", "renorm", "binned"]
VOCABS, DIVERGENCES, RESTRICTS = get_args(Vocab), get_args(Divergence), get_args(Restrict)
Trainer = Literal["opd", "sft"]  # on-policy distillation (the student's own samples), or SFT on the teacher's answers
# How the teacher is made: stage 1's steered teacher as it is, or one chosen on HarmBench val by its refusal after a
# compliant prefill (`distill.deepen`: a multiple of stage 1's coefficient, or stage 1's teacher plus a refusing-answer
# direction); the prefill rules also begin most training answers with a compliant prefill. "gated": stage 1's teacher
# steering only the prompts a harm gate passes, the gate's layer and threshold chosen on val (`direction.gate`);
# "prefill-answer-gated": the prefill-answer teacher behind that gate, read where the request ends (issue 36);
# "gated-refusal": stage 1's teacher behind a gate that reads stage 1's own direction (`distill.gated.GATE_KINDS`);
# "null-space": stage 1's steering, each prompt by its own vector from a map fitted to vanish on benign prompts
# (`distill.null_space`, AlphaSteer).
TeacherRule = Literal["stage1", "prefill-coeff", "prefill-answer", "gated", "prefill-answer-gated", "gated-refusal",
                      "null-space"]
ModelKind = Literal["organism", "real"]
TRAINERS, TEACHER_RULES, MODEL_KINDS = get_args(Trainer), get_args(TeacherRule), get_args(ModelKind)
CONTRAST_SIZES = (8, 16, 32, 64)  # benign prompts of the contrast-set rows (0 is safesteer-gated itself)
# safesteer-recover-gated's contrast set: the n the selectivity table carried to 3 seeds (seed 42's test-informed
# choice; the val rule chose 8)
RECOVER_GATED_BENIGN = 16


@dataclass(frozen=True)
class Variant:
    """One trained row of a run. Every variant shares the run's prompts, seed and step budget."""

    name: str
    about: str  # one line: what the row asks (CLI help, report)
    vocab: Vocab = "safe"
    restrict: Restrict = "paper"
    divergence: Divergence = "reverse"
    trainer: Trainer = "opd"
    anchor_weight: float = 0.0  # > 0: plus a full-vocabulary KL to the base on harmless training prompts (general data)
    teacher_rule: TeacherRule = "stage1"
    # > 0: a contrast set, this many benign training prompts beside the harmful ones (`distill.gated.contrast_prompts`),
    # scored by the same teacher; only a gated teacher, which *is* the base model on a benign prompt, teaches the
    # student "not here" with them (stage 1's teacher refuses them too)
    benign: int = 0
    runs_on: tuple[ModelKind, ...] = MODEL_KINDS  # the model kinds `run --baselines` trains it for

    def __post_init__(self):
        for value, allowed, field in ((self.vocab, VOCABS, "vocab"), (self.restrict, RESTRICTS, "restrict"),
                                      (self.divergence, DIVERGENCES, "divergence"), (self.trainer, TRAINERS, "trainer"),
                                      (self.teacher_rule, TEACHER_RULES, "teacher_rule")):
            if value not in allowed:
                raise ValueError(f"variant {self.name!r}: {field} {value!r} is not one of {', '.join(allowed)}")
        if self.benign < 0 or (self.benign and not (self.gated or self.mapped)):
            raise ValueError(f"variant {self.name!r}: benign {self.benign} needs a gated or mapped teacher and must be "
                             ">= 0 "
                             "(stage 1's teacher refuses benign prompts as well)")
        if not set(self.runs_on) <= set(MODEL_KINDS):
            raise ValueError(f"variant {self.name!r}: runs_on {self.runs_on} names an unknown model kind")

    @property
    def deep(self) -> bool:
        """The teacher is chosen on prefilled HarmBench val and training answers are prefilled (real models only)."""
        return self.teacher_rule in ("prefill-coeff", "prefill-answer", "prefill-answer-gated")

    @property
    def gated(self) -> bool:
        """The teacher steers only the prompts the run's harm gate passes (`distill.gated`)."""
        return self.teacher_rule in ("gated", "prefill-answer-gated", "gated-refusal")

    @property
    def mapped(self) -> bool:
        """The teacher steers each prompt by its own vector from the run's null-space map (`distill.null_space`)."""
        return self.teacher_rule == "null-space"

    @property
    def gate_kind(self) -> str:
        """Which of the run's gates a gated teacher reads (`distill.gated.GATE_KINDS`; "task": RUN/gate/)."""
        return "refusal" if self.teacher_rule == "gated-refusal" else "task"

    @property
    def needs_real(self) -> bool:
        """Its teacher is chosen on HarmBench val and our val sets: a real-model run's splits."""
        return self.teacher_rule != "stage1"

    @property
    def loss(self) -> str:
        """The loss in words, as the run's train/config.json provenance names it."""
        return f"{self.vocab}/{self.restrict}/{self.divergence}" + (
            f" + anchor {self.anchor_weight}" if self.anchor_weight else "") + (
            f" + {self.benign} benign prompts" if self.benign else "")


# The published method. Every baseline below shares its prompts, seed and step budget.
SAFESTEER = Variant("safesteer", "the published method: S, the `paper` loss (reverse KL's partial sum over S)")
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("safesteer-binned", "S plus one bucket for the rest of the vocabulary: a true divergence (ours)",
            restrict="binned"),
    Variant("opd-full", "on-policy distillation over the full vocabulary", vocab="full"),
    # the organism's probe of the published loss's partial sum; on a real model each baseline costs ~8 min of a
    # 2-core machine, and the real-model table keeps the ones the comparison needs
    Variant("opd-topk", "on-policy distillation over the teacher's top-K tokens per position", vocab="topk",
            runs_on=("organism",)),
    Variant("sft-teacher", "SFT on the steered teacher's own answers (off-policy)", vocab="full", trainer="sft"),
    # SafeSteer plus the general data the method does without (`distill.step.anchor_term`)
    Variant("safesteer-anchor", "SafeSteer + a KL-to-base anchor on harmless training prompts (general data)",
            anchor_weight=1.0),
    # issue 34: the row between `binned` and safesteer-recover-anchor (how much does the anchor alone buy?)
    Variant("safesteer-binned-anchor", "safesteer-binned + the anchor's general data", restrict="binned",
            anchor_weight=1.0, runs_on=("real",)),
    Variant("safesteer-deep", "binned, a teacher coefficient chosen on prefilled val, prefilled training answers",
            restrict="binned", teacher_rule="prefill-coeff", runs_on=("real",)),
    Variant("safesteer-recover", "safesteer-deep's answers, stage 1's teacher + a refusing-answer direction",
            restrict="binned", teacher_rule="prefill-answer", runs_on=("real",)),
    # outside the no-general-data spirit: does the recovering student's over-refusal come from having no
    # counter-examples?
    Variant("safesteer-recover-anchor", "safesteer-recover + the anchor's general data", restrict="binned",
            anchor_weight=1.0, teacher_rule="prefill-answer", runs_on=("real",)),
    # issue 34: a teacher that refuses harm, not look-alikes; distilled on the harmful prompts only (no general data)
    Variant("safesteer-gated", "binned, with a harm-gated teacher (steers only the prompts its gate passes; gate "
            "chosen on val)", restrict="binned", teacher_rule="gated", runs_on=("real",)),
    # ... and on a contrast set: the harmful prompts plus n benign ones, where the gated teacher is the base model, so
    # the one loss says "refuse here, not there" (the sweep over n: `distill.gated.CONTRAST_RULE`)
    *(Variant(f"safesteer-gated-contrast-{n}", f"safesteer-gated on the harmful prompts + {n} benign training "
              "prompts (look-alikes, then harmless)", restrict="binned", teacher_rule="gated", benign=n,
              runs_on=("real",)) for n in CONTRAST_SIZES),
    # issue 34: stage 1's teacher behind a gate reading stage 1's own direction (it opens on XSTest's unsafe questions,
    # the task gate on none: analyses/gate_form.py), on the harmful prompts alone and with the three-seed row's 16
    *(Variant(f"safesteer-gated-refusal{'' if n == 0 else f'-contrast-{n}'}", "binned, stage 1's teacher behind a "
              f"gate on stage 1's own direction (threshold chosen on val){f', + {n} benign prompts' if n else ''}",
              restrict="binned", teacher_rule="gated-refusal", benign=n, runs_on=("real",))
      for n in (0, RECOVER_GATED_BENIGN)),
    # issue 34: AlphaSteer's construction, the second the issue names: a steering map that is ~0 on benign prompts by
    # construction (fitted on benign train activations), no threshold; alone, and with the three-seed row's 16
    *(Variant(f"safesteer-null-space{'' if n == 0 else f'-contrast-{n}'}", "binned, stage 1's steering through a "
              "null-space map fitted on benign train prompts (AlphaSteer; ridge chosen on val)"
              f"{f', + {n} benign prompts' if n else ''}", restrict="binned", teacher_rule="null-space", benign=n,
              runs_on=("real",)) for n in (0, RECOVER_GATED_BENIGN)),
    # issue 36: safesteer-recover's teacher (chosen on prefilled val exactly as there) behind the run's gate, read at
    # the request's end, distilled on the prefilled harmful prompts plus the contrast set of the three-seed
    # selectivity row (16 benign prompts, answered plainly): deep where harmful, the base where not
    Variant("safesteer-recover-gated", "safesteer-recover's teacher behind the harm gate, on its prefilled harmful "
            f"prompts + {RECOVER_GATED_BENIGN} benign ones", restrict="binned", teacher_rule="prefill-answer-gated",
            benign=RECOVER_GATED_BENIGN, runs_on=("real",)),
)}


def variants_help(runs_on: bool = False) -> str:
    """Every variant with what it asks (and, with `runs_on`, the model kinds it runs on), for the CLI's help."""
    def kinds(v: Variant) -> str:
        only = {("organism",): "the organism only", ("real",): "real models only"}.get(v.runs_on, "")
        return f" ({only})" if runs_on and only else ""
    return "; ".join(f"{v.name}: {v.about}{kinds(v)}" for v in VARIANTS.values())


__all__ = ["CONTRAST_SIZES", "DIVERGENCES", "MODEL_KINDS", "RECOVER_GATED_BENIGN", "RESTRICTS", "SAFESTEER",
           "TEACHER_RULES", "TRAINERS", "VARIANTS", "VOCABS", "Divergence", "ModelKind", "Restrict", "TeacherRule",
           "Trainer", "Variant", "Vocab", "variants_help"]
