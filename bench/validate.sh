#!/usr/bin/env bash
# Benchmark of `msb validate` (issue 2): the whole process on Sandboxfile.example, and beside it
# taplo, the editor-side validator, on the same file when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
msb=${MSB:-$PWD/target/release/msb}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
. bench/lib.sh
commands=(-n "msb validate" "$msb validate -f Sandboxfile.example")
# A pyenv shim is a shell script that costs ~70 ms per call: time the binary it runs.
taplo=$(pyenv which taplo 2>/dev/null || command -v taplo || true)
if [[ -n $taplo ]]; then
  cp Sandboxfile.example "$work/Sandboxfile.toml"
  sed -i "1s|.*|#:schema $PWD/schema/sandboxfile.schema.json|" "$work/Sandboxfile.toml"
  commands+=(-n "taplo check" "$taplo check $work/Sandboxfile.toml")
fi
hyperfine --style basic -N --runs 100 --warmup 10 --export-json "$work/validate.json" "${commands[@]}" >&2
peak_rss validate "$msb" validate -f Sandboxfile.example
keep_results validate
python3 - "$work" <<'PY'
import json, statistics, sys
results = json.load(open(f"{sys.argv[1]}/validate.json"))["results"]
msb = next(r for r in results if r["command"] == "msb validate")["times"]
other = [r for r in results if r["command"] != "msb validate"]
alt = f"taplo check: {statistics.median(other[0]['times'])*1000:.1f} ms" if other else "taplo not installed"
m = statistics.median(msb)
print("| figure | msb | alternative | goal | met |")
print("|---|---|---|---|---|")
print(f"| `msb validate` of Sandboxfile.example, whole process (median; min … max) | {m*1000:.1f} ms ({min(msb)*1000:.1f} … {max(msb)*1000:.1f}) | {alt} | < 20 ms | {'yes' if m < 0.020 else 'no'} |")
PY
