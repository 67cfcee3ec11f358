#!/usr/bin/env bash
# Times two revisions of the hot-path bench against each other on this machine, alternating
# their runs so that a slow stretch of the machine falls on both (BENCHMARKS.md, "How to
# reproduce").
#
#   bash benches/ab.sh <rev-a> <rev-b> [group] [runs]
#
# Builds `benches/hot_path.rs` at each revision (from a git worktree, with this checkout's
# target directory so dependencies are built once), then runs the two binaries in turn,
# `runs` times each (default 4), on the criterion filter `group` (default `hot_get`).
# `STATIC_HEADER=from_static` in the environment is passed on. Each line gives, per group, the
# static header's and the layer's overhead in the interleaved pass and the round-by-round
# median of their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
  sed -n '4,12p' "$0" >&2
  exit 2
fi
a=$1
b=$2
group=${3:-hot_get}
runs=${4:-4}
# shellcheck source=benches/revisions.sh
. benches/revisions.sh
for rev in "$a" "$b"; do
  build_revision "$rev"
done

echo "STATIC_HEADER=${STATIC_HEADER:-} group=$group runs=$runs"
for _ in $(seq "$runs"); do
  for rev in "$a" "$b"; do
    "$work/hot_path-$rev" --bench "$group" 2>&1 | awk -v rev="$rev" '
      /\(criterion\): bare/ || /^(contention|cold_start|replay)/ { group = "" }
      /\(interleaved\): bare/ { group = $1 }
      group != "" && $1 == "set_header_static" { static[group] = $(NF - 1) }
      group != "" && $1 == "lengow_auth" && $4 == "overhead" { layer[group] = $(NF - 1) }
      /interleaved, round by round.*set_header_static/ {
        for (i = 1; i <= NF; i++) if ($i == "median") { r = $(i + 1); sub(",", "", r); ratio[$1] = r }
      }
      END {
        line = rev
        for (g in layer) {
          line = line sprintf("  %s: static %s ns, lengow_auth %s ns, median ratio %s",
            g, static[g], layer[g], ratio[g])
        }
        print line
      }'
  done
done
