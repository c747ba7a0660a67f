#!/usr/bin/env bash
# GPU smoke test: the organism pipeline and a random 0.5B-shaped Qwen2 LoRA distillation step on one GPU, offline,
# in at most ~8 minutes, printing tokens/s and peak GPU memory. See benchmarks/README.md.
#
#   benchmarks/gpu_smoke.sh [--out DIR] [--budget S]        on the GPU machine, from anywhere (no network needed)
#   benchmarks/gpu_smoke.sh --cpu-dry-run [--out DIR]       the same steps with a scaled-down model, on CPU
#   benchmarks/gpu_smoke.sh --fetch-wheels [--python-version X.Y] [--skip-file FILE]
#                                                           on a networked machine: fill benchmarks/wheelhouse/
#
# The GPU machine needs a python3 with a CUDA build of torch (PYTHON=... to choose one). The script makes a venv
# that sees that interpreter's packages (--system-site-packages, plus its site-packages when it is itself a venv),
# installs this package into it without dependencies, then installs whatever of the runtime dependencies the
# machine lacks from benchmarks/wheelhouse/ (pip --no-index: nothing is downloaded). A wheel in the wheelhouse wins
# over the machine's own version of that package. Results: DIR/gpu_smoke.json (summary), organism.json,
# qwen05b.json, qwen05b-gc.json, opd_vs_trl.json (when trl is available), organism-run.tar.gz (the run folder
# without weights), smoke.log. Default DIR: runs/gpu_smoke (runs/gpu_smoke_cpu for --cpu-dry-run).
#
# Environment: PYTHON (interpreter with torch), SMOKE_VENV (default /tmp/safesteer-gpu-smoke-venv),
# WHEELHOUSE (default benchmarks/wheelhouse), FETCH_PYTHON (--fetch-wheels: the dev venv with the package and the
# bench extra installed; default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=gpu
OUT=""
BUDGET=450  # seconds for all phases, install included (the target is 8 minutes in all)
PY_TARGET=""
SKIP_FILE=""
WHEELHOUSE="${WHEELHOUSE:-$ROOT/benchmarks/wheelhouse}"
VENV="${SMOKE_VENV:-/tmp/safesteer-gpu-smoke-venv}"

die() { echo "gpu_smoke: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift 2 ;;
    --cpu-dry-run) MODE=cpu; shift ;;
    --fetch-wheels) MODE=fetch; shift ;;
    --python-version) PY_TARGET="${2:?--python-version needs X.Y}"; shift 2 ;;
    --skip-file) SKIP_FILE="${2:?--skip-file needs a file}"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# ------------------------------------------------------------------------------------------- --fetch-wheels
if [[ "$MODE" == fetch ]]; then
  FETCH_PYTHON="${FETCH_PYTHON:-$ROOT/.venv/bin/python}"
  [[ -x "$FETCH_PYTHON" ]] || die "FETCH_PYTHON=$FETCH_PYTHON is not an interpreter; make the dev venv first (make venv-dev; pip install -e '.[bench]')"
  mkdir -p "$WHEELHOUSE"
  printf '*\n' > "$WHEELHOUSE/.gitignore"  # never committed
  # Pinned closure of what the smoke imports (the runtime dependencies minus the analysis-only ones, plus the
  # bench extra), read from the dev venv's installed metadata; torch and what ships with it are on the GPU machine.
  "$FETCH_PYTHON" - "$SKIP_FILE" > "$WHEELHOUSE/requirements.txt" <<'PY'
import re, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canon
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name as canon

try:
    requires = [Requirement(r) for r in metadata.requires("safesteer-interp") or []]
except metadata.PackageNotFoundError:
    sys.exit("safesteer-interp is not installed in the fetch venv; pip install -e '.[bench]' there first")
analysis_only = {"transformer-lens", "nnsight", "datasets", "torch"}
roots = [r.name for r in requires if not r.marker and canon(r.name) not in analysis_only]
roots += [r.name for r in requires if r.marker and r.marker.evaluate({"extra": "bench"})]
skip = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|"
                  r"typing-extensions|setuptools|pip|safesteer-interp)$")
have = set()
if sys.argv[1]:
    have = {canon(re.split(r"[=<>~!@ ;\[]", line.strip(), maxsplit=1)[0]) for line in open(sys.argv[1])
            if line.strip() and not line.startswith("#")}
