"""Every benchmark and every figure it reports, with its target: the one home of the
targets. ``run_all.py`` runs the scripts listed here and prints one table; each script
prints its own verdicts from here too. Adding a benchmark is adding an entry.

A figure with ``bound=None`` is reported for information (a floor, a count) and is never
missed. A script listed here that does not exist is reported as absent, which fails the
table: a benchmark that did not run is not a benchmark that passed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One figure: what it is, its unit, and the bound it must meet (``op`` "<=" or ">=")."""

    label: str
    unit: str = "x"
    op: str = "<="
    bound: float | None = None

    def met(self, value: float) -> bool | None:
        """True/False against the bound; None for a figure without one."""
        if self.bound is None:
            return None
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def describe(self) -> str:
        return "—" if self.bound is None else f"{self.op} {self.bound:g}{self.unit_suffix}"

    @property
    def unit_suffix(self) -> str:
        return "" if self.unit in ("", "x") else f" {self.unit}"


@dataclass(frozen=True)
class Benchmark:
    """A script in benchmarks/, its arguments for ``run_all.py --quick``, its figures."""

    script: str
    figures: dict[str, Target]
    quick_args: tuple[str, ...] = ()


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("mock_chip.py", {
        "ratio": Target("mock chip, 20 x (SET + read) of 512 x 2048, vs bare numpy", "x",
                        "<=", 3.0),
        "ratio_cpu": Target("  the same, CPU time", "x"),
        "timed_ratio": Target("  with operation times on the virtual clock (1 ms per call "
                              "+ 10 ns per cell)", "x"),
    }, ("--rounds", "10", "--repeats", "3")),
    Benchmark("program_verify.py", {
        "ratio": Target("program-and-verify of 512 x 2048, vs the numpy reference", "x",
                        "<=", 3.0),
        "ratio_cpu": Target("  the same, CPU time", "x"),
        "wall_s": Target("  its wall time", "s", "<=", 3.0),
        "converged_pct": Target("  converged, non-zero cells", "%", ">=", 99.0),
    }, ("--repeats", "2")),
    Benchmark("evaluator.py", {
        "digits_ratio": Target("simulated mode, digits CNN, vs plain torch", "x", "<=", 1.2),
        "digits_floor": Target("  floor: the same forwards, noise drawn ahead", "x"),
        "resnet_ratio": Target("simulated mode, ResNet 3x32x32, vs plain torch", "x",
                               "<=", 1.3),
        "resnet_floor": Target("  floor: the same forwards, noise drawn ahead", "x"),
    }, ("--runs", "5", "--repeats", "2", "--images", "16")),
    Benchmark("training.py", {
        "ratio": Target("hardware-aware training, ResNet epoch, vs plain torch", "x", "<=",
                        1.5),
    }, ("--images", "96", "--repeats", "2")),
    Benchmark("store.py", {
        "ratio": Target("RunWriter appends, share of bare h5py speed", "x", ">=", 0.5),
    }, ("--readouts", "10", "--repeats", "2")),
    Benchmark("transports.py", {
        "visa_read_ratio": Target("VisaDriver full-array read vs bare pyvisa", "x", "<=", 1.3),
        "visa_ping_ratio": Target("VisaDriver small round trip vs bare pyvisa", "x", "<=",
                                  1.5),
        "serial_noise_s": Target("serial read after 16 MiB of line noise", "s", "<=", 2.0),
    }, ("--reads", "2", "--pings", "40")),
    Benchmark("mvm.py", {
        "tcp_ratio": Target("chip mode, digits forward over TCP vs in process", "x", "<=",
                            3.0),
    }, ("--forwards", "2")),
    Benchmark("sweep.py", {
        "speedup": Target("sweep, 2 local workers over 1", "x", ">=", 1.6),
        "overhead_pct": Target("sweep engine overhead beside the bare tasks", "%", "<=", 10.0),
    }, ("--quick", "--pairs", "1")),
    Benchmark("drift_compensation.py", {
        "device_sum_spread_pct": Target("drift compensation at 1 year, spread of alpha "
                                        "(device_sum, largest layer)", "%"),
        "column_sum_spread_pct": Target("  the same, column_sum", "%"),
    }, ("--runs", "8")),
    # issue 23 item 4 (lazy open_run): benchmarks/analysis.py reports these
    Benchmark("analysis.py", {
        "open_s": Target("open_run of 1 M cells x 1,000 readouts", "s", "<=", 1.0),
        "peak_mib": Target("  its peak memory", "MiB", "<=", 300.0),
        "median_ratio": Target("  one level's median over time, vs bare h5py + numpy", "x",
                               "<=", 2.0),
        "level_drift_ratio": Target("  level_drift, vs numpy", "x", "<=", 2.0),
    }, ("--quick", "--repeats", "1")),
    Benchmark("catalog.py", {
        "list_s": Target("catalog, list every run on SQLite (10,000; --quick 500)", "s",
                         "<=", 0.5),
        "register_ms": Target("  one registration (register + finish)", "ms"),
        "list_ratio": Target("  listing vs a plain SELECT", "x"),
        "filter_ratio": Target("  filtering (kind + metadata) vs a plain SELECT", "x"),
    }, ("--runs", "500")),
    # needs Chromium and chromedriver: without them its rows say "not run: ..." (missed)
    Benchmark("dashboard.py", {
        "render_median_s": Target("dashboard, first full render of a 512 x 2048 run page",
                                  "s", "<=", 2.0),
        "flush_to_page_median_s": Target("  a readout's flush to the open page", "s", "<=",
                                         2.0),
    }, ("--loads", "1", "--readouts", "1")),
    # issue 23 item 3 (against aihwkit): benchmarks/vs_aihwkit.py reports these
    Benchmark("vs_aihwkit.py", {
        "digits_speedup": Target("digits CNN, aihwkit time / pcmlab time", "x", ">=", 10.0),
        "residual_speedup": Target("residual CNN, aihwkit time / pcmlab time", "x", ">=",
                                   20.0),
    }, ("--runs", "3")),
)


def benchmark(script: str) -> Benchmark:
    """The registry entry of ``script`` (its file name in benchmarks/)."""
    for b in BENCHMARKS:
        if b.script == script:
            return b
    raise KeyError(f"{script} is not in benchmarks/registry.py: add its entry there")
