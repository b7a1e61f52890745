#!/usr/bin/env python3
"""Replays the shape of a demand trace against a URL with `hey`.

Each row of the trace's value column is the number of requests in one step of the trace
(a requests-per-minute column with --step 60). Every row becomes one run of `hey` at that
rate, scaled so that the trace's busiest row is sent at --peak-rps, lasting step/speedup
seconds: --speedup 6 plays an hour of the trace in ten minutes at the trace's own request
rates. One line per row reports the rate asked for, the rate achieved and the status codes.

    fleetscale-load --url http://10.42.10.20/ --trace demo-trace.csv \
        --column requests_per_minute --peak-rps 320 --speedup 6

--dry-run prints the plan (one CSV line per row) without sending anything.
"""

import argparse
import csv
import io
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.request

# Requests per second one hey worker is asked for at most; more workers share higher rates.
WORKER_RPS = 20.0
# Rows asking for less than this are played as silence (hey needs at least one request).
MIN_RPS = 0.2


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Replay a trace's requests-per-step shape against a URL with hey."
    )
    parser.add_argument("--url", required=True, help="target URL (the fleet's load balancer)")
    parser.add_argument("--trace", required=True, help="CSV file, or an http(s) URL of one")
    parser.add_argument("--column", default="requests_per_minute", help="value column")
    parser.add_argument("--step", type=float, default=60.0, help="seconds of trace per row")
    parser.add_argument("--speedup", type=float, default=1.0, help="play this many times faster")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--peak-rps", type=float, help="scale the trace so its busiest row is this rate"
    )
    scale.add_argument("--scale", type=float, default=1.0, help="multiply every row by this")
    parser.add_argument("--start", type=int, default=0, help="first row to play (0-based)")
    parser.add_argument("--rows", type=int, help="number of rows to play (default: all)")
    parser.add_argument("--loop", action="store_true", help="start again after the last row")
    parser.add_argument(
        "--disable-keepalive",
        action="store_true",
        help="a new connection per request (spreads load behind a layer-4 balancer)",
    )
    parser.add_argument("--timeout", type=int, default=10, help="seconds per request")
    parser.add_argument("--hey", default="hey", help="the hey binary")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, send nothing")
    args = parser.parse_args(argv)
    for name in ("step", "speedup", "peak_rps", "scale"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, not {value}")
    if args.start < 0 or (args.rows is not None and args.rows <= 0):
        parser.error("--start must be 0 or more and --rows 1 or more")
    return args


def read_trace(source, column):
    """The value column's numbers; a row that is not a finite number is an error naming it."""
    if re.match(r"^https?://", source):
        with urllib.request.urlopen(source, timeout=30) as response:
            text = response.read().decode("utf-8")
    else:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or column not in reader.fieldnames:
        raise ValueError(f"{source}: no column {column!r} (columns: {reader.fieldnames})")
    values = []
    for line, row in enumerate(reader, start=2):
        try:
            value = float(row[column])
        except (TypeError, ValueError):
            raise ValueError(f"{source}:{line}: {column} is {row[column]!r}, not a number")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{source}:{line}: {column} is {value}, not a finite count >= 0")
        values.append(value)
    if not values:
        raise ValueError(f"{source}: no rows")
    return values


def plan(values, args):
    """(row, seconds, rps) for each row to play."""
    rows = values[args.start :]
    if args.rows is not None:
        rows = rows[: args.rows]
    if not rows:
        raise ValueError(f"--start {args.start} is past the trace's {len(values)} rows")
    scale = args.scale
    if args.peak_rps is not None:
        busiest = max(rows)
        scale = args.peak_rps * args.step / busiest if busiest > 0 else 0.0
    seconds = args.step / args.speedup
    return [
        (args.start + i, seconds, value * scale / args.step) for i, value in enumerate(rows)
    ]


def hey_command(args, seconds, rps):
    workers = max(1, math.ceil(rps / WORKER_RPS))
    command = [
        args.hey,
        "-z", f"{seconds:.3f}s",
        "-c", str(workers),
        "-q", f"{rps / workers:.4f}",
        "-t", str(args.timeout),
    ]
    if args.disable_keepalive:
        command.append("-disable-keepalive")
    return command + [args.url]


def summarise(output):
    """Achieved rate, responses by status, and errors, from hey's summary."""
    achieved = re.search(r"Requests/sec:\s*([0-9.]+)", output)
    statuses = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", output))
    errors = 0
    if "Error distribution:" in output:
        tail = output.split("Error distribution:", 1)[1]
        errors = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", tail, re.M))
    codes = ", ".join(f"{code}: {count}" for code, count in sorted(statuses.items()))
    return float(achieved.group(1)) if achieved else 0.0, codes or "no responses", errors


def play(args, steps):
    total = len(steps)
    for n, (row, seconds, rps) in enumerate(steps, start=1):
        if rps < MIN_RPS:
            print(f"row {row} ({n}/{total}): {rps:.2f} rps for {seconds:.1f}s: idle", flush=True)
            time.sleep(seconds)
            continue
        started = time.monotonic()
        result = subprocess.run(
            hey_command(args, seconds, rps), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            print(f"row {row}: hey failed ({result.returncode}): {result.stderr.strip()}",
                  file=sys.stderr, flush=True)
        achieved, codes, errors = summarise(result.stdout)
        print(
            f"row {row} ({n}/{total}): asked {rps:.1f} rps for {seconds:.1f}s, "
            f"achieved {achieved:.1f} rps; {codes}; errors: {errors}",
            flush=True,
        )
        # hey may end early (a refused connection); keep the trace's clock.
        rest = seconds - (time.monotonic() - started)
        if rest > 0:
            time.sleep(rest)


def main(argv):
    args = parse_args(argv)
    try:
        steps = plan(read_trace(args.trace, args.column), args)
    except (OSError, ValueError) as error:
        print(f"fleetscale-load: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("row,seconds,rps,command")
        for row, seconds, rps in steps:
            command = " ".join(hey_command(args, seconds, rps)) if rps >= MIN_RPS else "idle"
            print(f"{row},{seconds:.3f},{rps:.3f},{command}")
        return 0
    if shutil.which(args.hey) is None:
        print(f"fleetscale-load: {args.hey} not found (Debian: apt-get install hey)",
              file=sys.stderr)
        return 2
    peak = max(rps for _, _, rps in steps)
    print(f"playing {len(steps)} rows of {args.trace} against {args.url}: "
          f"{steps[0][1]:.1f}s per row, peak {peak:.1f} rps", flush=True)
    while True:
        play(args, steps)
        if not args.loop:
            return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
