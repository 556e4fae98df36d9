#!/usr/bin/env bash
# Benchmark of image pulls (issue 3): a cold pull + unpack of the Debian minbase image from the
# local registry, side by side with `skopeo copy docker://… oci:DIR && umoci unpack` in the same
# run, and a warm `msb pull --pull missing` (the store answers, no network).
#
# Needs: a release build, the test registry with the Debian fixture (tests/fixtures/debian.sh),
# skopeo, umoci, hyperfine. Prints a Markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
msb=${MSB:-$PWD/target/release/msb}
image=${IMAGE:-127.0.0.1:5000/msb-test/debian:bookworm}
runs=${RUNS:-5}
work=$(mktemp -d /var/tmp/msb-bench-pull.XXXXXX)
trap 'rm -rf "$work"' EXIT
. bench/lib.sh

bash tests/fixtures/registry.sh start >/dev/null
# Both sides write to the same disk (/var/tmp), and each run starts from an empty folder.
hyperfine --style basic --runs "$runs" --warmup 1 \
  --prepare "rm -rf '$work/msb' '$work/oci' '$work/bundle'" \
  --export-json "$work/cold.json" \
  -n msb "$(rss_prefix pull-cold) env MSB_HOME='$work/msb' '$msb' pull '$image'" \
  -n "skopeo+umoci" "skopeo copy -q --src-tls-verify=false 'docker://$image' 'oci:$work/oci:x' && umoci unpack --image '$work/oci:x' '$work/bundle' >/dev/null" >&2
MSB_HOME="$work/msb" "$msb" pull "$image" >/dev/null
hyperfine --style basic -N --runs 50 --warmup 5 --export-json "$work/warm.json" \
  "env MSB_HOME=$work/msb $msb pull --pull missing $image" >&2
peak_rss pull-warm env MSB_HOME="$work/msb" "$msb" pull --pull missing "$image"
keep_results pull

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
cold = {r["command"]: r["times"] for r in json.load(open(f"{work}/cold.json"))["results"]}
warm = json.load(open(f"{work}/warm.json"))["results"][0]["times"]
med = lambda t: statistics.median(t)
m, s = med(cold["msb"]), med(cold["skopeo+umoci"])
print("| figure | msb | alternative | goal | met |")
print("|---|---|---|---|---|")
print(f"| cold pull + unpack, Debian minbase (median; min … max) | {m:.2f} s ({min(cold['msb']):.2f} … {max(cold['msb']):.2f}) | skopeo copy + umoci unpack: {s:.2f} s ({min(cold['skopeo+umoci']):.2f} … {max(cold['skopeo+umoci']):.2f}) | ratio ≤ 1.0 ({m/s:.2f}) | {'yes' if m <= s else 'no'} |")
print(f"| warm `msb pull --pull missing` (median; min … max) | {med(warm)*1000:.1f} ms ({min(warm)*1000:.1f} … {max(warm)*1000:.1f}) | | < 50 ms | {'yes' if med(warm) < 0.05 else 'no'} |")
PY
