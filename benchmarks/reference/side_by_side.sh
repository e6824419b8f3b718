#!/usr/bin/env bash
# Reference and project train steps in turn, each in its own process (a torch process started from
# the JAX process ran 6-8x slower), with the 1-min load average after each:
#   benchmarks/reference/side_by_side.sh ncsnv2|rin BATCH ITERS ROUNDS [fwd]
#   benchmarks/reference/side_by_side.sh inception BATCH ITERS ROUNDS   (FID features of 32x32 RGB)
# REF_PYTHON: a Python with torch (and rin-pytorch, torchvision); NCSNV2_REPO: a checkout of
# ermongroup/ncsnv2.
# The reference runs with the system allocator, as its users run it; the project under jemalloc
# (as main.py runs it where installed) and under glibc.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=$1 batch=$2 iters=$3 rounds=$4 fwd=${5:-}
ref_python=${REF_PYTHON:-python} python=${PYTHON:-python}
project=(-m benchmarks.reference.project_step "$model" "$batch" "$iters" $fwd)
if [ "$model" = rin ]; then
  ref=(benchmarks/reference/rin_step.py "$batch" "$iters" $fwd)
elif [ "$model" = inception ]; then
  ref=(benchmarks/reference/inception_features.py 32 "$batch" "$iters")
  project=(-m benchmarks.fid_features --image_size 32 --channels 3 --batch_size "$batch"
           --num_images $((batch * iters)))
else
  ref=(benchmarks/reference/ncsnv2_step.py "${NCSNV2_REPO:?set NCSNV2_REPO}" "$batch" "$iters" $fwd)
fi
jemalloc="LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=$("$python" -c 'from ncsn_rin import allocator; print(allocator.JEMALLOC_CONF)')"
load() { cut -d' ' -f1 /proc/loadavg; }
for _ in $(seq "$rounds"); do
  echo "$(env -u LD_PRELOAD "$ref_python" "${ref[@]}" 2>&1 | tail -1) [load $(load)]"
  echo "$(env $jemalloc "$python" "${project[@]}" 2>&1 | tail -1) [load $(load)]"
  echo "$(env -u LD_PRELOAD "$python" "${project[@]}" 2>&1 | tail -1) [load $(load)]"
done
