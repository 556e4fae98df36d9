#!/usr/bin/env bash
# Benchmark of the patch layer cache (issue 4): a Sandboxfile of 20 patches on the Debian minbase
# image. Measures, with hyperfine, a cold build of the 20 steps (image already pulled), the
# rebuild after editing patch 15 (steps 15..20), and a fully cached `msb plan` as a whole process.
#
# Needs: a release build (cargo build --release), the test registry and the Debian fixture
# (tests/fixtures/debian.sh), hyperfine. Prints a Markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
msb=${MSB:-$PWD/target/release/msb}
image=${IMAGE:-127.0.0.1:5000/msb-test/debian:bookworm}
work=$(mktemp -d /tmp/msb-bench-patches.XXXXXX)
trap 'rm -rf "$work"' EXIT
export MSB_HOME=$work/home
. bench/lib.sh

bash tests/fixtures/registry.sh start >/dev/null
mkdir -p "$work/project/site/css"
cd "$work/project"
head -c 200000 /dev/urandom | base64 > big.txt
echo 'cert' > cert.pem
for i in $(seq 1 30); do echo "<p>page $i</p>" > "site/page$i.html"; done
echo 'body {}' > site/css/main.css
{
  echo "[sandbox.bench]"
  echo "image = \"$image\""
  for i in $(seq 1 20); do
    echo "[[sandbox.bench.patch]]"
    case $((i % 5)) in
      0) printf 'op = "text"\npath = "/etc/bench/%s.conf"\ncontent = "setting = %s rev 0"\n' "$i" "$i" ;;
      1) printf 'op = "mkdir"\npath = "/etc/bench/d%s"\n' "$i" ;;
      2) printf 'op = "copy_file"\nsrc = "big.txt"\ndst = "/opt/big%s.txt"\n' "$i" ;;
      3) printf 'op = "append"\npath = "/etc/profile"\ncontent = "# bench %s %s\\n"\n' "$i" "$i" ;;
      4) printf 'op = "copy_dir"\nsrc = "site"\ndst = "/srv/www%s"\n' "$i" ;;
    esac
  done
} > Sandboxfile
# Patch 15 is a text op (15 % 5 == 0): its content is what the edit toggles.
"$msb" pull --pull missing "$image" >/dev/null 2>&1 || "$msb" pull "$image" >/dev/null

# Cold: from an empty store (pull, unpack, 20 steps), as a user's first `msb build` is.
hyperfine --style basic --runs 3 \
  --prepare "rm -rf '$MSB_HOME'" \
  --export-json "$work/empty.json" "$(rss_prefix build-empty) '$msb' build" >&2
# Cold patches only: the image is in the store, every patch layer is gone.
hyperfine --style basic --runs 5 --warmup 1 \
  --prepare "'$msb' cache prune >/dev/null" \
  --export-json "$work/cold.json" "'$msb' build" >&2
"$msb" build >/dev/null 2>&1
# Each run edits patch 15 first, so each run rebuilds steps 15..20.
cat > "$work/edit15" <<'SH'
#!/bin/sh
sed -i -E "s/setting = 15 rev [0-9]+/setting = 15 rev $(date +%N)/" Sandboxfile
SH
chmod +x "$work/edit15"
hyperfine --style basic --runs 10 --warmup 1 \
  --prepare "$work/edit15" \
  --export-json "$work/edit.json" "$(rss_prefix build-edit) '$msb' build" >&2
"$msb" build >/dev/null 2>&1
hyperfine --style basic -N --runs 50 --warmup 5 --export-json "$work/plan.json" "'$msb' plan" >&2
peak_rss plan "$msb" plan
keep_results patches

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
def stats(name):
    times = json.load(open(f"{work}/{name}.json"))["results"][0]["times"]
    return statistics.median(times), min(times), max(times)
empty, cold, edit, plan = stats("empty"), stats("cold"), stats("edit"), stats("plan")
ratio = edit[0] / empty[0]
patch_ratio = edit[0] / cold[0]
print("| figure | median | min … max | goal | met |")
print("|---|---|---|---|---|")
print(f"| cold build from an empty store (pull + unpack + 20 patches) | {empty[0]*1000:.0f} ms | {empty[1]*1000:.0f} … {empty[2]*1000:.0f} ms | | |")
print(f"| cold build of the 20 patch layers (image in the store) | {cold[0]*1000:.0f} ms | {cold[1]*1000:.0f} … {cold[2]*1000:.0f} ms | | |")
print(f"| rebuild after editing patch 15 (steps 15..20) | {edit[0]*1000:.0f} ms | {edit[1]*1000:.0f} … {edit[2]*1000:.0f} ms | < 10% of cold ({ratio*100:.1f}% of the cold build; {patch_ratio*100:.0f}% of the patch-only build: 6 of 20 steps) | {'yes' if ratio < 0.10 else 'no'} |")
print(f"| fully cached `msb plan` | {plan[0]*1000:.1f} ms | {plan[1]*1000:.1f} … {plan[2]*1000:.1f} ms | < 30 ms | {'yes' if plan[0] < 0.030 else 'no'} |")
PY
