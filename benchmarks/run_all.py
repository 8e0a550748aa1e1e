"""Run every benchmark in benchmarks/registry.py and print one table: every figure beside
its target, met or MISSED. Exits 1 if any figure is missed, not reported, or its script is
absent or failed. ``--quick``: each script with its smaller arguments (under 3 minutes in
all on a quiet 2-core machine).

Each script runs in its own process with ``--json PATH`` and reports its figures there
(``_common.Figures``); its own printout goes to the log folder (``--logs``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import registry

HERE = Path(__file__).resolve().parent


def run_one(entry, quick: bool, logs: Path, timeout_s: float) -> tuple[str, dict, float]:
    """(status, figures, seconds) of one script: status "ok", "absent", "failed ...",
    "not run: <why>" (the script said it cannot run here, e.g. no browser)."""
    script = HERE / entry.script
    if not script.exists():
        return "absent", {}, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, str(script), "--json", str(out),
               *(entry.quick_args if quick else ())]
        t = time.perf_counter()
        log = logs / (script.stem + ".log")
        with log.open("w") as f:
            try:
                proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired:
                return f"timed out after {timeout_s:.0f} s", {}, time.perf_counter() - t
        elapsed = time.perf_counter() - t
        if proc.returncode != 0 or not out.exists():
            return f"failed (exit {proc.returncode}, see {log})", {}, elapsed
        report = json.loads(out.read_text())
        if report.get("not_run"):  # the script could not run here: not a pass
            return f"not run: {report['not_run']}", {}, elapsed
        return "ok", report["figures"], elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs of every script")
    parser.add_argument("--only", nargs="*", metavar="SCRIPT",
                        help="only these scripts (e.g. mock_chip.py)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="folder for each script's printout (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="pcmlab-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    entries = [b for b in registry.BENCHMARKS if not args.only or b.script in args.only]
    rows, missed = [], 0
    t_all = time.perf_counter()
    for entry in entries:
        print(f"running {entry.script} ...", file=sys.stderr, flush=True)
        status, values, elapsed = run_one(entry, args.quick, logs, args.timeout)
        for key, target in entry.figures.items():
            if status != "ok":
                verdict, value = status, "—"
            elif key not in values:
                verdict, value = "not reported", "—"
            else:
                v = values[key]
                value = f"{v:.3g}{target.unit_suffix}" if target.unit != "x" else f"{v:.2f}"
                met = target.met(v)
                verdict = "info" if met is None else ("met" if met else "MISSED")
            if verdict not in ("met", "info"):
                missed += 1
            rows.append((entry.script, target.label, value, target.describe(), verdict,
                         f"{elapsed:.0f} s" if key == next(iter(entry.figures)) else ""))
    load = os.getloadavg()
    head = ("benchmark", "figure", "value", "target", "verdict", "time")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    print(f"pcmlab benchmarks{' (--quick)' if args.quick else ''}: {platform.node()}, "
          f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} at the end; {time.perf_counter() - t_all:.0f} s in all")
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print(f"{missed} of {len(rows)} figures missed or not measured; logs in {logs}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
