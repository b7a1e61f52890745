#!/usr/bin/env python3
"""Runs the agent with many mock fleets on this machine and measures it.

    ./scripts/many-fleets.py [--fleets 100] [--tick 10] [--seconds 120] [--out FILE]

Every fleet: the mock cloud, a synthetic signal (its own seed), the `dp` policy, a tick of
`--tick` seconds and 14 days of history read at warm-up (capped, as the agent caps it, at
20,160 steps). Reports, as JSON (to --out, default benchmarks/many-fleets.json) and text:

- first_decisions_s: from the agent's start until every fleet has decided once;
- decisions_per_s: decisions logged per second once all have, over the rest of the run;
- worst_late_pct: the longest gap between two decisions of one fleet beyond the tick, as
  a share of the tick (0: every tick on time);
- peak_rss_mb: the process's peak resident memory (VmHWM);
- cpu_pct: CPU time over wall time in the steady part (100 = one core busy);
- stop_s: from SIGTERM until the agent exited.
"""
import argparse
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import threading
import time

root = pathlib.Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(fleets, tick, port):
    lines = [
        "[agent]",
        f'tick = "{tick}s"',
        f'metrics_address = "127.0.0.1:{port}"',
        'log_format = "json"',
    ]
    for i in range(fleets):
        lines += [
            "",
            "[[fleets]]",
            f'name = "fleet-{i:03}"',
            'boot_delay = "30s"',
            'history = "14d"',
            "[fleets.adapter]",
            'kind = "mock"',
            'boot_delay = "30s"',
            'launch_latency = "20ms"',
            'terminate_latency = "10ms"',
            "initial_size = 10",
            "[fleets.signal]",
            'kind = "synthetic"',
            f"mean = {10 + i % 20}.0",
            "daily_amplitude = 0.5",
            "noise = 0.05",
            "flash_crowds_per_day = 2.0",
            "flash_crowd_factor = 2.0",
            f"seed = {i + 1}",
            "[fleets.policy]",
            'name = "dp"',
            "[fleets.guards]",
            "min = 1",
            "max = 500",
        ]
    return "\n".join(lines) + "\n"


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # kB
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleets", type=int, default=100)
    ap.add_argument("--tick", type=int, default=10, help="seconds")
    ap.add_argument("--seconds", type=int, default=120, help="how long to run")
    ap.add_argument("--out", default=str(root / "benchmarks" / "many-fleets.json"))
    ap.add_argument("--bin", default=str(root / os.environ.get("CARGO_TARGET_DIR", "target") / "release" / "fleetscale"))
    args = ap.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "fleets.toml"
        path.write_text(config(args.fleets, args.tick, port))
        started = time.monotonic()
        agent = subprocess.Popen([args.bin, "run", "--config", str(path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        decisions = []  # (monotonic time seen, fleet)
        errors = []

        def read():
            for line in agent.stderr:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                fields = entry.get("fields", entry)
                message = str(fields.get("message", entry.get("message", "")))
                if message.startswith("stopping:"):
                    continue  # a decision abandoned at the stop
                if "applied" in fields or "desired" in fields:
                    decisions.append((time.monotonic(), fields.get("fleet")))
                elif entry.get("level") in ("ERROR",):
                    errors.append(line.strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        all_decided = None
        steady = None
        while time.monotonic() - started < args.seconds and agent.poll() is None:
            time.sleep(0.5)
            if all_decided is None and len({f for _, f in decisions}) >= args.fleets:
                all_decided = time.monotonic()
                steady = (all_decided, cpu_seconds(agent.pid), len(decisions))
        peak_rss = proc_status(agent.pid, "VmHWM") if agent.poll() is None else 0
        end = (time.monotonic(), cpu_seconds(agent.pid) if agent.poll() is None else 0, len(decisions))
        term = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=120)
        except subprocess.TimeoutExpired:
            agent.kill()
        stop_s = time.monotonic() - term
        reader.join(timeout=5)

    by_fleet = {}
    for t, f in decisions:
        by_fleet.setdefault(f, []).append(t)
    gaps = [b - a for ts in by_fleet.values() for a, b in zip(ts, ts[1:])]
    # Every fleet's first decision, even if it came after the run (while stopping).
    firsts = [min(ts) for ts in by_fleet.values()]
    last_first = max(firsts) - started if len(firsts) >= args.fleets else None
    result = {
        "fleets": args.fleets,
        "tick_s": args.tick,
        "run_s": args.seconds,
        "first_decisions_s": None if last_first is None else round(last_first, 1),
        "all_decided_within_run": all_decided is not None,
        "fleets_decided": len(by_fleet),
        "decisions": len(decisions),
        "decisions_per_s": None if steady is None or end[0] <= steady[0]
        else round((end[2] - steady[2]) / (end[0] - steady[0]), 2),
        "expected_decisions_per_s": round(args.fleets / args.tick, 2),
        # None: no fleet decided twice within the run.
        "worst_late_pct": round(100.0 * max(0.0, max(gaps) - args.tick) / args.tick, 1) if gaps else None,
        "peak_rss_mb": round(peak_rss / 1024, 1),
        "cpu_pct": None if steady is None or end[0] <= steady[0]
        else round(100.0 * (end[1] - steady[1]) / (end[0] - steady[0]), 1),
        "stop_s": round(stop_s, 2),
        "exit_code": agent.returncode,
        "errors": errors[:5],
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
