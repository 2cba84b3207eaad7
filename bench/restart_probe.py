#!/usr/bin/env python3
"""Starts `trailspike run` and measures how long it takes to consume again.

    restart_probe.py METRICS_PORT LOG_FILE -- TRAILSPIKE_COMMAND...

Polls /metrics every 10 ms until trailspike_messages_consumed_total is
above zero, reads the process's resident set size at that moment, then
stops it with SIGTERM (a clean stop) and waits. Prints one line:

    consuming_after_s=... rss_mb=... state_loaded_after_s=...

`state_loaded_after_s` comes from the "state loaded" log line's
timestamp, so the time spent opening the store can be told apart from the
time spent joining the consumer group.
"""

import datetime
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

POLL_S = 0.01
TIMEOUT_S = 120


def consumed(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except OSError:
        return 0
    m = re.search(r"^trailspike_messages_consumed_total (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def state_loaded_at(log_path):
    """Wall-clock time of the "state loaded" line (tracing's RFC 3339)."""
    with open(log_path, errors="replace") as f:
        for line in f:
            if "state loaded" in line:
                stamp = line.split()[0]
                stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp).replace("Z", "+00:00")
                return datetime.datetime.fromisoformat(stamp).timestamp()
    return None


def main():
    port, log_path = sys.argv[1], sys.argv[2]
    command = sys.argv[sys.argv.index("--") + 1 :]
    with open(log_path, "w") as log:
        started = time.time()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            while consumed(port) == 0:
                if process.poll() is not None:
                    sys.exit(f"trailspike exited with {process.returncode}; see {log_path}")
                if time.time() - started > TIMEOUT_S:
                    sys.exit(f"nothing consumed within {TIMEOUT_S} s; see {log_path}")
                time.sleep(POLL_S)
            after = time.time() - started
            rss = rss_mb(process.pid)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    loaded = state_loaded_at(log_path)
    loaded_after = f"{loaded - started:.3f}" if loaded else "?"
    print(f"consuming_after_s={after:.3f} rss_mb={rss:.1f} state_loaded_after_s={loaded_after}")


if __name__ == "__main__":
    main()
