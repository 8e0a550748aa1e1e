"""Transport speed, all against one mock chip (512 x 2048) served in this process:

- full-array read through VisaDriver vs bare pyvisa ``query_binary_values`` (target <= 1.3)
- median round trip of a small command (the chip clock) vs bare pyvisa (target <= 1.5)
- full-array read throughput of SerialDriver over the pseudo-terminal
- after 1, 4 and 16 MiB of line noise sent to the serial device: the time until the next
  small read is answered, beside the same read on a clean link (bar: within 2 s)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyvisa
from _common import Figures, add_report_options

from drivers.serial import SerialDriver
from drivers.visa import VisaDriver
from mock_chip import MockChip
from mock_chip.clock import RealtimeClock
from mock_chip.controller import Controller
from mock_chip.scpi_server import ScpiServer
from mock_chip.serial_server import SerialServer


def times_of(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--reads", type=int, default=5, help="reads per block (3 blocks)")
    parser.add_argument("--pings", type=int, default=100, help="pings per block")
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("transports.py")
    chip = MockChip(geometry={"rows": args.rows, "cols": args.cols}, seed=0,
                    clock=RealtimeClock())
    controller = Controller(chip)
    n = chip.n_cells
    mb = 4 * n / 1e6
    t_bare: list[float] = []
    t_drv: list[float] = []
    p_bare: list[float] = []
    p_drv: list[float] = []
    with ScpiServer(controller, "127.0.0.1", 0) as server:
        rm = pyvisa.ResourceManager("@py")
        # The mock serves one connection at a time: alternate blocks of bare pyvisa and
        # VisaDriver, each on its own connection (connecting is not timed).
        for _ in range(3):
            bare = rm.open_resource(server.resource, read_termination="\n",
                                    write_termination="\n", timeout=30_000)
            bare.chunk_size = 1 << 20

            def bare_read(bare=bare) -> None:
                v = bare.query_binary_values("READ:ARR?", datatype="f",
                                             container=np.ndarray)
                assert v.size == n

            t_bare += times_of(bare_read, args.reads)
            p_bare += times_of(lambda bare=bare: bare.query("SYST:TIME?"), args.pings)
            bare.close()
            driver = VisaDriver(server.resource, timeout_s=30, resource_manager=rm)
            t_drv += times_of(lambda driver=driver: driver.read(), args.reads)
            p_drv += times_of(driver.clock.now, args.pings)
            driver.close()
        rm.close()
    tb, td = statistics.median(t_bare), statistics.median(t_drv)
    pb, pd = statistics.median(p_bare), statistics.median(p_drv)
    with SerialServer(controller) as sserver:
        sdrv = SerialDriver(sserver.path, timeout_s=5, bytes_per_s=1e6)
        t_ser = statistics.median(times_of(lambda: sdrv.read(), 5))
        t_clean = statistics.median(times_of(lambda: sdrv.read(np.arange(16)), 20))
        rng = np.random.default_rng(0)
        t_noise = {}
        for mib in (1, 4, 16):
            sdrv._ser.write(rng.integers(0, 256, mib << 20, dtype=np.uint8).tobytes())
            sdrv._ser.flush()  # the noise has left the host; time until the next answer
            t_noise[mib] = times_of(lambda: sdrv.read(np.arange(16)), 1)[0]
        retransmissions = sdrv.retransmissions
        sdrv.close()
    print(f"full-array read, {args.rows} x {args.cols} float32 = {mb:.1f} MB "
          f"(median of {len(t_bare)})")
    print(f"  bare pyvisa query_binary_values : {tb * 1e3:7.1f} ms  {mb / tb:6.0f} MB/s")
    print(f"  VisaDriver.read()               : {td * 1e3:7.1f} ms  {mb / td:6.0f} MB/s")
    print(f"  ratio                           : {td / tb:.2f}  "
          f"({figures.add('visa_read_ratio', td / tb)})")
    print(f"small command round trip, SYST:TIME? (median of {len(p_bare)})")
    print(f"  bare pyvisa query               : {pb * 1e6:7.0f} µs")
    print(f"  VisaDriver.clock.now()          : {pd * 1e6:7.0f} µs")
    print(f"  ratio                           : {pd / pb:.2f}  "
          f"({figures.add('visa_ping_ratio', pd / pb)})")
    print("full-array read through SerialDriver over the pseudo-terminal (median of 5)")
    print(f"  SerialDriver.read()             : {t_ser * 1e3:7.1f} ms  {mb / t_ser:6.0f} MB/s")
    print("16-cell serial read after line noise (bar: answered within 2 s)")
    print(f"  clean link (median of 20)       : {t_clean * 1e3:7.1f} ms")
    for mib, t in t_noise.items():
        print(f"  after {mib:2d} MiB of noise            : {t * 1e3:7.1f} ms  "
              f"({'met' if t <= 2 else 'MISSED'})")
    print(f"  retransmissions                 : {retransmissions}")
    worst = max(t_noise.values())
    print(f"  slowest after noise             : {worst:.2f} s "
          f"({figures.add('serial_noise_s', worst)})")
    figures.write(args.json)


if __name__ == "__main__":
    main()
