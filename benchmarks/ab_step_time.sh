#!/usr/bin/env bash
# Step time of two commits, interleaved: ABBA blocks of benchmarks/grpo_step.py (--no-trl) and
# benchmarks/step_phases.py (--algorithm unified), each commit run from its own `git worktree` with its own
# benchmark scripts, one thread. Prints each block's new/base ratio; the last line is JSON.
#
#   bash benchmarks/ab_step_time.sh BASE NEW [BLOCKS] [extra benchmark args, e.g. --steps 5]
#   bash benchmarks/ab_step_time.sh 858b1d0 b868128 3        # docs/performance.md, issue 19
set -euo pipefail
base=${1:?usage: ab_step_time.sh BASE NEW [BLOCKS] [benchmark args]}
new=${2:?usage: ab_step_time.sh BASE NEW [BLOCKS] [benchmark args]}
blocks=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
repo=$(git rev-parse --show-toplevel)
py=${PYTHON:-$(command -v python)}
work=$(mktemp -d /tmp/uniapl-ab-XXXXXX)
trap 'git -C "$repo" worktree remove --force "$work/base" >/dev/null 2>&1 || true;
      git -C "$repo" worktree remove --force "$work/new" >/dev/null 2>&1 || true' EXIT
git -C "$repo" worktree add -q --detach "$work/base" "$base"
git -C "$repo" worktree add -q --detach "$work/new" "$new"
run() {  # side script args...
  local dir=$work/$1
  (cd "$dir" && PYTHONPATH="$dir/src" OMP_NUM_THREADS=1 "$py" "benchmarks/$2" "${@:3}") 2>/dev/null | tail -1 \
    | sed "s/^/$1 $2 /" >> "$work/results.txt"
}
for ((b = 1; b <= blocks; b++)); do
  for side in base new new base; do run "$side" grpo_step.py --no-trl "$@"; done
  for side in new base base new; do run "$side" step_phases.py --algorithm unified "$@"; done
done
"$py" - "$work/results.txt" <<'EOF'
import json, statistics as st, sys
rows = [line.split(" ", 2) for line in open(sys.argv[1]) if line.strip()]
rows = [(side, script, json.loads(js)) for side, script, js in rows]
figures = {"grpo step (grpo_step.py)": ("grpo_step.py", lambda j: j["uniapl_grpo_step_s"]),
           "unified step (grpo_step.py)": ("grpo_step.py", lambda j: j["uniapl_unified_step_s"]),
           "unified step (step_phases.py)": ("step_phases.py", lambda j: j["phases"]["step"]["mean_s"])}
out = {}
for name, (script, get) in figures.items():
    runs = [(side, get(j)) for side, s, j in rows if s == script]
    blocks = [runs[i:i + 4] for i in range(0, len(runs), 4)]
    ratios = [st.mean(v for s, v in b if s == "new") / st.mean(v for s, v in b if s == "base") for b in blocks]
    base = [v for s, v in runs if s == "base"]
    new = [v for s, v in runs if s == "new"]
    out[name] = {"base_mean_s": round(st.mean(base), 4), "new_mean_s": round(st.mean(new), 4),
                 "new_over_base_per_block": [round(r, 3) for r in ratios]}
    print(f"{name:32s} base {st.mean(base):.3f} s  new {st.mean(new):.3f} s  new/base per block "
          + ", ".join(f"{r:.3f}" for r in ratios))
print(json.dumps({"benchmark": "ab_step_time", **out}))
EOF
