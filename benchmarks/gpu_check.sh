#!/usr/bin/env bash
# The GPU figures of the README in one call on a lent GPU node, sized to fit one call of the device tool.
#
# Here, once: bash ../shared/device/pack.sh   (Ray, fast-slic's source and setup.sh into .devbundle/)
# There, from the project root, carrying .devbundle:
#   bash benchmarks/gpu_check.sh                     # train and infer: at most 6.5 minutes with set-up
#   PARTS=quality MINUTES=5 bash benchmarks/gpu_check.sh   # at most MINUTES + 3.5 minutes with set-up
# (one call of the device tool runs at most 10 minutes, and a session has 15 device minutes, starts included:
# the three parts together do not fit one call.)
# PARTS: comma list of train (train_throughput.py: spix train against its step alone), infer (infer.py:
# spix infer against the forward pass, with the model actors' start-up apart) and quality (quality.py --gpu:
# issue 13's GPU goal, paper, 16 classes, MINUTES of training). Every script prints as it measures, so a
# call cut short keeps what it had; each part has its own time limit, and its output also goes to $OUT.
# GPU=0 runs the same on CPUs with small sizes: a dry run of this script, not a measurement
# (PYTHON=.venv/bin/python there).
set -uo pipefail
root=$(pwd)
out=${OUT:-$root/gpu_check_out}
parts=${PARTS:-train,infer}
minutes=${MINUTES:-3}
gpu=${GPU:-1}
mkdir -p "$out"
py=${PYTHON:-python3}
if [ "$gpu" = 1 ] && [ -f .devbundle/setup.sh ]; then
  bash .devbundle/setup.sh || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
cd /tmp  # outside the project root, where the source folder spix/ would shadow the installed package
if [ "$gpu" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  train=(--gpu --images 320 --epochs 2) infer=(--images 96 --rounds 1 --batch-size 8)
  quality=(--gpu --classes 16 --train-images 800 --val-images 64 --train-flag=--workers=1 --train-flag=--epochs=1000)
else
  train=(--images 24 --epochs 1 --batch-size 4 --preset tiny --crop 96) infer=(--images 4 --rounds 1 --preset tiny)
  quality=(--classes 16 --train-images 24 --val-images 4 --train-flag=--workers=1 --train-flag=--epochs=1000)
fi
part() {  # name, seconds, command...
  case ",$parts," in *",$1,"*) ;; *) return 0 ;; esac
  echo "== $1 (at most $2 s) $(date -u +%T)"
  timeout "$2" "${@:3}" 2>&1 | tee "$out/$1.txt"
  echo "== $1 ended: rc ${PIPESTATUS[0]} $(date -u +%T)"
}
part train 240 "$py" "$root/benchmarks/train_throughput.py" "${train[@]}"
part infer 150 "$py" "$root/benchmarks/infer.py" "${infer[@]}"
part quality $((150 + 60 * ${minutes%.*})) "$py" "$root/benchmarks/quality.py" "${quality[@]}" --seeds 201 \
  --minutes "$minutes" --work /tmp/spix_quality --json "$out/quality.json"
