"""astroclass: classify astronomical objects in survey images with deep ConvNets.

The data flow is one direction, one artefact per step: sources → prepared dataset (HDF5) →
training run (checkpoint + metrics) → comparison grid (SQLite store) → report; and a trained
checkpoint → predictions for new images.
"""

import warnings

__version__ = "0.1.0"

# huggingface_hub (through timm) imports tqdm.auto, which in a notebook without ipywidgets warns on import; astroclass
# draws no widget (its progress is plain lines there), so the warning says nothing about astroclass' output
warnings.filterwarnings("ignore", message="IProgress not found")


def load(checkpoint, device: str = "auto", amp: str = "auto"):
    """Load a trained checkpoint for prediction: ``astroclass.load("run/checkpoint.pt").predict(images)``."""
    from astroclass.predict import load as _load

    return _load(checkpoint, device, amp)


def __getattr__(name: str):
    """The notebook API (:mod:`astroclass.api`), imported on first use: ``astroclass.Dataset``,
    ``astroclass.fit``, ``astroclass.Run``."""
    if name in ("Dataset", "Run", "fit"):
        from astroclass import api

        return getattr(api, name)
    raise AttributeError(f"module 'astroclass' has no attribute {name!r}")
