#!/usr/bin/env bash
# The GPU checks the open issues ask for, as one prepared run for a lent H100/H200 (about 12 of its
# 15 minutes).  From the repository root on this machine, once:
#   mkdir -p .devdata && cp ../shared/data/{baron_mouse1,10X_PBMC_select_2100_top2000,mouse_bladder_cell_select_2100}.h5 .devdata/
#   echo /.devdata/ >> .git/info/exclude
# then two device runs (one call may last 10 minutes) with carry [".devdata"]:
#   bash benchmarks/gpu_checks.sh speed baron_mouse1        # about 8 minutes
#   bash benchmarks/gpu_checks.sh 10X_PBMC_select_2100_top2000   # about 6 minutes
# Results come back in $OUT (at most 8 files): speed_gpu.{json,md}, ensemble_speed_gpu.{json,md}
# and, per dataset, the published GsRCL protocol's results.json and summary.txt in one tar.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
D=.devdata
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
for step in "$@"; do
  if [ "$step" = speed ]; then
    # GsRCL step in f32 and bf16, and the scDeepCluster epochs, against the float32 PyTorch baseline
    timeout 150 python benchmarks/speed.py --device cuda --rounds 5 --gsrcl-rounds 5 \
      --scdc-file $D/mouse_bladder_cell_select_2100.h5 --gsrcl-file $D/baron_mouse1.h5 --out "$OUT" 2>&1 | tail -12
    # a seed ensemble's epoch against one model's (issue: at most 1.5x one model's time for 4 members)
    timeout 120 python benchmarks/ensemble_speed.py --data-file $D/mouse_bladder_cell_select_2100.h5 \
      --members 1 4 8 --tag _gpu --out "$OUT" 2>&1 | tail -6
  else
    # the published GsRCL protocol (4096-wide encoder, 3000 full-batch epochs, selection at 0 and every 50,
    # all types, 5 folds, shared encoders, SVM grids on all cores but one), bf16 matmuls
    timeout 420 python -m scdc_jax.gsrcl --config configs/gsrcl_paper.toml --precision bf16 \
      --data-file $D/$step.h5 --out-dir /tmp/paper_$step --resume --quiet > "$OUT/paper_$step.log" 2>&1
    cat /tmp/paper_$step/summary.txt
    tar -C /tmp -cf "$OUT/paper_$step.tar" --exclude folds paper_$step
  fi
done
ls -la "$OUT"
