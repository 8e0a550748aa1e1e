"""Which drift-compensation estimator: per-run spread of the factor alpha at one year and
the simulated accuracy with each, on the digits CNN (25 runs, the statistical model).

"device_sum": summed conductance of all the layer's devices (an all-ones input on every
device); "column_sum": summed |column response| to an all-ones input through the pairs.
The relative spread (std / mean over runs) of alpha is the noise the estimator adds.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import Figures, add_report_options

from pcmlab.evaluator import AnalogEvaluator, Periphery
from pcmlab.pcm_model import YEAR_S, PCMModel, global_drift_compensation
from pcmlab.tasks import load_digits, reference_cnn, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=25)
    add_report_options(parser)
    args = parser.parse_args()
    figures = Figures("drift_compensation.py")
    torch.set_num_threads(1)
    data = load_digits()
    model = train_classifier(reference_cnn(), data.x_train, data.y_train, epochs=20,
                             weight_noise=0.05).eval()
    pcm, runs = PCMModel(), args.runs
    print(f"digits CNN, {runs} runs, alpha at 1 year: relative spread over runs per layer; "
          "simulated accuracy at 1 year")
    for estimator in ("column_sum", "device_sum"):
        ev = AnalogEvaluator(model, data.x_train, Periphery(), gdc_estimator=estimator)
        mapping = ev.mapping(256, 512)
        _, g_t, _ = ev.device_targets(mapping)
        rng = np.random.default_rng(0)
        alphas = []
        for _ in range(runs):
            g_prog = pcm.program(g_t.astype(np.float64), rng)
            nu = pcm.sample_nu(g_t, rng)
            reads = []
            for t in (pcm.calibration.t0_s, YEAR_S):
                g = pcm.drift(g_prog, nu, t)
                g = np.maximum(g + pcm.read_noise_sigma_us(g, g_t, t)
                               * rng.standard_normal(g.shape), 0)
                reads.append(ev._gdc_torch(mapping, torch.from_numpy(g.astype(np.float32))))
            alphas.append([global_drift_compensation(r, c)
                           for r, c in zip(reads[0], reads[1], strict=True)])
        a = np.array(alphas)
        spread = 100 * a.std(axis=0) / a.mean(axis=0)
        sim = ev.simulate(data.x_test, data.y_test, mapping, [YEAR_S], runs,
                          np.random.default_rng(1))
        print(f"  {estimator:<10}: alpha spread % per layer "
              f"{', '.join(f'{s:.2f}' for s in spread)}; accuracy at 1 year "
              f"{100 * sim.mean[0]:.2f} ± {100 * sim.std[0]:.2f} %")
        figures.add(f"{estimator}_spread_pct", float(spread.max()))
    figures.write(args.json)


if __name__ == "__main__":
    main()
