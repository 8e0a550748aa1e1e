"""Train each example network on the digits, deploy it on a mock chip from Python, and
print its accuracy ideal / simulated / measured at 25 s and after a year.

    python examples/deploy_networks.py [--networks resnet lstm] [--out DIR]

The same from the command line, for one network:

    pcmlab train --model examples.networks:lstm --method noise -o lstm.pt
    pcmlab deploy examples.networks:lstm --weights lstm.pt -o lstm.h5
    pcmlab evaluate lstm.h5 --model examples.networks:lstm --weights lstm.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # "examples" importable

from drivers import MockDriver
from examples.networks import FACTORIES
from mock_chip import FaultRates, MockChipConfig
from pcmlab.evaluator import AnalogEvaluator
from pcmlab.nn_model import load_model, save_weights_file
from pcmlab.tasks import load_digits, train_classifier
from protocols.deploy import DeployConfig, deploy_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=sorted(FACTORIES),
                        choices=sorted(FACTORIES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="pcmlab-networks-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'network':<12} {'weights':>8} {'ideal %':>8} {'sim 25 s':>9} {'meas 25 s':>9} "
          f"{'sim 1 y':>8} {'meas 1 y':>8}")
    for name in args.networks:
        factory = f"examples.networks:{name}"
        model = FACTORIES[name]()
        data = load_digits(input_shape=model.input_shape)
        model = train_classifier(model, data.x_train, data.y_train, epochs=args.epochs,
                                 weight_noise=0.05)
        weights = save_weights_file(model, out / f"{name}.pt", factory=factory,
                                    input_shape=model.input_shape)
        loaded = load_model(factory, weights)  # what 'pcmlab deploy' does with the file
        evaluator = AnalogEvaluator(loaded.model, data.x_train)
        chip = MockDriver(config=MockChipConfig(geometry={"rows": 256, "cols": 512}, seed=1,
                                                faults=FaultRates.none()))
        with chip:
            r = deploy_network(chip, evaluator, data.x_test, data.y_test, out / f"{name}.h5",
                               DeployConfig(simulated_runs=5), overwrite=True)
        i25 = int(abs(r.time_s - 25.0).argmin())
        n = sum(lm.n_weights for lm in r.mapping.layers)
        print(f"{name:<12} {n:>8} {100 * r.ideal_accuracy:>8.2f} "
              f"{100 * r.simulated.mean[i25]:>9.2f} {100 * r.measured_accuracy[i25]:>9.2f} "
              f"{100 * r.simulated.mean[-1]:>8.2f} {100 * r.measured_accuracy[-1]:>8.2f}")
    print(f"files in {out}")


if __name__ == "__main__":
    main()