seen, todo, pins = set(), list(roots), {}
while todo:
    name = canon(todo.pop())
    if name in seen or skip.match(name):
        continue
    seen.add(name)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        sys.exit(f"{name} is not installed in the fetch venv; pip install -e '.[bench]' there first")
    if name in have:  # the GPU machine has it, and whatever it needs
        continue
    pins[name] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if not req.marker or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print("\n".join(f"{k}=={v}" for k, v in sorted(pins.items())))
PY
  count=$(grep -c . "$WHEELHOUSE/requirements.txt" || true)
  echo "gpu_smoke: fetching $count wheels into $WHEELHOUSE${PY_TARGET:+ for Python $PY_TARGET}"
  while read -r pin; do
    [[ -z "$pin" ]] && continue
    if [[ -n "$PY_TARGET" ]]; then  # binary wheels for another interpreter; pure-Python ones fit any
      "$FETCH_PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_TARGET" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$WHEELHOUSE" "$pin" 2>/dev/null && continue
    fi
    # this interpreter's wheel, or one built from an sdist (only pure-Python packages come without wheels)
    "$FETCH_PYTHON" -m pip wheel -q --no-deps -w "$WHEELHOUSE" "$pin" || die "could not fetch $pin"
  done < "$WHEELHOUSE/requirements.txt"
  size=$(du -sm "$WHEELHOUSE" | cut -f1)
  echo "gpu_smoke: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, ${size} MiB in $WHEELHOUSE"
  if [[ "$size" -gt 60 ]]; then
    echo "gpu_smoke: over 60 MiB; pass --skip-file with the GPU machine's package list (pip freeze there) to fetch only what it lacks" >&2
  fi
  exit 0
fi

