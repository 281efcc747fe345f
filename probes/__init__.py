"""The study app: linear probes on frozen backbones, sweeps over the CLEVR transfer study, ladders
and the demo. It contributes ``probe``, ``sweep``, ``ladder`` and ``demo`` to the ``revtransfer``
command (entry points in pyproject.toml). Names below load on first use, so importing a
submodule (the CLI's) stays light."""
from __future__ import annotations

_EXPORTS = {
    "ProbeResult": "probes.linear", "fit_linear_probe": "probes.linear",
    "ProbeSettings": "probes.probe", "run_probes": "probes.probe",
    "Cell": "probes.sweep", "SweepSpec": "probes.sweep", "run_sweep": "probes.sweep",
    "ResultsTable": "revtransfer.results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")
