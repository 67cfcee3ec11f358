# Sourced by ab.sh and placements.sh: builds the hot-path bench of a revision in a git
# worktree, into this checkout's target directory so that dependencies are built once.
#
# Sets `work` (a temporary directory, removed at exit with the worktrees in it) and defines
# `hot_path_binary` (builds the bench where it is run, prints the binary's path) and
# `build_revision <rev> [benches-dir]` (builds <rev>, with `benches-dir` in place of its own
# benches when given, and keeps the binary as `$work/hot_path-<rev>`).

work=$(mktemp -d)
target=${CARGO_TARGET_DIR:-$PWD/target}
worktrees=()

cleanup_revisions() {
  for tree in "${worktrees[@]}"; do
    git worktree remove --force "$tree" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
  # The worktrees built into this checkout's target directory, and cargo judges the crate
  # fresh by its files' times, so this checkout's next build would reuse the last
  # revision's library and bench. Newer sources make it rebuild its own.
  if [ ${#worktrees[@]} -gt 0 ]; then
    find Cargo.toml src benches tests examples -type f -exec touch {} + 2>/dev/null || true
  fi
}
trap cleanup_revisions EXIT

hot_path_binary() {
  cargo bench --bench hot_path --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*hot_path-[0-9a-f]*\)).*/\1/p'
}

build_revision() {
  local rev=$1 benches=${2:-} binary
  git worktree add --detach "$work/$rev" "$rev" >/dev/null 2>&1
  worktrees+=("$work/$rev")
  if [ -n "$benches" ]; then
    rm -rf "$work/$rev/benches"
    cp -r "$benches" "$work/$rev/benches"
  fi
  binary=$(cd "$work/$rev" && CARGO_TARGET_DIR=$target hot_path_binary)
  if [ -z "$binary" ]; then
    echo "no hot_path bench built at $rev" >&2
    exit 1
  fi
  # The next build may write the same path: keep this revision's binary apart.
  cp "$binary" "$work/hot_path-$rev"
}