# ------------------------------------------------------------------------------------------- run
STARTED=$(date +%s)
if [[ "$MODE" == cpu ]]; then
  OUT="${OUT:-$ROOT/runs/gpu_smoke_cpu}"
  if [[ -z "${PYTHON:-}" && -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
  OUT="${OUT:-$ROOT/runs/gpu_smoke}"
fi
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d /tmp/safesteer-gpu-smoke.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/smoke.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PHASES="$WORK/phases.jsonl"
: > "$PHASES"
export ROOT VENV PYTHON WORK WHEELHOUSE

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
remaining() { echo $(( BUDGET - ($(date +%s) - STARTED) )); }

# phase NAME CAP_S CMD...: run under `timeout` within what is left of the budget; record status and seconds
phase() {
  local name="$1" cap="$2" left status=ok rc=0 t0
  shift 2
  left=$(remaining)
  if [[ "$left" -lt 20 ]]; then
    log "$name: skipped, ${left}s of the budget left"
    echo "{\"phase\": \"$name\", \"status\": \"skipped (budget)\", \"seconds\": 0}" >> "$PHASES"
    return 0
  fi
  [[ "$cap" -gt "$left" ]] && cap="$left"
  log "$name: starting (timeout ${cap}s)"
  t0=$(date +%s)
  if declare -F "$1" > /dev/null; then  # a function of this script: run it in a child bash, under the timeout
    timeout --kill-after=10 "$cap" bash -c "$(declare -f "$1"); $(printf '%q ' "$@")" >> "$LOG" 2>&1 || rc=$?
  else
    timeout --kill-after=10 "$cap" "$@" >> "$LOG" 2>&1 || rc=$?
  fi
  if [[ "$rc" -eq 124 || "$rc" -eq 137 ]]; then status=timeout; elif [[ "$rc" -ne 0 ]]; then status="failed (exit $rc)"; fi
  log "$name: $status after $(( $(date +%s) - t0 ))s"
  if [[ "$status" != ok ]]; then tail -n 25 "$LOG" | sed "s/^/  [$name] /"; fi
  echo "{\"phase\": \"$name\", \"status\": \"$status\", \"seconds\": $(( $(date +%s) - t0 ))}" >> "$PHASES"
  return 0
}
phase_ok() { grep -q "\"phase\": \"$1\", \"status\": \"ok\"" "$PHASES"; }

log "gpu_smoke ($MODE) from $ROOT, results in $OUT, budget ${BUDGET}s, python: $PYTHON"
command -v "$PYTHON" > /dev/null || die "no interpreter '$PYTHON'; set PYTHON to a python with torch"
if [[ "$MODE" == gpu ]]; then
  "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>> "$LOG" \
    || die "$PYTHON has no CUDA-enabled torch (torch.cuda.is_available() is False or torch is missing); set PYTHON to one that has, or use --cpu-dry-run"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$LOG" 2>&1 || true
else
  "$PYTHON" -c 'import torch' 2>> "$LOG" || die "$PYTHON cannot import torch; set PYTHON"
fi

# ------------------------------------------------------------------------------------------- install
install() {
  set -euo pipefail
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
  fi
  # The venv sees the base interpreter's packages; when $PYTHON is itself a venv (e.g. /opt/torch/.venv), add its
  # site-packages too (addsitedir also runs their .pth files). pip itself comes from there.
  local site
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$PYTHON" - "$site/_smoke_parent.pth" <<'PY'
import site, sys
paths = [p for p in site.getsitepackages() + [site.getusersitepackages()] if p]
open(sys.argv[1], "w").write("".join(f"import site; site.addsitedir({p!r})\n" for p in paths))
PY
  local pip=("$VENV/bin/python" -m pip)
  "${pip[@]}" --version
  "${pip[@]}" install -q --no-index --no-deps --no-build-isolation -e "$ROOT"
  # Runtime dependencies of what the smoke runs (pyproject's list minus analysis-only packages); the machine's own
  # versions are used unless the wheelhouse holds the package, whose pinned version then wins.
  "$VENV/bin/python" - "$WORK/runtime.txt" "$WORK/constraints.txt" "$WHEELHOUSE" <<'PY'
import pathlib, sys
from importlib import metadata
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name as canon
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name as canon

analysis_only = {"transformer-lens", "nnsight", "datasets", "torch"}
requires = [Requirement(r) for r in metadata.requires("safesteer-interp") or []]
runtime = [str(r) for r in requires if not r.marker and canon(r.name) not in analysis_only]
pathlib.Path(sys.argv[1]).write_text("\n".join(runtime) + "\n")
pins = []
for wheel in sorted(pathlib.Path(sys.argv[3]).glob("*.whl")) if pathlib.Path(sys.argv[3]).is_dir() else []:
    name, version = wheel.name.split("-")[:2]
    pins.append(f"{canon(name)}=={version}")
pathlib.Path(sys.argv[2]).write_text("\n".join(pins) + "\n")
PY
  local links=()
  [[ -d "$WHEELHOUSE" ]] && links=(--find-links "$WHEELHOUSE")
  if ! "${pip[@]}" install -q --no-index "${links[@]}" -r "$WORK/runtime.txt" -c "$WORK/constraints.txt"; then
    echo "gpu_smoke: runtime dependencies missing on this machine and not in $WHEELHOUSE; on a networked machine run" \
         "benchmarks/gpu_smoke.sh --fetch-wheels [--python-version X.Y] and bring benchmarks/wheelhouse/ along" >&2
    return 3
  fi
  if [[ -d "$WHEELHOUSE" ]] && ls "$WHEELHOUSE"/trl-*.whl > /dev/null 2>&1; then  # for opd_vs_trl (optional)
    "${pip[@]}" install -q --no-index --find-links "$WHEELHOUSE" trl -c "$WORK/constraints.txt" \
      || echo "gpu_smoke: trl from the wheelhouse did not install; the TRL comparison will be skipped" >&2
  fi
  "$VENV/bin/python" -c 'import safesteer_interp.cli.main, safesteer_interp.distill, safesteer_interp.pipeline, torch, transformers, peft, accelerate; print("imports ok: torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)'
}
phase install 150 install
phase_ok install || { log "install failed: see $LOG"; }
PY_RUN="$VENV/bin/python"

# ------------------------------------------------------------------------------------------- Python pieces
cat > "$WORK/organism_run.py" <<'PY'
"""`safesteer-interp run` in this process, so that the GPU's peak allocation can be read at the end."""
import json, statistics, sys, time
from pathlib import Path

import torch

run, out = sys.argv[1], sys.argv[2]
sys.argv = ["safesteer-interp", "run", "--out", run]
from safesteer_interp.cli.main import main  # noqa: E402

start, code = time.perf_counter(), 0
try:
    main()
except SystemExit as exit_:
    code = exit_.code or 0
seconds = time.perf_counter() - start
stages = {p.parent.name: json.loads(p.read_text()).get("seconds") for p in sorted(Path(run).glob("*/done.json"))}
metrics = [json.loads(line) for line in (Path(run) / "train" / "metrics.jsonl").read_text().splitlines()] \
    if (Path(run) / "train" / "metrics.jsonl").is_file() else []
timed = metrics[1:] or metrics  # the first step includes CUDA and allocator warm-up
cuda = torch.cuda.is_available()
result = {"exit_code": code, "wall_s": round(seconds, 2), "stage_s": stages,
          "device_note": "direction/tokens/eval stages load on CPU (load_model default); train moves to CUDA "
                         "through accelerate when available",
          "train_steps": len(metrics),
          "train_tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in timed) if timed else None,
          "train_tokens_per_s_overall": round(sum(m["tokens"] for m in timed) / sum(m["seconds"] for m in timed), 1)
          if timed else None,
          "train_step_s_median": statistics.median(m["seconds"] for m in timed) if timed else None,
          "peak_gpu_MiB": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
          "peak_gpu_reserved_MiB": round(torch.cuda.max_memory_reserved() / 2**20, 1) if cuda else None,
          "summary": json.loads((Path(run) / "summary.json").read_text()) if (Path(run) / "summary.json").is_file()
          else None}
Path(out).write_text(json.dumps(result, indent=2))
print(f"organism pipeline: exit {code}, {seconds:.1f} s, stages {stages}, train {result['train_tokens_per_s_median']}"
      f" tokens/s (median step), peak GPU {result['peak_gpu_MiB']} MiB")
sys.exit(code)
PY

cat > "$WORK/qwen_step.py" <<'PY'
"""A random Qwen2 of Qwen2.5-0.5B's shape, bf16, LoRA student with the one-copy steered teacher, through Distiller."""
import argparse, json, statistics, tempfile, time

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from safesteer_interp.core.anatomy import base_model
from safesteer_interp.core.generation import eos_token_ids
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.distill.config import DistillConfig
from safesteer_interp.distill.trainer import Distiller, default_prompts
from safesteer_interp.testing import tiny_tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--grad-checkpointing", action="store_true")
parser.add_argument("--cpu-dry-run", action="store_true")
parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
args = parser.parse_args()

cuda = torch.cuda.is_available() and not args.cpu_dry_run
device = "cuda" if cuda else "cpu"
# No tokenizer for a random model offline: the word-level test tokenizer renders the prompts; the model keeps
# Qwen2.5's 151,936-token vocabulary (sampled ids beyond the tokenizer are scored, never decoded).
tok = tiny_tokenizer()
shape = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2)  # Qwen2.5-0.5B
if args.cpu_dry_run:
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                     tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, **shape)
torch.manual_seed(0)
dtype = torch.bfloat16 if cuda else torch.float32
start = time.perf_counter()
with torch.device(device):
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
model.eval()
build_s = time.perf_counter() - start
n_params = sum(p.numel() for p in model.parameters())
layer = config.num_hidden_layers // 2
vector = torch.randn(config.hidden_size, generator=torch.Generator().manual_seed(1))
direction = Direction(vector / vector.norm() * 4.0, layer=layer, pos=-1)
safety = torch.randperm(config.vocab_size, generator=torch.Generator().manual_seed(2))[:50].sort().values
prompts, samples, new_tokens = (4, 8, 64) if not args.cpu_dry_run else (2, 2, 8)
cfg = DistillConfig(vocab="safe", restrict="paper", divergence="reverse", samples=samples, prompts_per_step=prompts,
                    max_new_tokens=new_tokens, max_steps=args.steps + 1, lora_r=16,
                    grad_checkpointing=args.grad_checkpointing, bf16=True)
