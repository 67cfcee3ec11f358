#!/usr/bin/env bash
# Times one hot group at the four places the bench thread's stack can take in a 64-byte cache
# line, for this checkout or for several revisions in turn (BENCHMARKS.md, "How to
# reproduce").
#
#   bash benches/placements.sh [group] [rounds] [rev ...]
#
# `group` is hot_get, hot_post (default) or hot_post_drained; `rounds` (default 3) is how many
# times each placement is run. With no revision, this checkout's bench is run. A revision is
# built from a git worktree holding its `src/` and this checkout's `benches/`, so that every
# revision is timed by the same bench; its runs alternate with the others'.
# `STATIC_HEADER=from_static` in the environment is passed on.
#
# Each run is one process (`HOT_PATH_QUICK=<group> HOT_PATH_SHIFT=<0|16|32|48>`, see
# `quick_from_env` in hot_path.rs) under `setarch -R`, so that the shift is the only change of
# layout between runs. With `PLACEMENTS=random`, each run is left to the kernel's address
# layout randomisation instead, unshifted, `4 x rounds` runs a revision: what a user's runs
# see. A line per run gives the static header's and the layer's overhead
# (ns) and the round-by-round median of their ratio; the summary gives, per revision, the
# mean and the highest of each.
set -euo pipefail
cd "$(dirname "$0")/.."

group=${1:-hot_post}
rounds=${2:-3}
shift $(($# < 2 ? $# : 2))
revs=("$@")
# shellcheck source=benches/revisions.sh
. benches/revisions.sh

names=()
if [ ${#revs[@]} -eq 0 ]; then
  binary=$(hot_path_binary)
  cp "$binary" "$work/hot_path-checkout"
  names=(checkout)
else
  for rev in "${revs[@]}"; do
    build_revision "$rev" benches
    names+=("$rev")
  done
fi

run=(env)
placements=(0 16 32 48)
if [ "${PLACEMENTS:-}" = random ]; then
  placements=(0 0 0 0)
elif command -v setarch >/dev/null; then
  run=(setarch "$(uname -m)" -R)
else
  echo "setarch not found: address layout randomisation stays on" >&2
fi

echo "STATIC_HEADER=${STATIC_HEADER:-} PLACEMENTS=${PLACEMENTS:-} group=$group rounds=$rounds"
echo "revision shift static_ns lengow_auth_ns ratio"
for _ in $(seq "$rounds"); do
  for placement in "${placements[@]}"; do
    for name in "${names[@]}"; do
      HOT_PATH_QUICK=$group HOT_PATH_SHIFT=$placement "${run[@]}" "$work/hot_path-$name" 2>&1 |
        awk -v name="$name" -v placement="$placement" '
          /\(interleaved\): bare/ { on = 1 }
          on && $1 == "set_header_static" { s = $(NF - 1) }
          on && $1 == "lengow_auth" && $4 == "overhead" { l = $(NF - 1) }
          /interleaved, round by round.*set_header_static/ {
            for (i = 1; i <= NF; i++) if ($i == "median") { r = $(i + 1); sub(",", "", r) }
          }
          END { print name, placement, s, l, r }'
    done
  done
done | tee "$work/runs"

echo "summary (mean and highest over every run):"
awk '{
    n[$1]++; s[$1] += $3; l[$1] += $4; r[$1] += $5
    if ($4 > ml[$1]) ml[$1] = $4
    if ($5 > mr[$1]) mr[$1] = $5
    if ($5 > 3) over[$1]++
  }
  END {
    for (k in n) printf "%s: static %.1f ns, lengow_auth %.1f ns (highest %.1f), ratio %.2f (highest %.2f, over 3 in %d of %d runs)\n",
      k, s[k] / n[k], l[k] / n[k], ml[k], r[k] / n[k], mr[k], over[k], n[k]
  }' "$work/runs"
