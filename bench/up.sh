#!/usr/bin/env bash
# Benchmark of a warm `msb up` (issue 5): a sandbox whose command is `/bin/echo hi`, its image
# pulled and its layers built, booted in the foreground until it exits, for the busybox and the
# Debian minbase images; beside it, in the same run, two `crun run`s:
# - `crun`: a bundle made by hand the usual way (`umoci unpack` of the same image, `config.json`'s
#   args set to `/bin/echo hi`): a plain folder, umoci's default config, crun's default cgroups.
# - `crun-same`: msb's own bundle (its `config.json`: the agent as PID 1, the same mounts and
#   namespaces) over the same overlay view of the same layers, run with the same crun flags. The
#   overlay is mounted once for all runs, where msb mounts (and crun's exit unmounts) one per boot.
#   msb's time over this one is what msb itself adds: its process, the plan check, the per-boot
#   mount namespace and overlay, the state it keeps.
#
# crun 1.8 refuses to start anything on hosts with hybrid cgroups (see DESIGN.md), so the crun
# side runs in a private mount namespace in which /sys/fs/cgroup/unified is unmounted, as msb
# arranges for itself.
#
# Needs: a release build (msb and msb-agent), the test registry with the Debian fixture
# (tests/fixtures/images.sh --debian), crun, umoci, hyperfine, unshare. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
msb=${MSB:-$PWD/target/release/msb}
fixtures=${MSB_TEST_FIXTURES:-/tmp/msb-fixtures}
runs=${RUNS:-100}
work=$(mktemp -d /tmp/msb-bench-up.XXXXXX)
export MSB_HOME=$work/home
cleanup() {
  for name in busybox debian; do "$msb" rm "$name" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
. bench/lib.sh

bash tests/fixtures/registry.sh start >/dev/null
for name in busybox debian; do
  case $name in
    busybox) image=127.0.0.1:5000/msb-test/busybox:latest layout=$fixtures/busybox-oci:latest ;;
    debian) image=127.0.0.1:5000/msb-test/debian:bookworm layout=$fixtures/debian-oci:bookworm ;;
  esac
  mkdir -p "$work/$name"
  # The oci runtime, as crun is the alternative (`auto` would also probe for KVM first).
  printf '[sandbox.%s]\nimage = "%s"\nruntime = "oci"\ncommand = ["/bin/echo", "hi"]\n' "$name" "$image" >"$work/$name/Sandboxfile"
  # Warm: pulled, built and booted once.
  "$msb" up -f "$work/$name/Sandboxfile" >/dev/null 2>&1
  umoci unpack --image "$layout" "$work/bundle-$name" >/dev/null
  jq '.process.args = ["/bin/echo", "hi"] | .process.terminal = false' "$work/bundle-$name/config.json" >"$work/config.json"
  mv "$work/config.json" "$work/bundle-$name/config.json"
  # msb's bundle, its root moved to an overlay of the same layers with an upper layer of its own.
  sandbox=$MSB_HOME/v1/sandboxes/$name
  mkdir -p "$work/same-$name/rootfs" "$work/same-$name/upper" "$work/same-$name/work"
  jq --arg root "$work/same-$name/rootfs" '.root.path = $root' "$sandbox/bundle/config.json" >"$work/same-$name/config.json"
  jq -r 'join(":")' "$sandbox/lowers.json" >"$work/same-$name/lowers"
done
# The setup wrote a few hundred MB (layers, umoci's rootfs). Written back now, not by the first
# timed boots: every overlay unmount syncs the filesystem of its upper layer, and msb's boots
# would pay for the setup's writes (crun's plain folder has no such sync).
sync
# The crun flags msb used for these sandboxes (cgroups off for the agent without limits).
crun_flags=$(jq -r 'if .linux.cgroupsPath then "" else "--cgroup-manager=disabled" end' "$MSB_HOME/v1/sandboxes/busybox/bundle/config.json")

