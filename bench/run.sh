#!/usr/bin/env bash
# Regenerates BENCHMARKS.md: sets up the local registry and the fixture images (Debian included),
# builds msb in release mode, runs every benchmark script of this folder with BENCH_OUT set (each
# leaves its hyperfine JSON and peak RSS figures there), and writes the table: median and spread
# of each figure beside the alternative measured in the same run, with its goal and whether it
# is met.
#
#   bash bench/run.sh            # as root on Debian 12; ~10 minutes on 2 cores
#
# Needs what .ci/setup installs (docker-registry, skopeo, umoci, hyperfine, taplo, crun), debootstrap
# for the Debian fixture, python3, and /usr/bin/time (Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
export BENCH_OUT
BENCH_OUT=$(mktemp -d /tmp/msb-bench.XXXXXX)
trap 'rm -rf "$BENCH_OUT"' EXIT

step() { echo "== $* ($(($(date +%s) - started)) s)" >&2; }

step "fixtures: registry and images"
bash tests/fixtures/registry.sh start >&2
bash tests/fixtures/images.sh --debian >&2

step "release build"
build_started=$(date +%s)
cargo build --release --locked >&2
build_seconds=$(($(date +%s) - build_started))
export MSB=${CARGO_TARGET_DIR:-$PWD/target}/release/msb

step "validate"
bash bench/validate.sh >/dev/null
step "pull"
bash bench/pull.sh >/dev/null
step "patches"
bash bench/patches.sh >/dev/null
step "up"
bash bench/up.sh >/dev/null
step "watch"
python3 bench/watch.py >"$BENCH_OUT/watch.json"

step "writing BENCHMARKS.md"
elapsed=$(($(date +%s) - started))
python3 - "$BENCH_OUT" "$elapsed" "$build_seconds" "$(git rev-parse --short HEAD)" >BENCHMARKS.md <<'PY'
import json, os, platform, re, statistics, subprocess, sys, time

out, elapsed, build, commit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def times(name, command=None):
    """The run times (s) of one command of a hyperfine export (the first when unnamed)."""
    results = json.load(open(f"{out}/{name}.json"))["results"]
    if command is None:
        return results[0]["times"]
    return next(r["times"] for r in results if r["command"] == command)

def maybe_times(name, command):
    try:
        return times(name, command)
    except (StopIteration, FileNotFoundError):
        return None

def rss(name):
    try:
        figures = [int(line) for line in open(f"{out}/rss-{name}.txt") if line.strip().isdigit()]
    except FileNotFoundError:
        return "–"
    return f"{max(figures) / 1024:.1f} MiB" if figures else "–"

def ms(t):
    return f"{statistics.median(t) * 1000:.1f} ms ({min(t) * 1000:.1f} … {max(t) * 1000:.1f})"

def s(t):
    return f"{statistics.median(t):.2f} s ({min(t):.2f} … {max(t):.2f})"

def met(ok):
    return "**yes**" if ok else "**no**"

med = statistics.median
rows = []

validate = times("validate-validate", "msb validate")
taplo = maybe_times("validate-validate", "taplo check")
rows.append((
    "`msb validate` of `Sandboxfile.example` (whole process)",
    ms(validate),
    f"`taplo check` (same file, schema directive): {ms(taplo)}" if taplo else "taplo not installed",
    "< 20 ms", met(med(validate) < 0.020), rss("validate")))

plan = times("patches-plan")
rows.append((
    "fully cached `msb plan` (Debian minbase, 20 patches)",
    ms(plan), "–", "< 30 ms", met(med(plan) < 0.030), rss("plan")))

pull, skopeo = times("pull-cold", "msb"), times("pull-cold", "skopeo+umoci")
rows.append((
    "cold pull + unpack of Debian minbase (63 MB gzip, 6,680 entries) from the local registry",
    s(pull), f"`skopeo copy` + `umoci unpack`: {s(skopeo)}",
    f"≤ the alternative (ratio {med(pull) / med(skopeo):.2f})", met(med(pull) <= med(skopeo)), rss("pull-cold")))

warm = times("pull-warm")
rows.append((
    "warm `msb pull --pull missing` (the store answers, no network)",
    ms(warm), "–", "< 50 ms", met(med(warm) < 0.050), rss("pull-warm")))

empty, cold, edit = times("patches-empty"), times("patches-cold"), times("patches-edit")
rows.append((
    "rebuild after editing patch 15 of 20 (steps 15..20 rebuilt)",
    s(edit),
    f"cold build from an empty store (pull + unpack + 20 patches): {s(empty)}; "
    f"cold build of the 20 patch layers alone (image present): {s(cold)}",
    f"< 10% of cold ({med(edit) / med(empty) * 100:.1f}% of the cold build; "
    f"{med(edit) / med(cold) * 100:.0f}% of the patch-only build, which rebuilds 6 of 20 steps)",
    met(med(edit) / med(empty) < 0.10), f"{rss('build-edit')} (cold: {rss('build-empty')})"))

