"""The model names astroclass knows, and fine-tuning's layer counts, without importing torch or timm (reading a
grid spec, a report or ``grid status`` needs them, not the models; see :mod:`astroclass.models`)."""

from __future__ import annotations

import difflib
import functools

from astroclass.errors import AstroclassError

PAPER_MODELS = {  # our name → the paper's name in its tables
    "vgg16": "VGG16",
    "inception_v3": "InceptionV3",
    "inception_resnet_v2": "InceptionResNetV2",
    "resnext50_32x4d": "ResNext50",
    "densenet121": "DenseNet121",
}
ALIASES = {"efficientnet_lite0": "tf_efficientnet_lite0"}
"""Names astroclass resolves to another timm model (the package weights fit tf_efficientnet_lite0)."""


def timm_name(name: str) -> str:
    return ALIASES.get(name, name)


def display_name(name: str) -> str:
    return PAPER_MODELS.get(name, name)


HUB_PREFIXES = ("hf_hub:", "hf-hub:", "local-dir:")
"""Models timm builds from a config.json beside their weights: on the Hugging Face hub (``hf_hub:owner/name``, e.g.
Zoobot's galaxy encoders) or in a local folder (``local-dir:/path``)."""


def hub_model(name: str) -> bool:
    """Whether ``name`` names a model by its config.json (hub or folder) rather than a timm architecture."""
    return str(name).startswith(HUB_PREFIXES)


def check_model_name(name: str) -> str:
    """The timm name for ``name``; an AstroclassError listing close matches when unknown. The paper's backbones and
    astroclass' aliases are known without importing timm (seconds, with torch). Hub and folder models
    (:data:`HUB_PREFIXES`) are checked for their form here, and found when they are built."""
    if name in PAPER_MODELS or name in ALIASES:
        return timm_name(name)
    if hub_model(name):
        prefix, _, where = name.partition(":")
        if prefix != "local-dir" and (where.count("/") != 1 or not all(where.split("@")[0].split("/"))):
            raise AstroclassError(f"model {name!r}: a hub model is named {prefix}:OWNER/NAME (e.g. "
                                  f"hf_hub:mwalmsley/zoobot-encoder-convnext_nano)")
        if prefix == "local-dir" and not where:
            raise AstroclassError(f"model {name!r}: a folder model is named local-dir:PATH (a folder holding "
                                  f"config.json and the weights)")
        return name
    import timm

    tname = timm_name(name)
    if tname in timm.list_models():
        return tname
    close = difflib.get_close_matches(name, list(PAPER_MODELS) + list(ALIASES) + timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise AstroclassError(f"unknown model {name!r}{hint} (any timm model name works; see timm.list_models())")


@functools.lru_cache(maxsize=1)
def keras_tails() -> dict[str, dict]:
    """The shipped Keras layer tails of the paper backbones (see :mod:`astroclass.models`' docstring)."""
    from importlib import resources

    import yaml

    return yaml.safe_load(resources.files("astroclass").joinpath("reference/keras_tails.yaml").read_text())


def resolve_unfreeze(model: str, unfreeze: str) -> str:
    """``unfreeze`` as "keras:N", "params:N" or "all" for ``model`` (a bare N: keras where a Keras tail ships)."""
    if str(unfreeze) == "all":
        return "all"
    kind, _, count = str(unfreeze).rpartition(":")
    tail = keras_tails().get(timm_name(model))
    if not kind:
        kind = "keras" if tail else "params"
    if kind == "keras":
        if not tail:
            raise AstroclassError(f"unfreeze keras:{count}: Keras layer lists ship for the paper's backbones "
                                  f"({', '.join(keras_tails())}), not {model!r}; use params:{count}")
        if int(count) > len(tail["tail"]):
            raise AstroclassError(f"unfreeze keras:{count}: the shipped Keras list of {model} covers its last "
                                  f"{len(tail['tail'])} layers; use params:N for deeper fine-tuning")
    return f"{kind}:{int(count)}"
