"""Names of the measurement file (schema ``pcmlab/1``): part of the format, read by other
tools without pcmlab. DESIGN.md, "The HDF5 measurement file"."""

from __future__ import annotations

SCHEMA = "pcmlab/1"
SCHEMA_FAMILY, SCHEMA_VERSION = SCHEMA.split("/")

# root attributes
ATTR_SCHEMA = "schema"
ATTR_VERSION = "pcmlab_version"
ATTR_CREATED = "created"
ATTR_CONFIG = "config"
ATTR_DRIVER = "driver"
ATTR_GEOMETRY = "geometry"  # JSON {"rows", "cols", "arrays"} of the chip the run was on
ATTR_INTERRUPTIONS = "interruptions"  # JSON list, one entry per resume or recover
ATTR_RUN_ID = "run_id"  # globally unique, the run's id in the catalog
ATTR_KIND = "kind"  # run, deployment, characterization
ATTR_CATALOG_PENDING = "catalog_pending"  # JSON: the registration the catalog still lacks

TARGETS = "targets"
PROGRAMMING = "programming"
READOUTS = "readouts"
NETWORK = "network"
EVALUATION = "evaluation"
GROUPS = (TARGETS, PROGRAMMING, READOUTS, NETWORK)  # what RunWriter.create lays out

CELL = "cell"
CONDUCTANCE = "conductance_us"
LAYER = "layer"
ITERATIONS = "iterations"
CONVERGED = "converged"
LAST_PULSE = "last_pulse_s"
TRACES = "traces"
SET_PULSES = "set_pulses"  # /programming: SET pulses each cell received (uint32)
RESET_PULSES = "reset_pulses"  # /programming: RESET pulses each cell received (uint32)
TIME = "time_s"
CHIP_TIME = "chip_time_s"
WALL_TIME = "wall_time"

# /programming scalars: datasets, not attributes, because they are written after SWMR is
# on (a SWMR writer may change data, never attributes). NaN end time: not finished.
END_CHIP_TIME = "end_chip_time_s"
INTERRUPTED = "interrupted"
# /readouts: the planned times (s after the end of programming), fixed at creation
SCHEDULE = "schedule_time_s"

# /network attributes (written at creation): the mapping as JSON
ATTR_MAPPING = "mapping"
# /evaluation (written after the run's writer closed)
MEASURED_TIME = "measured_time_s"
MEASURED_ACCURACY = "measured_accuracy"
SIMULATED_TIME = "simulated_time_s"
SIMULATED_MEAN = "simulated_accuracy_mean"
SIMULATED_STD = "simulated_accuracy_std"
SIMULATED_RUNS = "simulated_accuracy_runs"
ATTR_IDEAL = "ideal_accuracy"
ATTR_PERIPHERY = "periphery"
