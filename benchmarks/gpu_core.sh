#!/usr/bin/env bash
# GPU check of the core kernels (regulariser and co-clustering), one short run, well under 4 minutes.
#
#   bash benchmarks/gpu_core.sh            # from the repository root, on a machine with CUDA
#
# Prints: the device, the measured same-device copy bandwidth (1 GiB copy) next to the time of one read of the
# target weights, the regulariser in reads of the weights on GPT-2-small shapes and on 2048x8192 MLP matrices
# (GPT-2 small's 24 matrices read in ~0.1 ms on a large GPU, so launch overheads dominate there), whether the fused
# Triton kernels were built, and the co-clustering table (ours on the GPU, scikit-learn on 4 CPU threads, wall
# time) with the faint planted case. Each step has its own time limit so one slow step cannot eat the budget.
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import torch
print("torch", torch.__version__, "| cuda", torch.cuda.is_available(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "")
from torch.utils._triton import has_triton
print("triton available:", has_triton())
PY
echo "== regulariser, GPT-2 small MLP shapes (768x3072, 24 matrices)"
timeout 70 python benchmarks/regulariser_speed.py --device cuda --skip-trainer --rounds 10 2>&1 | grep -v Warning
echo "== regulariser, 2048x8192 MLP matrices (24 matrices, 1.6 GB fp32)"
timeout 80 python benchmarks/regulariser_speed.py --device cuda --skip-trainer --rounds 10 --n-embd 2048 2>&1 | grep -v Warning
echo "== co-clustering, ours on cuda vs scikit-learn on 4 CPU threads"
timeout 80 python benchmarks/cocluster_vs_sklearn.py --device cuda --threads 4 --rounds 3 --no-gemma 2>&1 | grep -v Warning
