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
    """timm's own loader, then our registration; everything else is timm's loader's."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _remove_hook()  # timm is in sys.modules now; nothing more to intercept
        importlib.import_module(_MODELS)

    def __getattr__(self, name):  # get_resource_reader, is_package, ...: as timm's loader
        return getattr(self._loader, name)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Finds timm with the other finders and wraps its loader. It stays installed until timm has
    actually been executed: probing (``importlib.util.find_spec("timm")``) must not consume it."""

    _finding = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm" or self._finding:
            return None
        self._finding = True  # the other finders, not this one again
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _RegisterAfterLoad):
            spec.loader = _RegisterAfterLoad(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmImportHook)]


def install() -> None:
    if "timm" in sys.modules:
        importlib.import_module(_MODELS)
    elif not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
