#!/usr/bin/env python3
"""Load client for the peer benchmark (Python standard library only).

`load.py serve --name NAME --port P --out FILE -- SERVER_CMD...` runs one
OpenAI-compatible chat server through one measurement, alone:

1. cold start: spawns SERVER_CMD, polls GET /health every 20 ms until it
   answers 200, then streams one chat request at once; the time from spawn to
   that request's first content token is the cold start. That request also
   serves as the warm-up and leaves the shared prefix in the server's cache;
2. concurrent load: ROUNDS rounds; in each, WORKERS threads start together
   (barrier) and each streams one chat whose system message is the same
   ~800-token support manual and whose user message is a distinct short
   question (max_tokens 64, temperature 0). Per request it records the time
   to the first content delta (TTFT); over the whole run it sums completion
   tokens (the `usage` chunk asked for with stream_options.include_usage, or
   the count of content deltas when a server sends none) and divides by the
   wall time from the first request sent to the last one finished;
3. memory: VmRSS and VmHWM from /proc/PID/status after the load;
4. stops the server (SIGTERM, then SIGKILL) and writes FILE as JSON.

`load.py prefix-tokens` prints the shared system message, for inspection.
`load.py wait-idle` returns once the CPUs are quiet (fails after a timeout).
`load.py run --name N -- CMD...` runs CMD (a bench) and, like `serve`, warns
(and appends to --notes) when other processes used more than 5% of the CPUs
meanwhile, which on 2 cores is enough to skew a result.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

HEALTH_POLL_S = 0.020
# Ten sections make the manual 800 tokens with SmolLM2's tokenizer (the
# request adds the chat template and a ~25-token question).
SECTIONS = 10
QUIET_SAMPLES = 3  # of 2 s each
REQUEST_TIMEOUT_S = 300.0


def support_manual() -> str:
    """A deterministic support-manual-like text of about 800 tokens.

    Built from fixed sentence templates so it reads like prose (which keeps
    the token count per word close to real documents) and is identical for
    every request and every server.
    """
    devices = ["the ticket kiosk", "the receipt printer", "the card reader",
               "the touch screen", "the barcode scanner", "the cash drawer"]
    symptoms = ["does not power on", "shows a blank screen",
                "rejects every card", "prints faded text",
                "freezes after a sale", "beeps three times at start-up"]
    steps = ["check that the power cable is seated firmly in the wall socket",
             "hold the reset button for ten seconds and wait for the green light",
             "open the service panel with the blue key and reseat the ribbon cable",
             "run the self-test from the maintenance menu and note the error code",
             "clean the contacts with a dry lint-free cloth, never with alcohol",
             "replace the paper roll with the printed side facing down"]
    lines = ["Store Kiosk Support Manual, revision 7.",
             "This manual tells front-desk staff how to resolve the most common "
             "kiosk faults without calling a technician. Follow the steps in "
             "order and stop as soon as the fault is cleared."]
    section = 1
    for i, device in enumerate(devices[:SECTIONS // 2]):
        for j in range(2):
            symptom = symptoms[(i + j) % len(symptoms)]
            first = steps[(i + 2 * j) % len(steps)]
            second = steps[(i + 2 * j + 3) % len(steps)]
            lines.append(
                f"Section {section}. If {device} {symptom}, first {first}. "
                f"If that does not help, {second}. Record the time, the kiosk "
                f"number and the error code in the shift log before you "
                f"escalate to the regional help line.")
            section += 1
    lines.append("Never open the power supply housing, never move a kiosk while "
                 "it is switched on, and always log out of the staff account "
                 "before leaving the counter.")
    return "\n".join(lines)


QUESTIONS = [
    "The card reader rejects every card. What should I do first?",
    "How do I fix faded text on receipts?",
    "The touch screen is blank. Which step comes first?",
    "What must I record before calling the help line?",
    "The kiosk freezes after a sale. Any advice?",
    "Can I clean the contacts with alcohol?",
    "The barcode scanner beeps three times at start-up. Why?",
    "How long do I hold the reset button?",
    "Which key opens the service panel?",
    "What should I never do while the kiosk is on?",
    "How do I replace the paper roll?",
    "The cash drawer does not power on. What now?",
]


def question(worker: int, round_no: int) -> str:
    """A distinct question per (worker, round), short and deterministic."""
    base = QUESTIONS[(worker + 4 * round_no) % len(QUESTIONS)]
    return f"{base} (kiosk {100 + worker}, shift {round_no + 1})"


@dataclass
class Result:
    ok: bool
    ttft_s: float = math.nan
    total_s: float = math.nan
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    usage_reported: bool = False
    error: str = ""
    t_start: float = 0.0
    t_end: float = 0.0


# Fields added to every request body (`serve --extra-body`), e.g.
# llama-server's `cache_prompt: false`.
EXTRA_BODY: dict = {}


def stream_chat(port: int, system: str, user: str, max_tokens: int,
                t0: float | None = None) -> Result:
    """Streams one chat completion; TTFT counts from t0 (default: now)."""
    body = json.dumps({
        "model": "default",
        "messages": [{"role": "system", "content": system},
                     {"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **EXTRA_BODY,
    })
    start = time.perf_counter()
    t0 = start if t0 is None else t0
    res = Result(ok=False, t_start=start)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json",
                              "Accept": "text/event-stream"})
        resp = conn.getresponse()
        if resp.status != 200:
            res.error = f"HTTP {resp.status}: {resp.read(500)!r}"
            return res
        deltas = 0
        while True:
            raw = resp.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError:
                continue
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    deltas += 1
                    if math.isnan(res.ttft_s):
                        res.ttft_s = time.perf_counter() - t0
            usage = chunk.get("usage")
            if usage:
                res.usage_reported = True
                res.completion_tokens = int(usage.get("completion_tokens", 0))
                if usage.get("prompt_tokens") is not None:
                    res.prompt_tokens = int(usage["prompt_tokens"])
        if not res.usage_reported:
            res.completion_tokens = deltas
        res.ok = not math.isnan(res.ttft_s)
        if not res.ok:
            res.error = "stream ended without a content token"
    except (OSError, http.client.HTTPException) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
        res.t_end = time.perf_counter()
        res.total_s = res.t_end - start
    return res


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def health_status(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def proc_memory_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
# Other processes may use this share of the machine during a measurement
# before it is flagged (background daemons stay well under 1%).
FOREIGN_CPU_LIMIT = 0.05


def system_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        f = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_s() -> float:
    """CPU seconds of this process (all threads) and its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def proc_cpu_s(pid: int) -> float:
    """CPU seconds of a running process, all threads (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuWatch:
    """Measures how much of the machine other processes used meanwhile: the
    system's busy time less this process's, its children's and `extra_s`
    (a still-running child's, read by the caller)."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.busy0 = system_busy_s()
        self.own0 = own_cpu_s()

    def foreign_share(self, extra_s: float = 0.0) -> float:
        wall = time.perf_counter() - self.wall0
        busy = system_busy_s() - self.busy0
        own = own_cpu_s() - self.own0 + extra_s
        return max(0.0, busy - own) / (wall * NCPU) if wall > 0 else 0.0


def flag_interference(name: str, share: float, notes: str | None) -> None:
    if share <= FOREIGN_CPU_LIMIT:
        return
    line = (f"{name}: other processes used {share:.0%} of the CPUs during this "
            "measurement; its numbers are disturbed, rerun on a quiet machine")
    print(f"load.py: warning: {line}", file=sys.stderr)
    if notes:
        with open(notes, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def run_watched(args: argparse.Namespace) -> int:
    """Runs a command (stdout passed through) and flags interference."""
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("load.py run: no command given after --", file=sys.stderr)
        return 2
    watch = CpuWatch()
    try:
        proc = subprocess.Popen(cmd)
    except OSError as exc:
        print(f"load.py run: cannot start {cmd[0]}: {exc}", file=sys.stderr)
        return 127
    exit_on_signals()
    try:
        code = proc.wait()
    finally:
        stop(proc)
    if code == 0:
        flag_interference(args.name, watch.foreign_share(), args.notes)
    return code


def exit_on_signals() -> None:
    """Turns SIGTERM/SIGINT into SystemExit, so `finally` blocks stop the child.
    (Stopping it inside the handler could deadlock: the handler may interrupt
    Popen.wait, which holds the lock that a second wait needs.)"""
    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class LoadStats:
    results: list[Result] = field(default_factory=list)
    wall_s: float = 0.0


def run_rounds(port: int, system: str, rounds: int, workers: int,
               max_tokens: int) -> LoadStats:
    stats = LoadStats()
    lock = threading.Lock()
    for round_no in range(rounds):
        barrier = threading.Barrier(workers)

        def worker(idx: int, round_no: int = round_no,
                   barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            res = stream_chat(port, system, question(idx, round_no), max_tokens)
            with lock:
                stats.results.append(res)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if stats.results:
        first = min(r.t_start for r in stats.results)
        last = max(r.t_end for r in stats.results)
        stats.wall_s = last - first
    return stats


def serve(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("load.py serve: no server command given after --", file=sys.stderr)
        return 2
    if not port_is_free(args.port):
        print(f"load.py serve: port {args.port} is already in use; "
              "stop whatever holds it or pick another port", file=sys.stderr)
        return 2
    if args.extra_body:
        EXTRA_BODY.update(json.loads(args.extra_body))
    system = support_manual()
    log = open(args.log, "wb") if args.log else subprocess.DEVNULL  # noqa: SIM115
    watch = CpuWatch()
    t_spawn = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    if args.pidfile:
        with open(args.pidfile, "w", encoding="ascii") as pidfile:
            pidfile.write(f"{proc.pid}\n")
    exit_on_signals()
    try:
        deadline = t_spawn + args.startup_timeout
        while True:
            if proc.poll() is not None:
                print(f"load.py serve: {args.name} exited with status "
                      f"{proc.returncode} before /health answered 200"
                      + (f"; see {args.log}" if args.log else ""), file=sys.stderr)
                return 1
            if health_status(args.port) == 200:
                break
            if time.perf_counter() > deadline:
                print(f"load.py serve: {args.name} not healthy after "
                      f"{args.startup_timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(HEALTH_POLL_S)
        t_healthy = time.perf_counter()
        first = stream_chat(args.port, system, question(0, -1), args.max_tokens,
                            t0=t_spawn)
        if not first.ok:
            print(f"load.py serve: {args.name}: first request failed: {first.error}",
                  file=sys.stderr)
            return 1

        stats = run_rounds(args.port, system, args.rounds, args.workers,
                           args.max_tokens)
        failed = [r for r in stats.results if not r.ok]
        if failed:
            print(f"load.py serve: {args.name}: {len(failed)} of "
                  f"{len(stats.results)} requests failed; first: {failed[0].error}",
                  file=sys.stderr)
            return 1
        if proc.poll() is not None:
            print(f"load.py serve: {args.name} exited during the load", file=sys.stderr)
            return 1
        mem = proc_memory_kib(proc.pid)
        foreign = watch.foreign_share(extra_s=proc_cpu_s(proc.pid))
    finally:
        stop(proc)
        if log is not subprocess.DEVNULL:
            log.close()

    ttfts = [r.ttft_s for r in stats.results]
    tokens = sum(r.completion_tokens for r in stats.results)
    prompt_tokens = sorted({r.prompt_tokens for r in stats.results
                            if r.prompt_tokens is not None})
    report = {
        "name": args.name,
        "cold_start_to_first_token_s": first.ttft_s,
        "spawn_to_healthy_s": t_healthy - t_spawn,
        "requests": len(stats.results),
        "rounds": args.rounds,
        "workers": args.workers,
        "max_tokens": args.max_tokens,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "completion_tokens": tokens,
        "usage_reported": all(r.usage_reported for r in stats.results),
        "prompt_tokens_min": prompt_tokens[0] if prompt_tokens else None,
        "prompt_tokens_max": prompt_tokens[-1] if prompt_tokens else None,
        "wall_s": stats.wall_s,
        "aggregate_tokens_per_s": tokens / stats.wall_s if stats.wall_s else math.nan,
        "vm_rss_kib": mem.get("VmRSS"),
        "vm_hwm_kib": mem.get("VmHWM"),
        "foreign_cpu_share": foreign,
    }
    flag_interference(args.name, foreign, args.notes)
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
        out.write("\n")
    print(f"{args.name}: cold start {report['cold_start_to_first_token_s']:.2f} s, "
          f"TTFT p50 {report['ttft_p50_s'] * 1000:.0f} ms, "
          f"p95 {report['ttft_p95_s'] * 1000:.0f} ms, "
          f"{report['aggregate_tokens_per_s']:.1f} tok/s, "
          f"RSS {report['vm_rss_kib'] / 1024:.0f} MiB", file=sys.stderr)
    return 0


def cpu_busy_fraction(interval_s: float) -> float:
    """Share of all CPU time spent busy (not idle/iowait) over interval_s."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(interval_s)
    total1, idle1 = sample()
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total else 0.0


def wait_idle(args: argparse.Namespace) -> int:
    """Waits until the machine is quiet: one CPU-hungry neighbour (a compiler,
    a second server) on these 2 cores would distort every number, and
    OpenMP's spinning threads make oversubscription far worse than 2x."""
    start = time.monotonic()
    last_note = -math.inf
    quiet_samples = 0
    while True:
        busy = cpu_busy_fraction(2.0)
        # A build leaves idle gaps of a second or two (linking, waiting on a
        # dependency), so require several quiet samples in a row.
        quiet_samples = quiet_samples + 1 if busy <= args.max_busy else 0
        if quiet_samples >= QUIET_SAMPLES:
            return 0
        if quiet_samples:
            continue
        now = time.monotonic()
        if now - start > args.timeout:
            print(f"load.py wait-idle: CPUs still {busy:.0%} busy after "
                  f"{args.timeout:.0f} s; stop other work (e.g. a cargo build) and "
                  "rerun, or set PEER_ALLOW_BUSY=1 to measure anyway", file=sys.stderr)
            return 1
        if now - last_note >= 30.0:
            last_note = now
            print(f"load.py wait-idle: CPUs {busy:.0%} busy, waiting up to "
                  f"{args.timeout:.0f} s for other work to finish ...", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run one server through the measurement")
    srv.add_argument("--name", required=True)
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--out", required=True, help="JSON report path")
    srv.add_argument("--log", help="server stdout/stderr goes here")
    srv.add_argument("--pidfile", help="server PID is written here")
    srv.add_argument("--rounds", type=int, default=10)
    srv.add_argument("--workers", type=int, default=4)
    srv.add_argument("--max-tokens", type=int, default=64)
    srv.add_argument("--startup-timeout", type=float, default=300.0)
    srv.add_argument("--notes", help="append a line here if other work disturbed the run")
    srv.add_argument("--extra-body", help="JSON object merged into every request body")
    srv.add_argument("cmd", nargs=argparse.REMAINDER)
    run = sub.add_parser("run", help="run a command, flagging CPU interference")
    run.add_argument("--name", required=True)
    run.add_argument("--notes", help="append a line here if other work disturbed the run")
    run.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("prefix-tokens", help="print the shared system message")
    idle = sub.add_parser("wait-idle", help="wait until the CPUs are quiet")
    idle.add_argument("--max-busy", type=float, default=0.15,
                      help="busy share of all CPUs that counts as quiet")
    idle.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.command == "wait-idle":
        return wait_idle(args)
    if args.command == "run":
        return run_watched(args)
    if args.command == "prefix-tokens":
        print(support_manual())
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
