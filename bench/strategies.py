"""Strategy benchmark: the cost of a pick and of set_endpoints for every registered strategy.

Issue 2, section 4. For each strategy, at 3, 100 and 10,000 endpoints:
- pick: `strategy.pick(context)` in a loop over 4,096 request contexts (distinct client addresses, also
  used as hash keys), best of several repeats, in ns per call;
- pick+done: the same with `on_done` after every pick (steady state for the in-flight strategies);
- set_endpoints: alternating between two endpoint sets that differ in one endpoint (so nothing is reused
  from a cache), best of a few calls, in ms.
The yardstick, measured in the same run with the same loop: a bare Python function call taking the
context and returning None (the picks are called as bound methods fetched once before the loop, so the
loop adds nothing to a pick that it does not add to the bare call). Ratio = pick / bare call at 10,000
endpoints. Targets: pick within 20x a bare call, set_endpoints within 100 ms.

Weights: 5/1/1 at 3 endpoints, 1..5 in turn otherwise (integers, as configured weights are). One extra
row, WeightedRoundRobin with 12+ distinct float weights (slow start), shows its EDF mode.

Run `python -m bench.strategies` (`--no-docs` leaves docs/benchmarks.md alone, `--quick` does fewer
repeats). It rewrites only the part of docs/benchmarks.md between the strategies markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from steelyard.model import Strategy as StrategySpec
from steelyard.strategies import BalancingStrategy, Endpoint, PickContext, create, registered_names

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN = "<!-- strategies:begin -->"
END = "<!-- strategies:end -->"
SIZES = (3, 100, 10_000)
CONTEXTS = 4096
PICK_TARGET = 20.0
SET_TARGET_MS = 100.0
EDF_ROW = "WeightedRoundRobin (EDF)"


def endpoint_set(n: int, *, variant: int = 0, floats: bool = False) -> list[Endpoint]:
    if n == 3:
        weights = [5.0, 1.0, 1.0]
    elif floats:
        weights = [1.0 + (i % 97) / 97 for i in range(n)]
    else:
        weights = [float(1 + i % 5) for i in range(n)]
    eps = [Endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080", w) for i, w in enumerate(weights)]
    if variant:  # the other set: the last endpoint replaced by a newcomer
        eps[-1] = Endpoint(f"10.255.255.{variant}:8080", eps[-1].weight)
    return eps


def make(kind: str) -> BalancingStrategy:
    spec: dict[str, object] = {"type": kind, "timeSlice": "1s"}
    if kind in ("RingHash", "Maglev"):
        spec["hashOn"] = {"sourceIP": {}}
    return create(StrategySpec.model_validate(spec), rng=random.Random(1))


def contexts(first: int = 0) -> list[PickContext]:
    out = []
    for i in range(first, first + CONTEXTS):
        ip = f"{172 + i // 65536 % 64}.{i // 256 % 256}.{i % 256}.1"
        out.append(PickContext(client_ip=ip, hash_key=ip))
    return out


def bare(context: PickContext) -> None:
    return None


def time_loop(call: Callable[[PickContext], object], ctxs: Sequence[PickContext], repeats: int) -> float:
    """Best ns per call of `for c in ctxs: call(c)`."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for c in ctxs:
            call(c)
        best = min(best, (time.perf_counter_ns() - started) / len(ctxs))
    return best


def time_pick_done(strategy: BalancingStrategy, ctxs: Sequence[PickContext], repeats: int) -> float:
    pick, done = strategy.pick, strategy.on_done
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for c in ctxs:
            e = pick(c)
            if e is not None:
                done(e, 0.001, True)
        best = min(best, (time.perf_counter_ns() - started) / len(ctxs))
    return best


def time_set(kind: str, n: int, calls: int, floats: bool) -> float:
    """Best ms of set_endpoints, alternating two sets that differ in one endpoint (the best, like the
    picks: on a shared machine the slower runs measure the neighbours)."""
    strategy = make(kind)
    sets = [endpoint_set(n, variant=v, floats=floats) for v in (0, 1)]
    strategy.set_endpoints(sets[1])
    times = []
    for i in range(calls):
        started = time.perf_counter()
        strategy.set_endpoints(sets[i % 2])
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


