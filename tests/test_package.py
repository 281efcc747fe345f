"""Package-level contracts: timm registration on import, light import for the CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_import_revtransfer_then_timm_create_model():
    assert _run("import revtransfer, timm; print(type(timm.create_model('revvit_micro')).__name__)") == "RevViT"


def test_timm_imported_first_still_registers():
    assert _run("import timm; import revtransfer; print(timm.is_model('revvit_base'))") == "True"


@pytest.mark.parametrize("probe", [
    "import importlib.util; importlib.util.find_spec('timm')",
    "import importlib.util; importlib.util.find_spec('timm'); importlib.util.find_spec('timm.models')",
    "import pkgutil; pkgutil.find_loader('timm') if hasattr(pkgutil, 'find_loader') else None",
])
def test_probing_for_timm_does_not_consume_the_registration(probe):
    code = f"import revtransfer; {probe}; import timm; print(type(timm.create_model('revvit_micro')).__name__)"
    assert _run(code) == "RevViT"


def test_timm_resources_still_resolve_through_the_hook():
    assert _run("import revtransfer, timm, importlib.resources; print(importlib.resources.files('timm').is_dir())") == "True"


def test_import_revtransfer_does_not_import_torch():
    assert _run("import sys, revtransfer; print('torch' in sys.modules)") == "False"


def test_package_level_factory():
    assert _run("import revtransfer; print(revtransfer.create_model('vit_micro').num_features)") == "256"
    with pytest.raises(subprocess.CalledProcessError):
        _run("import revtransfer; revtransfer.no_such_thing")