up, crun = {n: times("up-msb", n) for n in ["busybox", "debian"]}, {n: times("up-crun", n) for n in ["busybox", "debian"]}
same = {n: times("up-crun-same", n) for n in ["busybox", "debian"]}
for name, label in [("busybox", "busybox"), ("debian", "Debian minbase")]:
    ratio, ratio_same = med(up[name]) / med(crun[name]), med(up[name]) / med(same[name])
    rows.append((
        f"warm `msb up` of `echo hi`, {label}, `runtime = \"oci\"` (built, booted in the foreground until it exits)",
        ms(up[name]),
        f"`crun run` of a hand-made bundle (`umoci unpack`, args `/bin/echo hi`): {ms(crun[name])}; "
        f"`crun run` of msb's own bundle over the same overlay view, mounted once: {ms(same[name])}",
        f"≤ 1.5× crun ({ratio:.2f}× the umoci bundle, {ratio_same:.2f}× msb's bundle)", met(ratio <= 1.5), rss(f"up-{name}")))
apart = abs(med(up["debian"]) - med(up["busybox"])) / med(up["busybox"])
rows.append((
    "warm `msb up`: busybox vs Debian minbase (5 MB vs 200 MB root)",
    f"{apart * 100:.0f}% apart", "–", "within 10%", met(apart <= 0.10), "–"))
watch = json.load(open(f"{out}/watch.json"))
for kind, what in [("script", "a script file"), ("copy_file", "a copy_file source (one layer rebuilt)")]:
    w = watch[kind]
    rows.append((
        f"`msb up --watch`: saving {what} → the re-run's first output line ({w['runs']} edits)",
        f"{w['median_ms']:.1f} ms ({w['min_ms']:.1f} … {w['max_ms']:.1f})", "–",
        "< 300 ms" if kind == "script" else "–",
        met(w["median_ms"] < 300) if kind == "script" else "–", "–"))

def first(path, pattern, default="?"):
    try:
        for line in open(path):
            m = re.match(pattern, line)
            if m:
                return m.group(1).strip()
    except OSError:
        pass
    return default

cpu = first("/proc/cpuinfo", r"model name\s*:\s*(.*)")
mem_kib = int(first("/proc/meminfo", r"MemTotal:\s*(\d+)", "0"))
os_name = first("/etc/os-release", r'PRETTY_NAME="?([^"]*)"?')
tools = []
for tool, args in [("hyperfine", ["--version"]), ("skopeo", ["--version"]), ("umoci", ["--version"]), ("taplo", ["--version"]), ("crun", ["--version"])]:
    try:
        version = subprocess.run([tool, *args], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        tools.append(version.strip())
    except (OSError, IndexError, subprocess.TimeoutExpired):
        pass

print("# Benchmarks")
print()
print("Generated by `bash bench/run.sh` (hyperfine and `/usr/bin/time`; each figure beside the")
print("alternative measured in the same run). Times are the median of the runs with the fastest and")
print("the slowest in brackets; peak RSS is msb's maximum resident set size (`/usr/bin/time`), the")
print("largest over the runs measured.")
print()
print(f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, msb commit `{commit}` (release build)")
print(f"- Machine: {cpu}, {os.cpu_count()} cores, {mem_kib / 1024 / 1024:.1f} GiB RAM, {os_name}, kernel `{platform.release()}`")
print(f"- Tools: {'; '.join(tools)}")
print(f"- This whole run (fixtures, release build, every benchmark) took {elapsed // 60} min {elapsed % 60} s,")
print(f"  of which {build} s for the release build (one from scratch takes 3 to 10 minutes on this machine,")
print("  by its load).")
print()
print("| figure | msb: median (min … max) | alternative, same run | goal | met | msb peak RSS |")
print("|---|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
print()
print("The scripts: `bench/validate.sh`, `bench/pull.sh` (both sides write to the same disk, each run")
print("starting from an empty folder), `bench/patches.sh` (a Sandboxfile of 20 patches of every kind on")
print("the Debian image), `bench/up.sh` (crun in a private mount namespace without the cgroup v2")
print("mount, which crun 1.8 needs on this hybrid-cgroup host), `bench/watch.py` (busybox on the oci")
print("runtime; the clock starts before the file is written and stops when msb's stdout delivers the")
print("line). Each runs alone too. The machine is shared: other builds may run beside the benchmark,")
print("which shows in the spread.")
PY
step "done: BENCHMARKS.md"
cat BENCHMARKS.md >&2
