#!/usr/bin/env bash
# Issue 15's one-commit run, every stage with the code of one commit (967e0bb), each stage
# continuing where an earlier call stopped (finished jobs are files; run it again after an
# interruption):
#
#   git worktree add --detach ../wt-full 967e0bb
#   benchmarks/full_pipeline.sh ../wt-full
#
# 1. full/: 15 problems x 39 methods x 3 seeds, single-task and cost jobs;
# 2. full/ablations/: the shipped policy without retrieval and without gates, 3 seeds;
# 3. full5/: the headline rows at 5 seeds (the stored seeds 0-2 copied from full/, seeds 3-4 run);
# 4. full-toy2d/: toy2d with every method.
set -euo pipefail
shopt -s nullglob
here=$(cd "$(dirname "$0")/.." && pwd)
tree=$(cd "${1:?usage: $0 WORKTREE-OF-967e0bb}" && pwd)
export PYTHONPATH=$tree OMP_NUM_THREADS=1
lossrag=${LOSSRAG:-lossrag}
python=${PYTHON:-python}
full=$here/benchmarks/full
config() { "$python" -c "import json, sys; c = json.load(open(sys.argv[1])); print(','.join($1))" "$full/config.json"; }
problems=$(config "c['problems']")
headline=ew,famo,geometricmean,nashmtl,dbmtl,go4align,lossrag-default
cd "$tree"

"$lossrag" bench resume --out "$full" --jobs 2

"$python" "$here/benchmarks/ablations.py" --out "$full/ablations" --stl "$full/runs" \
  --variants no-retrieval,no-gates --problems "$problems"

five=$here/benchmarks/full5
if [[ -f $five/config.json ]]; then
  "$lossrag" bench resume --out "$five" --jobs 2
else
  mkdir -p "$five/runs"
  for m in ${headline//,/ }; do cp "$full"/runs/{train,cost}__*__"$m"__s*.json "$five/runs/"; done
  cp "$full"/runs/stl__*.json "$five/runs/"
  "$lossrag" bench run --problems "$problems" --methods "$headline" --seeds 5 --out "$five" --jobs 2
fi

toy=$here/benchmarks/full-toy2d
if [[ -f $toy/config.json ]]; then
  "$lossrag" bench resume --out "$toy" --jobs 2
else
  methods=$(config "m for m in c['methods'] if '@' not in m")
  "$lossrag" bench run --problems toy2d --methods "$methods" --out "$toy" --jobs 2
fi
