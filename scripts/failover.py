#!/usr/bin/env python3
"""Measures failover and the cost of coordination: agents coordinating through a real etcd.

    ./scripts/failover.py [--agents 2] [--fleets 4] [--ttl 15] [--tick 1] [--rounds 3] [--out FILE]

Starts a single-member etcd (Debian's `etcd-server`) on free loopback ports with a
temporary data folder, and `--agents` agents (release build) with the same `--fleets`
mock fleets (synthetic signal, target tracking), coordinating through it. Each round
kills one holder with SIGKILL (no resign, no revoke: its lease must run out), times the
takeover from its logs, and starts it again. Reports, as JSON (to --out, default
benchmarks/failover.json) and text:

- per round and fleet: kill to held by another agent, and kill to that holder's first
  decision on the fleet (a tick that read the cloud and decided), in seconds;
- worst of each, and the worst beyond the lease TTL;
- the cost of coordination per tick, measured on the surviving agents over the steady
  run: etcd calls per tick (every operation, from fleetscale_etcd_call_duration_seconds)
  and their mean latency.
"""
import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from datetime import datetime

root = pathlib.Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool):
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(f"`{tool}` is not on PATH: install it with "
                         "`apt-get install etcd-server etcd-client` (./scripts/test.sh does)")
    return path