with tempfile.TemporaryDirectory() as run:
    distiller = Distiller(run, model, tok, direction, default_prompts("organism", n=40), cfg, safety_ids=safety)
    distiller.prepare(resume=False)
    distiller.eos = eos_token_ids(base_model(distiller.student), tok)  # set by Distiller.run(); step() needs it
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    records = []
    for step in range(args.steps + 1):
        record = distiller.step(step)
        if cuda:
            torch.cuda.synchronize()
        records.append(record)
        print(f"step {step} ({'warm-up' if step == 0 else 'timed'}): {record['seconds']} s, {record['tokens']} "
              f"answer tokens, {record['tokens_per_s']} tokens/s, loss {record['loss']:.4f}", flush=True)
timed = records[1:]
result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
          "cuda": torch.version.cuda, "shape": {**shape, "vocab_size": config.vocab_size},
          "params_M": round(n_params / 1e6, 1), "dtype": str(dtype), "build_s": round(build_s, 2),
          "batch": f"{prompts} prompts x {samples} samples x {new_tokens} new tokens, micro-batch {cfg.micro_batch}",
          "lora_r": cfg.lora_r, "grad_checkpointing": args.grad_checkpointing, "teacher": "one copy (adapters off)",
          "warmup_step_s": records[0]["seconds"], "step_s": [r["seconds"] for r in timed],
          "tokens_per_step": [r["tokens"] for r in timed],
          "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in timed),
          "peak_gpu_MiB": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
          "peak_gpu_reserved_MiB": round(torch.cuda.max_memory_reserved() / 2**20, 1) if cuda else None}