# Rounds of a few runs of each side and image, in an order rotated every round: this 2-vCPU VM
# drifts by a few milliseconds over a minute, and a side that always ran right after another
# would also inherit its leftovers (writeback, cgroup teardown in kernel workers). Each side's
# median is over all its rounds.
rounds=${ROUNDS:-10}
per_round=$(( (runs + rounds - 1) / rounds ))
# One side, both images in the given order: `side ROUND SIDE IMAGE...`.
side() {
  local round=$1 side=$2 commands=() name
  shift 2
  for name in "$@"; do
    case $side in
      msb) commands+=(-n "$name" "$msb up -f $work/$name/Sandboxfile") ;;
      # Each run gets its own container id; crun removes the container when `run` returns.
      crun) commands+=(-n "$name" "crun run --bundle $work/bundle-$name bench-up-$name") ;;
      crun-same) commands+=(-n "$name" "crun $crun_flags run --bundle $work/same-$name bench-same-$name") ;;
    esac
  done
  local hyperfine=(hyperfine --style basic -N --runs "$per_round" --warmup 3 --export-json "$work/round-$round-$side.json" "${commands[@]}")
  if [[ $side == msb ]]; then
    "${hyperfine[@]}" >&2
    return
  fi
  # crun beside msb's view needs its overlays mounted (once for all its runs).
  local mounts=""
  if [[ $side == crun-same ]]; then
    for name in "$@"; do
      mounts+="mount -t overlay overlay -o nodev,index=off,redirect_dir=off,metacopy=off,xino=off,lowerdir=$(cat "$work/same-$name/lowers"),upperdir=$work/same-$name/upper,workdir=$work/same-$name/work $work/same-$name/rootfs; "
    done
  fi
  unshare -m --propagation private sh -c "set -e; umount /sys/fs/cgroup/unified 2>/dev/null || true; $mounts exec \"\$@\"" sh "${hyperfine[@]}" >&2
}
sides=(msb crun crun-same)
for round in $(seq "$rounds"); do
  images=(busybox debian)
  (( round % 2 )) || images=(debian busybox)
  for i in 0 1 2; do
    side "$round" "${sides[$(( (round + i) % 3 ))]}" "${images[@]}"
  done
done
for name in busybox debian; do
  peak_rss "up-$name" "$msb" up -f "$work/$name/Sandboxfile"
done
# One file per side with every round's times, shaped as hyperfine writes them.
python3 - "$work" "$rounds" <<'PY'
import json, sys
work, rounds = sys.argv[1], int(sys.argv[2])
for side in ["msb", "crun", "crun-same"]:
    merged = {}
    for round in range(1, rounds + 1):
        for result in json.load(open(f"{work}/round-{round}-{side}.json"))["results"]:
            merged.setdefault(result["command"], []).extend(result["times"])
    json.dump({"results": [{"command": c, "times": t} for c, t in merged.items()]}, open(f"{work}/{side}.json", "w"))
PY
rm -f "$work"/round-*.json
keep_results up

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
def load(name):
    return {r["command"]: r["times"] for r in json.load(open(f"{work}/{name}.json"))["results"]}
msb, crun, same = load("msb"), load("crun"), load("crun-same")
med = statistics.median
ms = lambda t: f"{med(t)*1000:.1f} ms ({min(t)*1000:.1f} … {max(t)*1000:.1f})"
print("| figure | msb | crun run, umoci bundle | crun run, msb's bundle | goal | met |")
print("|---|---|---|---|---|---|")
for name in ["busybox", "debian"]:
    m, c, s = msb[name], crun[name], same[name]
    print(f"| warm `msb up` of `echo hi`, {name} (median; min … max) | {ms(m)} | {ms(c)} ({med(m)/med(c):.2f}×) | {ms(s)} ({med(m)/med(s):.2f}×) | ≤ 1.5× crun | {'yes' if med(m) <= 1.5 * med(c) else 'no'} (umoci bundle), {'yes' if med(m) <= 1.5 * med(s) else 'no'} (msb's bundle) |")
b, d = med(msb["busybox"]), med(msb["debian"])
print(f"| busybox vs Debian, warm `msb up` | {abs(d - b) / b * 100:.0f}% apart | | | within 10% | {'yes' if abs(d - b) <= 0.10 * b else 'no'} |")
PY