def start_etcd(tmp):
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        [need("etcd"), "--name", "bench", "--data-dir", str(tmp / "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if b'"true"' in r.read():
                    return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("etcd did not become healthy within 30 s")


def config(member, endpoint, port, args):
    lines = [
        "[agent]",
        f'tick = "{args.tick}s"',
        f'metrics_address = "127.0.0.1:{port}"',
        'log_format = "json"',
        "",
        "[agent.coordination]",
        'kind = "etcd"',
        f'endpoints = ["{endpoint}"]',
        'prefix = "/fleetscale-bench"',
        f'lease_ttl = "{args.ttl}s"',
        f'member = "{member}"',
    ]
    for i in range(args.fleets):
        lines += [
            "",
            "[[fleets]]",
            f'name = "fleet-{i:02}"',
            'boot_delay = "10s"',
            'history = "1m"',
            "[fleets.adapter]",
            'kind = "mock"',
            'boot_delay = "10s"',
            "initial_size = 4",
            "[fleets.signal]",
            'kind = "synthetic"',
            "mean = 6.0",
            "daily_amplitude = 0.5",
            "noise = 0.1",
            "speedup = 600.0",
            f"seed = {i + 1}",
            "[fleets.policy]",
            'name = "target-tracking"',
            "target_utilisation = 0.7",
            "[fleets.guards]",
            "min = 1",
            "max = 40",
        ]
    return "\n".join(lines) + "\n"


class Agent:
    """One `fleetscale run` process; its log lines are parsed as they come."""

    def __init__(self, member, endpoint, tmp, args):
        self.member = member
        self.port = free_port()
        path = tmp / f"{member}.toml"
        path.write_text(config(member, endpoint, self.port, args))
        self.held = []       # (wall time, fleet): this agent began holding the fleet
        self.decisions = []  # (wall time, fleet)
        self.proc = subprocess.Popen([args.bin, "run", "--config", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self):
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            fields = entry.get("fields", entry)
            message = str(fields.get("message", ""))
            stamp = entry.get("timestamp")
            if not stamp:
                continue
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            fleet = fields.get("fleet") or entry.get("span", {}).get("fleet")
            if message.startswith("holding the fleet"):
                self.held.append((at, fleet))
            elif "applied" in fields or "desired" in fields:
                self.decisions.append((at, fleet))

    def metrics(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return ""

    def holding(self):
        """The fleets this agent holds now, by its fleetscale_fleet_held gauge."""
        held = set()
        for line in self.metrics().splitlines():
            if line.startswith("fleetscale_fleet_held{") and line.rstrip().endswith(" 1"):
                held.add(line.split('fleet="', 1)[1].split('"', 1)[0])
        return held

    def etcd_calls(self):
        """(calls, seconds) over every etcd operation so far."""
        count = total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("fleetscale_etcd_call_duration_seconds_count"):
                count += float(line.split()[-1])
            elif line.startswith("fleetscale_etcd_call_duration_seconds_sum"):
                total += float(line.split()[-1])
        return count, total

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait(within, done):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.1)
    return done()


def spread(agents, fleets):
    held = [a.holding() for a in agents]
    every = [f for h in held for f in h]
    return len(every) == fleets and len(set(every)) == fleets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument("--fleets", type=int, default=4)
    ap.add_argument("--ttl", type=int, default=15, help="lease TTL, seconds (the agent's default: 15)")
    ap.add_argument("--tick", type=int, default=1, help="seconds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(root / "benchmarks" / "failover.json"))
    ap.add_argument("--bin", default=str(root / os.environ.get("CARGO_TARGET_DIR", "target") / "release" / "fleetscale"))
    args = ap.parse_args()
    if args.agents < 2:
        raise SystemExit("--agents: at least 2 (one to kill, one to take over)")

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = pathlib.Path(tmpdir)
        etcd, endpoint = start_etcd(tmp)
        names = [f"agent-{i}" for i in range(args.agents)]
        agents = {n: Agent(n, endpoint, tmp, args) for n in names}
        rounds = []
        cost = None
        try:
            if not wait(60, lambda: spread(agents.values(), args.fleets)):
                raise SystemExit(f"the fleets were not held once each within 60 s: "
                                 f"{ {n: sorted(a.holding()) for n, a in agents.items()} }")
            # The cost of coordination, over a steady stretch of every agent.
            before = {n: (a.etcd_calls(), len(a.decisions)) for n, a in agents.items()}
            time.sleep(max(10, 10 * args.tick))
            calls = seconds = ticks = 0.0
            for n, a in agents.items():
                (c0, s0), d0 = before[n]
                c1, s1 = a.etcd_calls()
                calls += c1 - c0
                seconds += s1 - s0
                ticks += len(a.decisions) - d0
            cost = {
                "ticks": int(ticks),
                "etcd_calls": int(calls),
                "etcd_calls_per_tick": round(calls / ticks, 2) if ticks else None,
                "etcd_call_mean_ms": round(1000 * seconds / calls, 2) if calls else None,
                "etcd_ms_per_tick": round(1000 * seconds / ticks, 2) if ticks else None,
            }
            for r in range(args.rounds):
                victim_name = max(names, key=lambda n: len(agents[n].holding()))
                victim = agents[victim_name]
                fleets = sorted(victim.holding())
                killed = time.time()
                victim.kill()
                others = [a for n, a in agents.items() if n != victim_name]
                taken = wait(args.ttl + 10 * args.tick + 10, lambda: all(
                    any(f2 == f and t > killed for a in others for t, f2 in a.decisions) for f in fleets))
                rows = []
                for f in fleets:
                    held = [t for a in others for t, f2 in a.held if f2 == f and t > killed]
                    decided = [t for a in others for t, f2 in a.decisions if f2 == f and t > killed]
                    rows.append({
                        "fleet": f,
                        "held_s": round(min(held) - killed, 2) if held else None,
                        "first_decision_s": round(min(decided) - killed, 2) if decided else None,
                    })
                rounds.append({"round": r + 1, "killed": victim_name, "taken_over": taken, "fleets": rows})
                print(f"round {r + 1}: killed {victim_name} holding {fleets}: {rows}", flush=True)
                # Back again, and spread again, before the next round.
                agents[victim_name] = Agent(victim_name, endpoint, tmp, args)
                share = -(-args.fleets // args.agents)
                wait(args.ttl + 60, lambda: spread(agents.values(), args.fleets)
                     and all(0 < len(agents[n].holding()) <= share for n in names))
        finally:
            for a in agents.values():
                a.stop()
            etcd.kill()
            etcd.wait()

    held = [row["held_s"] for r in rounds for row in r["fleets"]]
    first = [row["first_decision_s"] for r in rounds for row in r["fleets"]]
    result = {
        "agents": args.agents,
        "fleets": args.fleets,
        "lease_ttl_s": args.ttl,
        "tick_s": args.tick,
        "rounds": rounds,
        "takeovers": len(held),
        "missed_takeovers": sum(1 for h in first if h is None),
        "worst_held_s": max((h for h in held if h is not None), default=None),
        "worst_first_decision_s": max((h for h in first if h is not None), default=None),
        "mean_first_decision_s": round(sum(h for h in first if h is not None) / max(1, sum(1 for h in first if h is not None)), 2),
        "worst_beyond_ttl_s": None if not first or None in first else round(max(first) - args.ttl, 2),
        "coordination_per_tick": cost,
    }
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        if k != "rounds":
            print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