with open(args.out, "w") as handle:
    json.dump(result, handle, indent=2)
print(f"qwen2 0.5B-shaped ({result['params_M']} M params{', grad checkpointing' if args.grad_checkpointing else ''}):"
      f" {result['tokens_per_s_median']} tokens/s, peak GPU {result['peak_gpu_MiB']} MiB")
PY

# ------------------------------------------------------------------------------------------- (a) the organism
DRY=()
[[ "$MODE" == cpu ]] && DRY=(--cpu-dry-run)
if phase_ok install; then
  phase organism 200 "$PY_RUN" "$WORK/organism_run.py" "$WORK/organism" "$OUT/organism.json"
  if [[ -d "$WORK/organism" ]]; then  # the run folder without weights (the device tool brings back few files)
    tar czf "$OUT/organism-run.tar.gz" --exclude='*.safetensors' -C "$WORK" organism || true
  fi
  # (b) a random 0.5B-shaped Qwen2, LoRA one-copy teacher, without and with gradient checkpointing
  phase qwen05b 120 "$PY_RUN" "$WORK/qwen_step.py" --out "$OUT/qwen05b.json" "${DRY[@]}"
  phase qwen05b-gc 120 "$PY_RUN" "$WORK/qwen_step.py" --out "$OUT/qwen05b-gc.json" --grad-checkpointing "${DRY[@]}"
  # (c) optional: ours vs TRL on the organism, when trl is importable (carried in the wheelhouse)
  if "$PY_RUN" -c 'import trl' > /dev/null 2>&1; then
    phase opd_vs_trl 100 "$PY_RUN" "$ROOT/benchmarks/opd_vs_trl.py" --rounds 1 --steps 3 --json "$OUT/opd_vs_trl.json"
  else
    log "opd_vs_trl: skipped (trl not importable; carry its wheel in the wheelhouse to include it)"
  fi
fi

# ------------------------------------------------------------------------------------------- summary
"$PYTHON" - "$OUT" "$PHASES" "$MODE" "$(( $(date +%s) - STARTED ))" <<'PY' | tee -a "$LOG" || true
import json, pathlib, sys

out, phases, mode, seconds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
summary = {"mode": mode, "total_s": seconds, "phases": [json.loads(line) for line in phases.read_text().splitlines()]}
status = {p["phase"]: p["status"] for p in summary["phases"]}
summary["ok"] = all(status.get(name) == "ok" for name in ("install", "organism", "qwen05b", "qwen05b-gc"))
for name in ("organism", "qwen05b", "qwen05b-gc", "opd_vs_trl"):
    path = out / f"{name}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if name == "opd_vs_trl":
            data = {k: data.get(k) for k in ("speedup_trl_over_ours", "tokens_per_s_ratio",
                                              "peak_memory_ratio_trl_over_ours")} | {
                side: {k: data[side].get(k) for k in ("median_step_s", "tokens_per_s", "peak_MiB")}
                for side in ("ours", "trl")}
        elif name == "organism":
            data = {k: v for k, v in data.items() if k != "summary"}
        summary[name] = data
(out / "gpu_smoke.json").write_text(json.dumps(summary, indent=2))
print(f"\n== gpu_smoke ({mode}) in {seconds} s: {'ok' if summary['ok'] else 'FAILED'} ==")
for p in summary["phases"]:
    print(f"  {p['phase']:12s} {p['status']:18s} {p['seconds']:4d} s")
org = summary.get("organism")
if org:
    print(f"  organism: pipeline {org['wall_s']} s, train {org['train_tokens_per_s_median']} tokens/s (median step),"
          f" peak GPU {org['peak_gpu_MiB']} MiB")
for name in ("qwen05b", "qwen05b-gc"):
    q = summary.get(name)
    if q:
        print(f"  {name}: {q['params_M']} M params, {q['tokens_per_s_median']} tokens/s, step {q['step_s']} s, "
              f"peak GPU {q['peak_gpu_MiB']} MiB (reserved {q['peak_gpu_reserved_MiB']})")
if summary.get("opd_vs_trl"):
    print(f"  ours vs TRL: {json.dumps(summary['opd_vs_trl'])}")
print(f"  wrote {out / 'gpu_smoke.json'}")
PY
grep -q '"ok": true' "$OUT/gpu_smoke.json" 2> /dev/null || exit 1
