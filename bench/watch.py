#!/usr/bin/env python3
"""Watch latency of `msb up --watch` on the oci runtime with the busybox image.

Two figures, each over RUNS edits (default 20):
  script:    saving a script file -> the first output line of the re-run;
  copy_file: saving a copy_file source -> the first output line of the re-run (one layer rebuilt).

The clock starts just before the file is written and stops when msb's stdout delivers the re-run's
first line (read from a pipe, no polling). Prints a JSON summary (median, min, max in ms) to stdout.

Usage: MSB=target/release/msb python3 bench/watch.py   (as root; needs the local registry images:
bash tests/fixtures/images.sh)
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MSB = os.environ.get("MSB", "target/release/msb")
RUNS = int(os.environ.get("RUNS", "20"))
IMAGE = os.environ.get("IMAGE", "127.0.0.1:5000/msb-test/busybox:latest")

SANDBOXFILE = f"""
[sandbox.bench]
image = "{IMAGE}"
command = ["/bin/sh", "-c", "greet; cat /etc/marker"]
[sandbox.bench.scripts]
greet = {{ file = "greet.sh" }}
[[sandbox.bench.patch]]
op = "copy_file"
src = "marker"
dst = "/etc/marker"
"""


def main():
    project = tempfile.mkdtemp(prefix="msb-bench-watch-")
    home = os.path.join(project, ".home")
    write(project, "Sandboxfile", SANDBOXFILE)
    write(project, "greet.sh", "echo greet-0\n")
    write(project, "marker", "marker-0\n")
    env = dict(os.environ, MSB_HOME=home)
    msb = subprocess.Popen([os.path.abspath(MSB), "up", "--watch"], cwd=project, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
    try:
        wait_line(msb, "marker-0")
        time.sleep(0.5)
        results = {}
        for kind, path, line in (("script", "greet.sh", "echo greet-{i}\n"), ("copy_file", "marker", "marker-{i}\n")):
            samples = []
            for i in range(1, RUNS + 1):
                expected = line.format(i=i).replace("echo ", "").strip()
                started = time.perf_counter()
                write(project, path, line.format(i=i))
                wait_line(msb, expected)
                samples.append((time.perf_counter() - started) * 1000)
                # Let the run finish (it prints two lines) before the next edit.
                time.sleep(0.3)
            results[kind] = {"median_ms": round(statistics.median(samples), 1),
                             "min_ms": round(min(samples), 1), "max_ms": round(max(samples), 1), "runs": RUNS}
        json.dump(results, sys.stdout, indent=2)
        print()
    finally:
        msb.send_signal(2)
        msb.wait(timeout=30)
        # Leave nothing behind: the stopped sandbox, then the project and its store.
        subprocess.run([os.path.abspath(MSB), "rm", "bench"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(project, ignore_errors=True)


def write(project, name, text):
    with open(os.path.join(project, name), "w") as f:
        f.write(text)


def wait_line(process, text):
    for line in process.stdout:
        if text in line:
            return
    raise SystemExit(f"msb exited before printing {text!r}")


if __name__ == "__main__":
    main()
