# Sourced by the bench scripts: where their raw results go, and peak RSS.
#
# With BENCH_OUT set (bench/run.sh sets it), each script leaves its hyperfine JSON there as
# `<script>-<name>.json`, and peak RSS figures as `rss-<name>.txt` (one KiB figure a line), for
# run.sh to assemble into BENCHMARKS.md. Without it, everything goes to the script's temp folder.

# Prints the command prefix that appends the peak RSS (KiB) of what follows to rss-NAME.txt.
rss_prefix() {
  echo "/usr/bin/time -f %M -a -o ${BENCH_OUT:-$work}/rss-$1.txt"
}

# Runs a command once under /usr/bin/time, keeping its peak RSS as rss-NAME.txt; its output is
# discarded. For commands too short to wrap inside a hyperfine run.
peak_rss() {
  local name=$1
  shift
  /usr/bin/time -f %M -a -o "${BENCH_OUT:-$work}/rss-$name.txt" "$@" >/dev/null 2>&1
}

# Copies the script's hyperfine JSON files to BENCH_OUT, prefixed with the script's name.
keep_results() {
  local prefix=$1 file
  [[ -n ${BENCH_OUT:-} ]] || return 0
  for file in "$work"/*.json; do
    cp "$file" "$BENCH_OUT/$prefix-$(basename "$file")"
  done
}
