"""Register our models in timm's registry as soon as timm is imported, without importing torch
when ``revtransfer`` is imported.

``import revtransfer`` must make ``timm.create_model("revvit_micro")`` work, yet the CLI (which
imports the package) must start fast for commands that never touch torch (``revtransfer gen``).
Calling ``timm.create_model`` requires importing timm, so registering right after timm's own import
(a post-import hook) gives both.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_MODELS = "revtransfer.models"


class _RegisterAfterLoad(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        importlib.import_module(_MODELS)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; and lets find_spec below use the real finders
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoad(spec.loader)
        return spec


def install() -> None:
    if "timm" in sys.modules:
        importlib.import_module(_MODELS)
    elif not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