Results = dict[str, dict[int, dict[str, float]]]


def measure(kinds: Sequence[str], repeats: int, set_calls: int) -> tuple[float, Results]:
    ctxs = contexts()
    bare_ns = time_loop(bare, ctxs, repeats * 3)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for row in kinds:
        kind, floats = (row, False) if row != EDF_ROW else ("WeightedRoundRobin", True)
        results[row] = {}
        for n in SIZES:
            if floats and n == 3:
                continue
            strategy = make(kind)
            strategy.set_endpoints(endpoint_set(n, floats=floats))
            for c in ctxs[:256]:  # warm up (first blocks, heaps)
                strategy.pick(c)
            pick_ns = time_loop(strategy.pick, ctxs, repeats)
            # New keys: every pick a key the strategy has not seen (the hash strategies' memo misses).
            cold = min(time_loop(strategy.pick, contexts(CONTEXTS * (r + 1)), 1) for r in range(repeats))
            cycle = make(kind)
            cycle.set_endpoints(endpoint_set(n, floats=floats))
            pick_done_ns = time_pick_done(cycle, ctxs, repeats)
            calls = set_calls if not (kind == "Maglev" and n >= 10_000) else 2
            set_ms = time_set(kind, n, calls, floats)
            results[row][n] = {"pick": pick_ns, "cold": cold, "pick_done": pick_done_ns, "set_ms": set_ms}
            print(f"  {row:<26} n={n:<6} pick {pick_ns:6.0f} ns  new keys {cold:6.0f} ns  "
                  f"pick+done {pick_done_ns:6.0f} ns  set_endpoints {set_ms:9.2f} ms",
                  file=sys.stderr, flush=True)
        # bare call again between rows: the yardstick is the best seen in this run
        bare_ns = min(bare_ns, time_loop(bare, ctxs, repeats))
    return bare_ns, results


