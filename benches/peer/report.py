#!/usr/bin/env python3
"""Renders the peer benchmark's Markdown table from the raw JSON results.

Inputs: llama-bench's `-o json` arrays and `outpost bench --json` outputs (one
per pass; the table shows their mean), and the two `load.py serve` reports.
Every ratio is outpost / llama.cpp, so above 1 is better for throughput and
below 1 is better for latency and memory; each ratio cell also names its
target and whether it was met.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def load(path: str | None) -> Any:
    if not path:
        return None
    with open(path, encoding="utf-8") as src:
        return json.load(src)


def bench_tests(paths: list[str] | None) -> dict[str, float]:
    """Maps 'pp'/'tg' to mean tokens/s over the passes (one file each), for
    either bench's JSON shape (llama-bench: a list of tests; outpost: an
    object with `tests`)."""
    samples: dict[str, list[float]] = {}
    for path in paths or []:
        doc = load(path)
        tests = doc["tests"] if isinstance(doc, dict) else doc
        for test in tests:
            kind = "pp" if int(test["n_prompt"]) > 0 and int(test["n_gen"]) == 0 else "tg"
            samples.setdefault(kind, []).append(float(test["avg_ts"]))
    return {kind: sum(vals) / len(vals) for kind, vals in samples.items()}


def fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio_cell(ours: float | None, peer: float | None,
               target: tuple[str, float] | None) -> str:
    if ours is None or peer is None or not peer or math.isnan(ours) or math.isnan(peer):
        return "n/a"
    ratio = ours / peer
    cell = f"{ratio:.3f}×"
    if target is not None:
        op, bound = target
        met = ratio >= bound if op == ">=" else ratio <= bound
        sign = "≥" if op == ">=" else "≤"
        cell += f" (target {sign} {bound:g}: {'met' if met else 'MISSED'})"
    return cell


def get(doc: dict | None, key: str, scale: float = 1.0) -> float | None:
    if doc is None or doc.get(key) is None:
        return None
    return float(doc[key]) * scale


# (label, key, scale, decimals) of the server rows of the matched-cache table.
MATCHED_ROWS = [
    ("aggregate tok/s", "aggregate_tokens_per_s", 1.0, 1),
    ("TTFT p50, ms", "ttft_p50_s", 1000.0, 0),
    ("TTFT p95, ms", "ttft_p95_s", 1000.0, 0),
    ("VmRSS after the load, MiB", "vm_rss_kib", 1 / 1024, 1),
    ("VmHWM (peak RSS), MiB", "vm_hwm_kib", 1 / 1024, 1),
]


def matched(args: argparse.Namespace) -> str:
    """The table of `run.sh --cache-matched`: one block of server rows per
    cache setting, each ratio outpost / llama-server from the same run."""
    lines = [args.header.rstrip(), "",
             "| setting | metric | outpost | llama-server | ratio |",
             "|---|---|---:|---:|---|"]
    for label, ours_path, peer_path in args.pair:
        ours, peer = load(ours_path), load(peer_path)
        for metric, key, scale, digits in MATCHED_ROWS:
            o, p = get(ours, key, scale), get(peer, key, scale)
            lines.append(f"| {label} | {metric} | {fmt(o, digits)} | {fmt(p, digits)} | "
                         f"{ratio_cell(o, p, None)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--matched", action="store_true",
                        help="render --pair results only (run.sh --cache-matched)")
    parser.add_argument("--pair", nargs=3, action="append", default=[],
                        metavar=("LABEL", "OUTPOST_JSON", "LLAMA_SERVER_JSON"))
    parser.add_argument("--llama-bench", action="append",
                        help="llama-bench -o json output; repeat for each pass")
    parser.add_argument("--outpost-bench", action="append",
                        help="outpost bench --json output; repeat for each pass")
    parser.add_argument("--llama-server")
    parser.add_argument("--outpost-serve")
    parser.add_argument("--header", required=True, help="line(s) printed above the table")
    parser.add_argument("--n-prompt", type=int)
    parser.add_argument("--n-gen", type=int)
    parser.add_argument("--notes", help="lines to print under the table, if any")
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args()
    if args.matched:
        return emit(args, matched(args))
    if not (args.llama_bench and args.llama_server and args.n_prompt and args.n_gen):
        parser.error("--llama-bench, --llama-server, --n-prompt and --n-gen are required")

    peer_bench = bench_tests(args.llama_bench)
    ours_bench = bench_tests(args.outpost_bench)
    peer_srv = load(args.llama_server)
    ours_srv = load(args.outpost_serve)
    workers = peer_srv["workers"]

    server = {"ours": ours_srv, "peer": peer_srv}
    # (label, outpost value, llama.cpp value, decimals, target on the ratio)
    rows = [
        (f"Prefill pp{args.n_prompt}, tok/s (vs llama-bench)",
         ours_bench.get("pp"), peer_bench.get("pp"), 1, (">=", 0.97)),
        (f"Decode tg{args.n_gen}, tok/s (vs llama-bench)",
         ours_bench.get("tg"), peer_bench.get("tg"), 1, (">=", 0.97)),
    ]
    server_rows = [
        (f"{workers} concurrent chats, aggregate tok/s (vs llama-server)",
         "aggregate_tokens_per_s", 1.0, 1, (">=", 1.0)),
        (f"{workers} concurrent chats, TTFT p50, ms", "ttft_p50_s", 1000.0, 0, ("<=", 0.7)),
        (f"{workers} concurrent chats, TTFT p95, ms", "ttft_p95_s", 1000.0, 0, None),
        ("Server VmRSS after the load, MiB", "vm_rss_kib", 1 / 1024, 1, ("<=", 1.1)),
        ("Server VmHWM (peak RSS), MiB", "vm_hwm_kib", 1 / 1024, 1, None),
        ("Cold start: spawn to first streamed token, s",
         "cold_start_to_first_token_s", 1.0, 2, None),
    ]
    for label, key, scale, digits, target in server_rows:
        rows.append((label, get(server["ours"], key, scale), get(server["peer"], key, scale),
                     digits, target))

    lines = [args.header.rstrip(), "",
             "| metric | outpost | llama.cpp | ratio |",
             "|---|---:|---:|---|"]
    for label, ours, peer, digits, target in rows:
        lines.append(f"| {label} | {fmt(ours, digits)} | {fmt(peer, digits)} | "
                     f"{ratio_cell(ours, peer, target)} |")
    return emit(args, "\n".join(lines) + "\n")


def emit(args: argparse.Namespace, table: str) -> int:
    """Prints the table with any interference notes under it, and writes it
    to --out."""
    lines = [table.rstrip("\n")]
    if args.notes:
        with open(args.notes, encoding="utf-8") as src:
            notes = [line.strip() for line in src if line.strip()]
        if notes:
            lines.append("")
            lines.extend(f"Warning: {note}" for note in notes)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
