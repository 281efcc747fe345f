"""Linear probes on frozen backbones, sweeps over the CLEVR transfer study, the results table."""
from .linear import ProbeResult, fit_linear_probe
from .probe import ProbeSettings, run_probes
from .results import ResultsTable
from .sweep import Cell, SweepSpec, run_sweep

__all__ = ["Cell", "ProbeResult", "ProbeSettings", "ResultsTable", "SweepSpec", "fit_linear_probe",
           "run_probes", "run_sweep"]
