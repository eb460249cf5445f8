#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the modules in pyproject.toml's [tool.mutmut]; opt-in, not part of .ci/run.
#
#   benchmarks/mutation.sh                       # every module, then the report
#   benchmarks/mutation.sh export.compare        # one or more modules (dotted), then the report
#   MUTMUT_CHILDREN=1 benchmarks/mutation.sh     # fewer parallel workers (default 2) on a busy machine
#
# mutmut works in a mutants/ copy (git-ignored) and caches results there: a rerun tests only mutants whose
# function changed. `rm -rf mutants` starts afresh. For each mutant it runs the selected tests ([tool.mutmut]:
# the fast tests covering these modules) that call the mutated function, within that module's own test files
# (MUTATION_SCOPE in tests/conftest.py); the tiny models are built once and kept in mutants/.tiny_cache.
# Survivors judged equivalent are listed with their reason in benchmarks/mutation_equivalent.txt; the report
# (stdout and benchmarks/results/mutations/latest.md) counts them apart.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "mutmut>=3.8,<4"
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 SVLM_TEST_TINY_CACHE="$PWD/mutants/.tiny_cache"
# svlm_runtime: through the root symlink to runtime/svlm_runtime (see [tool.mutmut] in pyproject.toml)
ALL=(export.compare svlm_runtime.package svlm_runtime.preprocess factory.rewards factory.prompts
     factory.train.stages factory.train.rollout)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ALL[@]}")
for m in "${modules[@]}"; do
  echo "== $m ($(date +%H:%M:%S))"
  start=$(date +%s)
  python3 -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$m.*" | tail -n 3
  echo "   $m: $(( $(date +%s) - start )) s"
done
mkdir -p benchmarks/results/mutations
python3 -m benchmarks.mutation_report | tee benchmarks/results/mutations/latest.md
