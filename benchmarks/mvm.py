"""Chip mode speed: a full forward of the digits test set (719 images) through the mock
chip's in-array MVM, in process (MockDriver: the baseline) and over TCP (VisaDriver to the
SCPI mock server in this process) and over the pseudo-terminal (SerialDriver), on the same
chip state. Target: TCP within 3x of in-process. Every tile's batch of input vectors is one
MVM request (one block each way)."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import Figures, add_report_options

from drivers import MockDriver
from drivers.serial import SerialDriver
from drivers.visa import VisaDriver
from mock_chip import FaultRates, MockChip, MockChipConfig
from mock_chip.controller import Controller
from mock_chip.scpi_server import ScpiServer
from mock_chip.serial_server import SerialServer
from pcmlab.analog.chip import ChipBackend
from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.tasks import load_digits, reference_cnn, train_classifier
from protocols.chip_inference import chip_mode, mvm_chip
from protocols.program_verify import program_pairs


def forward_times(ev: AnalogEvaluator, driver, mapping, x: torch.Tensor, n: int
                  ) -> tuple[list[float], int]:
    backend = ChipBackend(mvm_chip(driver), mapping, ev.network)
    out = []
    with chip_mode(ev, backend), torch.no_grad():
        for _ in range(n):
            t = time.perf_counter()
            ev.network(x)
            out.append(time.perf_counter() - t)
    return out, backend.mvm_calls // n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forwards", type=int, default=5, help="timed forwards per path")
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("mvm.py")
    torch.set_num_threads(1)
    data = load_digits()
    model = train_classifier(reference_cnn(0), data.x_train, data.y_train, epochs=10).eval()
    ev = AnalogEvaluator(model, data.x_train, Periphery())
    mapping = ev.mapping(256, 512)
    chip = MockChip(MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=1,
                                   faults=FaultRates.none()))
    cells, target, _ = ev.device_targets(mapping)
    plus, minus = mapping.pair_positions()
    program_pairs(MockDriver(chip), cells, target, plus, minus)
    x = data.x_test
    print(f"digits CNN, {x.shape[0]} test images per forward, {mapping.layers.__len__()} "
          f"analog layers; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    local, calls = forward_times(ev, MockDriver(chip), mapping, x, args.forwards)
    controller = Controller(chip)
    with ScpiServer(controller, "127.0.0.1", 0) as server, \
            VisaDriver(server.resource, timeout_s=60) as remote:
        tcp, _ = forward_times(ev, remote, mapping, x, args.forwards)
    with SerialServer(controller) as sserver, \
            SerialDriver(sserver.path, timeout_s=60, bytes_per_s=50e6) as serial:
        pty, _ = forward_times(ev, serial, mapping, x, max(1, args.forwards - 2))
    tl, tt, ts = statistics.median(local), statistics.median(tcp), statistics.median(pty)
    print(f"  MVM requests per forward         : {calls}")
    print(f"  in process (MockDriver)          : {1e3 * tl:7.1f} ms  (median of {len(local)})")
    print(f"  over TCP (VisaDriver, SCPI)      : {1e3 * tt:7.1f} ms  (median of {len(tcp)})")
    print(f"  over the pseudo-terminal (serial): {1e3 * ts:7.1f} ms  (median of {len(pty)})")
    ratio = tt / tl
    print(f"  TCP / in process                 : {ratio:.2f}  "
          f"({figures.add('tcp_ratio', ratio)})")
    figures.write(args.json)


if __name__ == "__main__":
    main()
