#!/usr/bin/env python3
"""Time from process start to "ready" for each Lambda function binary: a stand-in for
cold-start initialisation. A fake Lambda Runtime API on a loopback port records when the
process first asks for an invocation (GET /2018-06-01/runtime/invocation/next), which the
runtime does only after `main` has read its configuration and built its clients and router.

    python3 scripts/cold-start.py target/release [rounds]

Standard library only. The functions are given test configuration (no AWS calls are made
before the first invocation: the SDK clients connect lazily).
"""
import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

FUNCTIONS = ["kickoff", "status", "cancel", "worker"]
ready = threading.Event()


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.endswith("/runtime/invocation/next"):
            ready.set()
            # Hold the request: the process is ready; the measurement is taken.
            time.sleep(0.5)
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "target/release"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ)
    env.update({
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{server.server_address[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": "cold-start",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": "x",
        "AWS_LAMBDA_LOG_GROUP_NAME": "x",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "FHIR_EXPORT_PUBLIC_URL": "https://api.example.org",
        "FHIR_EXPORT_TABLE": "fhir-export",
        "FHIR_EXPORT_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/work",
        "FHIR_EXPORT_DEAD_LETTER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/work-dlq",
        # The idle pause on, as the template deploys it (nothing is called at start-up).
        "FHIR_EXPORT_WORK_QUEUE_ARN": "arn:aws:sqs:us-east-1:123456789012:work",
        "FHIR_EXPORT_WORKER_FUNCTION": "worker",
        "FHIR_EXPORT_SWEEP_RULE": "stack-sweep",
        "FHIR_EXPORT_OUTPUT": "s3://out/exports/",
        "FHIR_EXPORT_SOURCE": "s3://src/data/",
        "RUST_LOG": "warn",
    })
    print(f"{'function':<10} {'size':>10} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for name in FUNCTIONS:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            print(f"{name:<10} (not built: cargo build --release -p {name})")
            continue
        times = []
        for _ in range(rounds):
            ready.clear()
            start = time.perf_counter()
            proc = subprocess.Popen([path], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            ok = ready.wait(10)
            elapsed = (time.perf_counter() - start) * 1000
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace")
            if not ok:
                print(f"{name}: never became ready; stderr:\n{err}")
                break
            times.append(elapsed)
        if times:
            size = os.path.getsize(path) / (1024 * 1024)
            print(f"{name:<10} {size:>8.1f} MB {statistics.median(times):>10.1f} {min(times):>8.1f} {max(times):>8.1f}")
    server.shutdown()


if __name__ == "__main__":
    main()
