"""The long fuzz campaign: 10^5+ bad lines at a real daemon, counted.

Starts `hpod serve` on a temporary socket and state folder with one running trial (its token lets
the report methods reach the study), and sends the generators of tests/daemon/fuzz_lines.py
(malformed lines, odd envelopes, every method's odd params, the wire's limits) in batches, on a
fresh connection every ``--reconnect`` batches. Prints the answers by error code, lines/s, the
bytes the daemon's log grew by, RSS and descriptors after a warm-up and at the end, and the
internal errors and tracebacks, which must be 0 (the exit status is 1 otherwise).

    .venv/bin/python bench/fuzz.py [--lines 100000] [--batch 50] [--seed 0]

``HPOD_BENCH_KEEP=1`` keeps the daemon's log and state folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the generators live with the tests

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.daemon import fuzz_lines as fz  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=50, help="lines sent before reading answers")
    ap.add_argument("--reconnect", type=int, default=20, help="batches per connection")
    ap.add_argument("--warmup", type=int, default=2000, help="lines before RSS is first read")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--messages", type=int, default=0, help="the N commonest messages per code")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hpod"))
    target = fz.start_target(root)
    batches = st.lists(fz.lines(target.aim), min_size=args.batch, max_size=args.batch)
    codes: Counter[str] = Counter()
    messages: dict[str, Counter[str]] = {}
    internal: list[dict[str, object]] = []
    state = {"sent": 0, "batches": 0}
    wire = fz.Wire(target.socket)
    marks: dict[str, float] = {}

    def measure(when: str) -> None:
        marks[f"rss_{when}"] = target.rss_kib()
        marks[f"fds_{when}"] = target.fds()
        marks[f"log_{when}"] = target.log_size()
        marks[f"t_{when}"] = time.monotonic()
        marks[f"sent_{when}"] = state["sent"]

    @seed(args.seed)
    @settings(
        max_examples=-(-(args.lines + args.warmup) // args.batch),
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(batches)
    def campaign(lines: list[bytes]) -> None:
        nonlocal wire
        if state["batches"] and state["batches"] % args.reconnect == 0:
            wire.close()  # connections come and go: their descriptors must too
            wire = fz.Wire(target.socket)
        answers = wire.exchange(lines)
        for answer in answers:
            code = fz.code_of(answer)
            codes[code] += 1
            if "error" in answer:
                text = str(answer["error"].get("message", ""))[:70].replace("\n", " ")
                messages.setdefault(code, Counter())[text] += 1
        internal.extend(fz.internal_errors(answers))
        state["sent"] += len(lines)
        state["batches"] += 1
        if "rss_start" not in marks and state["sent"] >= args.warmup:
            measure("start")

    start_log = target.log_size()
    try:
        campaign()
        measure("end")
    finally:
        wire.close()
        alive = target.alive()
        log = target.log_since(start_log)
        rc = target.daemon.stop()
    tracebacks = fz.log_problems(log)

    sent = int(marks["sent_end"] - marks["sent_start"])
    seconds = marks["t_end"] - marks["t_start"]
    total = sum(codes.values())
    print(f"lines sent: {state['sent']} ({args.warmup} of them warm-up), answers: {total}")
    print(f"lines/s (after warm-up): {sent / seconds:.0f} ({sent} lines in {seconds:.1f} s)")
    print("answers by code:")
    for code, n in codes.most_common():
        print(f"  {code:22s} {n:8d}  {n / total:6.1%}")
        if args.messages:
            for text, m in messages.get(code, Counter()).most_common(args.messages):
                print(f"      {m:7d}  {text}")
    log_bytes = int(marks["log_end"] - marks["log_start"])
    print(
        f"daemon log: {len(log.encode())} bytes, {log.count(chr(10))} lines over the whole run "
        f"({log_bytes} bytes after warm-up: {log_bytes / max(1, sent):.2f} bytes a line)"
    )
    rss0, rss1 = int(marks["rss_start"]), int(marks["rss_end"])
    print(f"RSS: {rss0} KiB after warm-up, {rss1} KiB at the end ({rss1 - rss0:+d} KiB)")
    print(f"fds: {int(marks['fds_start'])} after warm-up, {int(marks['fds_end'])} at the end")
    print(f"internal errors: {len(internal)}")
    print(f"tracebacks in the log: {len(tracebacks)}")
    print(f"daemon alive to the end: {alive}, exit status at stop: {rc}")
    for answer in internal[:5]:
        print("  internal:", str(answer)[:300])
    for line in tracebacks[:5]:
        print("  log:", line)
    if os.environ.get("HPOD_BENCH_KEEP"):
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if not internal and not tracebacks and alive and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
