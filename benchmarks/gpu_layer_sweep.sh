#!/usr/bin/env bash
# Issue 22's device check, one script for a lent GPU (under 8 minutes on an H100/H200; each part has its own
# timeout so one slow part cannot take the others' time). Writes JSON to $OUT (default benchmarks/results/gpu).
#
#   TOKENIZER=path/to/smollm2-tokenizer bash benchmarks/gpu_layer_sweep.sh
#
# TOKENIZER: a folder with SmolLM2-135M's tokenizer files (tokenizer.json, tokenizer_config.json; copy them from
# ~/.cache/dreamy/bundled_smollm2-135m into the working tree so they travel to the device machine). No weights.
# Dry run on a CPU (tiny packs, one iteration): DRY=1 DEVICE=cpu bash benchmarks/gpu_layer_sweep.sh
set -u
PY=${PY:-python}
OUT=${OUT:-benchmarks/results/gpu}
DEVICE=${DEVICE:-cuda}
TOKENIZER=${TOKENIZER:-$HOME/.cache/dreamy/bundled_smollm2-135m}
mkdir -p "$OUT"
if [ "${DRY:-0}" = 1 ]; then
  PACKS=1,2; IMAGE_PACKS=1,2; ITERS=1; STEPS=1; SIZE=(--size 32); BUDGET=(); LIMIT=300
else
  PACKS=1,8,32,128,256,512; IMAGE_PACKS=1,32,256; ITERS=5; STEPS=8; SIZE=(); BUDGET=(--full); LIMIT=240
fi
$PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
# 1. prompts: SmolLM2-shape EPO (random init, the real tokenizer) at the default budget (population 8 x 32
#    children), s per neuron-iteration against the pack (done-means: <= 0.03 s at a pack >= 128)
timeout "$LIMIT" $PY -m benchmarks.layer_sweep --kind prompt --device "$DEVICE" --timing-only --tokenizer "$TOKENIZER" \
  --packs "$PACKS" --iters "$ITERS" "${BUDGET[@]}" --results-dir "$OUT" || echo "prompt sweep: exit $?"
# 2. images: EfficientNet-Lite0 class logits, target-steps/s against the pack (1,000 classes at 256 steps
#    projected from the pack of 256; done-means: <= 3 minutes)
timeout 120 $PY -m benchmarks.layer_sweep --kind image --device "$DEVICE" --image-packs "$IMAGE_PACKS" \
  --steps "$STEPS" "${SIZE[@]}" --results-dir "$OUT" || echo "image sweep: exit $?"
#    and the same under a bf16 autocast (speed only; its quality needs the transfer benchmark)
timeout 120 $PY -m benchmarks.layer_sweep --kind image --device "$DEVICE" --image-packs "$IMAGE_PACKS" \
  --steps "$STEPS" "${SIZE[@]}" --precision bf16 --results-dir "$OUT" || echo "bf16 image sweep: exit $?"
# 3. --batch-targets auto on the device (the CUDA peak measurement) and an out-of-memory-free run, on tiny:lm
timeout 60 $PY -m dreamy prompt --model tiny:lm --device "$DEVICE" --target 'model.layers.1.mlp.down_proj:0-15' \
  --tokens 4 --iters 2 --population 2 --children 8 --batch-targets auto --no-describe --overwrite \
  --out "$OUT/auto_run" 2>&1 | tee "$OUT/auto_run.txt" || echo "auto run: exit $?"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("layer_sweep_timing.json", "layer_sweep.json", "layer_sweep_bf16.json"):
    path = out / name
    if not path.exists():
        print(name, "missing"); continue
    figures = json.loads(path.read_text())["figures"]
    print("==", name)
    for kind, part in figures.items():
        for row in part["rows"]:
            print(kind, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        if kind == "image":
            best = [r for r in part["rows"] if "s_per_target_step" in r][-1]
            print(f"image: 1,000 classes x 256 steps projected from pack {best['pack']}: "
                  f"{1000 * 256 * best['s_per_target_step'] / 60:.2f} minutes")
        if kind == "prompt":
            for r in part["rows"]:
                if "s_per_neuron_iteration" in r:
                    print(f"prompt: pack {r['pack']}: 1,536 neurons x 300 iterations = "
                          f"{1536 * 300 * r['s_per_neuron_iteration'] / 3600:.2f} GPU-hours")
records = out / "auto_run" / "results.json"
if records.exists():
    packs = sorted({r.get("pack") for r in json.loads(records.read_text())["records"]})
    print("auto run packs:", packs)
EOF