def table(bare_ns: float, results: Results) -> str:
    head = ["strategy", *(f"pick ns @{n:,}" for n in SIZES), "new keys ns @10,000", "pick+done ns @10,000",
            "pick / bare @10,000", *(f"set_endpoints ms @{n:,}" for n in SIZES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row, by_n in results.items():
        big = by_n[10_000]
        ratio = big["pick"] / bare_ns
        misses = []
        if ratio > PICK_TARGET:
            misses.append("pick")
        if big["set_ms"] > SET_TARGET_MS:
            misses.append("set")
        cells = [row + (" ⚠ " + ", ".join(misses) if misses else "")]
        cells += [f"{by_n[n]['pick']:.0f}" if n in by_n else "–" for n in SIZES]
        cells += [f"{big['cold']:.0f}", f"{big['pick_done']:.0f}", f"{ratio:.1f}×"]
        cells += [f"{by_n[n]['set_ms']:.2f}" if n in by_n else "–" for n in SIZES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cpus = len(os.sched_getaffinity(0))
    return f"nproc {cpus}, Python {platform.python_version()}, {platform.machine()}, load average {load}"


def section(bare_ns: float, results: Results, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    slow = [row for row, by_n in results.items() if by_n[10_000]["pick"] / bare_ns > PICK_TARGET]
    slow_text = ", ".join(f"{row} {results[row][10_000]['pick'] / bare_ns:.0f}×" for row in slow) or "none"
    return f"""## Strategies (`bench/strategies.py`)

`{command}` on {when}; {machine()}.

Yardstick: a bare Python function call (one argument, returns None) in the same loop: **{bare_ns:.0f} ns**.
Every pick is `strategy.pick(context)` over 4,096 distinct client addresses (also the hash keys), best of
several repeats, so a hash strategy's key memo is warm; "new keys" gives every pick a key never seen
before (memo misses: hash the key, then bisect the ring or index the table); pick+done adds `on_done`
after each pick. set_endpoints alternates two sets that differ in one endpoint (best of 7). Weights 5/1/1 at
3 endpoints, 1..5 in turn otherwise; the EDF row uses 97 distinct float weights. Targets: pick within
{PICK_TARGET:.0f}× the bare call and set_endpoints within {SET_TARGET_MS:.0f} ms at 10,000 endpoints
(⚠ marks a miss). The machine is shared: figures move by ±30 % between runs.

{table(bare_ns, results)}

Picks over {PICK_TARGET:.0f}× the bare call at 10,000 endpoints: {slow_text}.
- LeastConnections, PowerOfTwoChoices and PeakEWMA are O(1) in n. LeastConnections takes the head of a
  deque bucket in its cached best weight class (lazily deleted integer entries, no ordered-dict moves);
  PowerOfTwoChoices and PeakEWMA draw both candidates from one random number over a ticket table
  (integer weights; an alias table otherwise), keep in-flight counts flat, and PeakEWMA compares two
  decayed loads in log space without reading the clock or calling exp(). With a ticket table, their
  pick runs in C (`_picks`, optional, ~2.5× cheaper than the ~40 bytecodes of the Python pick, which
  stays as the reference and the fallback and decides the rare case where PeakEWMA needs the clock);
  tests check both choose the same endpoints for the same random numbers. The second candidate is drawn
  among the other endpoints' tickets, so a pick never retries. Their
  10,000-endpoint picks cost more than at 100 through cache misses on the larger tables (the figure
  most sensitive to other work on the machine). LeastConnections' pick-only figure at 3 endpoints
  (~1 µs) is this benchmark's artefact: with no completion in-flight counts only grow, and with three
  endpoints the stale queue entries outnumber the endpoints every few picks, so its buckets are
  compacted that often; with completions (pick+done) it costs ~0.65 µs at 3 endpoints as at 100.
- RingHash, SourceIPHash and Maglev answer a repeated key from a memo (a dict lookup). A key never seen
  since the last endpoint change ("new keys") costs 1-2 µs: encoding, CRC-32 and a 64-bit mix in Python
  integers, then a bisect or a table index; a stable hash (the same in every worker) has no cheaper
  pure-Python form.
- WeightedRoundRobin's EDF mode (only with more than 8 distinct weights, e.g. many endpoints in slow
  start) is a heap update, O(log n): 14 levels at 10,000, over integer keys (deadline << bits | index)
  held in one C array (`_picks.EdfHeap`; the Python list heap, the reference and fallback, compares
  int objects scattered in memory and cost ~2.5× as much). Its nginx mode replays a precomputed
  period, O(1).
- Maglev's set_endpoints at 10,000 endpoints: the table has 1,000,003 slots (the smallest prime ≥ 100 ×
  endpoints), about M ln M probes in the paper's loop, ~4-7 s in pure Python and ~0.5 s in NumPy. It is
  filled in C (`_maglev_fill`, optional: the same loop over a bitmap of
  taken slots, then an endgame that ranks the last ~√M free slots instead of walking to them); the
  NumPy and pure-Python builds remain as fallbacks without a compiler and are tested to give the same
  table slot for slot. Each endpoint's preference hashes are kept across changes. The table is a list,
  so a pick costs what it did; it is rebuilt only when the usable set or a weight changes by 10 % or more.
"""


def write_docs(text: str) -> None:
    """Replace only the strategies section of docs/benchmarks.md (other sections are others')."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    if not DOCS.exists():
        DOCS.parent.mkdir(parents=True, exist_ok=True)
        DOCS.write_text(f"# Benchmarks\n\n{block}\n")
        return
    current = DOCS.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOCS.write_text(head + block + tail)
    else:
        DOCS.write_text(current.rstrip("\n") + "\n\n" + block + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.strategies", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (figures noisier)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--only", help="comma list of strategies")
    args = parser.parse_args(argv)
    kinds = [*registered_names(), EDF_ROW]
    if args.only:
        kinds = [k for k in kinds if k in args.only.split(",")]
    repeats, set_calls = (3, 3) if args.quick else (7, 7)
    print("strategy benchmark (stderr: progress; stdout: the table)", file=sys.stderr)
    bare_ns, results = measure(kinds, repeats, set_calls)
    command = "python -m bench.strategies" + (" --quick" if args.quick else "")
    text = section(bare_ns, results, command)
    print(text)
    if not args.no_docs and not args.only:
        write_docs(text)
        print(f"wrote {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
