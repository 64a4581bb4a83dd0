"""Times two builds of `fhir-export` against each other in the same run.

    python3 scripts/compare-binaries.py OLD_BINARY NEW_BINARY DATA_DIR ROUNDS [QUERY]

Starts `serve` from each binary on DATA_DIR (a state folder of its own under /tmp), runs one
warm-up export on each, then ROUNDS system exports on each, alternately (the order flips
every round, so that the disk's write-back state hits both alike), polling the status every
millisecond. Prints each one's median export time and server CPU per export, and the ratio.
A machine's disk can move one binary's figures by tens of percent between runs: compare
within a run, never across.
"""

import os
import statistics
import subprocess
import sys
import time
import urllib.request


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export(port, query):
    started = time.perf_counter()
    url = f"http://127.0.0.1:{port}/fhir/$export" + ("?" + query if query else "")
    resp = urllib.request.urlopen(urllib.request.Request(url, headers={"Prefer": "respond-async"}))
    status = resp.headers["Content-Location"]
    while True:
        resp = urllib.request.urlopen(status)
        if resp.status == 200:
            resp.read()
            return time.perf_counter() - started
        time.sleep(0.001)


def main():
    old, new, data, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    query = sys.argv[5] if len(sys.argv) > 5 else ""
    servers = {}
    for i, (name, exe) in enumerate([("old", old), ("new", new)]):
        state = f"/tmp/compare-binaries-{name}"
        subprocess.run(["rm", "-rf", state], check=True)
        port = 8190 + i
        proc = subprocess.Popen(
            [exe, "serve", "--bind", f"127.0.0.1:{port}", "--source", data, "--state", state],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        servers[name] = (proc, port)
    time.sleep(2)
    try:
        times = {name: [] for name in servers}
        cpu = {name: 0.0 for name in servers}
        for _, port in servers.values():
            export(port, query)
        for r in range(rounds):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for name in order:
                proc, port = servers[name]
                before = cpu_seconds(proc.pid)
                times[name].append(export(port, query))
                cpu[name] += cpu_seconds(proc.pid) - before
        for name in servers:
            print(
                f"{name}: median {statistics.median(times[name]) * 1000:.1f} ms, "
                f"cpu per export {cpu[name] / rounds * 1000:.1f} ms"
            )
        ratio = statistics.median(times["new"]) / statistics.median(times["old"])
        print(f"new/old time ratio {ratio:.2f}")
    finally:
        for proc, _ in servers.values():
            proc.kill()


if __name__ == "__main__":
    main()
