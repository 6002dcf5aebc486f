"""Write ``src/astroclass/reference/keras_tails.yaml``: the last layers of each paper backbone as Keras
Applications builds it, and the timm parameters each corresponds to.

The paper fine-tunes "the last 7 layers of the convolutional part": ``base_model.layers[-7:]`` in Keras,
which counts every layer object (activations, pooling, padding and concatenations included) in Keras'
layer order: by depth from the output, then by traversal order (the rule of ``Network`` since Keras 2,
kept by Keras 3). This script needs TensorFlow/Keras (not an astroclass dependency):

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu pyyaml
    /tmp/tf/bin/python tools/keras_tails.py

VGG16, InceptionV3, InceptionResNetV2 and DenseNet121 come from ``keras.applications`` (``weights=None,
include_top=False``, 76x76x3 input). ResNeXt50 is not in Keras 3: its tail is written out below from
keras-applications 1.0.8 ``resnet_common.py`` (``block3``), whose blocks end in a chain, so depth order is
the code order. Keras names auto-numbered layers per session (``conv2d_93``); Keras 2.2 counted from 1, so
the paper's session named the same layer ``conv2d_94``; the names are for reading, the order is what counts.
keras-applications 1.0.8 (its last release) builds ResNeXt's grouped convolution as a depthwise convolution
and a Lambda summing each group's input channels (between two Reshapes): a grouped convolution
(``RESNEXT_NOTE``; the model itself, run by Keras 3, is compared with timm's in tests/test_models.py).

Each Keras layer maps to the timm parameters holding its trainable weights (``[]`` for layers without
any). Keras' BatchNormalization with ``scale=False`` (InceptionV3, InceptionResNetV2) trains only beta:
the timm layer's ``bias``. ResNeXt's ``_2_conv`` (depthwise, the same weights in another order) maps to
timm's grouped ``conv2``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

TAIL = 20
RESNEXT_NOTE = ("keras-applications 1.0.8 builds each block's grouped 3x3 convolution as a depthwise convolution "
                '(_2_conv, multiplier c = width / 32) and a Lambda (_2_reduce, between two Reshapes) that sums, '
                "in each group, the outputs of the group's c input channels: a grouped convolution, the one "
                "timm's conv2 computes with the same weights reordered (tests/test_models.py runs the 1.0.8 model"
                " in Keras 3 against timm's). Its later, unreleased code replaced the Reshape, Lambda and Reshape"
                ' by one constant Conv2D, _2_gconv (trainable=False). keras:7 trains the same weights with '
                'either: _2_bn, _3_conv and _3_bn of the last block.')
OUT = Path(__file__).resolve().parents[1] / "src/astroclass/reference/keras_tails.yaml"


def keras_tails() -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import applications as A

    out = {"keras_version": keras.__version__}
    for name, fn in (("vgg16", A.VGG16), ("inception_v3", A.InceptionV3),
                     ("inception_resnet_v2", A.InceptionResNetV2), ("densenet121", A.DenseNet121)):
        keras.backend.clear_session()
        m = fn(weights=None, include_top=False, input_shape=(76, 76, 3))
        body = [lay for lay in m.layers if type(lay).__name__ != "InputLayer"]
        out[name] = (len(body), [(lay.name, type(lay).__name__,
                                  [[w.name, list(w.shape)] for w in lay.trainable_weights]) for lay in body[-TAIL:]])
    return out


def resnext50_tail() -> tuple[int, list]:
    """conv5_block2 and conv5_block3 of keras-applications 1.0.8's ResNeXt50 (filters 1024, groups 32, c = 32).

    1.0.8, the last release (the one Keras 2.2 and 2.3 load), builds each block's 3x3 stage as a DepthwiseConv2D
    (multiplier c), a Reshape to (groups, c, c), a Lambda ``_2_reduce`` summing over each group's c input channels
    (``x[:, :, :, :, i]``) and a Reshape back: three layers without weights, which with the DepthwiseConv2D
    compute a grouped convolution. (The repository's later, unreleased code replaced the three by one constant
    Conv2D, ``_2_gconv``.) Reshape layers are auto-named; Keras 2.2 numbered them from 1, two per block."""
    def block(b: str, cin: int, k: int) -> list:
        return [(f"{b}_1_conv", "Conv2D", [["kernel", [1, 1, cin, 1024]]]),
                (f"{b}_1_bn", "BatchNormalization", [["gamma", [1024]], ["beta", [1024]]]),
                (f"{b}_1_relu", "Activation", []), (f"{b}_2_pad", "ZeroPadding2D", []),
                (f"{b}_2_conv", "DepthwiseConv2D", [["depthwise_kernel", [3, 3, 1024, 32]]]),
                (f"reshape_{2 * k - 1}", "Reshape", []), (f"{b}_2_reduce", "Lambda", []),
                (f"reshape_{2 * k}", "Reshape", []),
                (f"{b}_2_bn", "BatchNormalization", [["gamma", [1024]], ["beta", [1024]]]),
                (f"{b}_2_relu", "Activation", []),
                (f"{b}_3_conv", "Conv2D", [["kernel", [1, 1, 1024, 2048]]]),
                (f"{b}_3_bn", "BatchNormalization", [["gamma", [2048]], ["beta", [2048]]]),
                (f"{b}_add", "Add", []), (f"{b}_out", "Activation", [])]
    layers = block("conv5_block2", 2048, 15) + block("conv5_block3", 2048, 16)
    # the whole model: stem (conv1_pad, conv1_conv, conv1_bn, conv1_relu, pool1_pad, pool1_pool) + 16 blocks
    # of 14 layers + 2 shortcut layers (conv, bn) in the first block of each of the 4 stages
    return 6 + 16 * 14 + 4 * 2, layers[-TAIL:]


def timm_params(model: str, name: str, kind: str, weights: list) -> list[str]:
    """The timm parameter names of one Keras layer's trainable weights."""
    if not weights:
        return []
    bn = kind == "BatchNormalization"
    bn_params = ["weight", "bias"] if any(w[0] == "gamma" for w in weights) else ["bias"]
    if model == "vgg16":
        block, conv = map(int, re.fullmatch(r"block(\d)_conv(\d)", name).groups())
        index = {1: 0, 2: 5, 3: 10, 4: 17, 5: 24}[block] + 2 * (conv - 1)
        return [f"features.{index}.weight", f"features.{index}.bias"]
    if model == "densenet121":
        if name == "bn":
            return ["features.norm5.weight", "features.norm5.bias"]
        n, part = re.fullmatch(r"conv5_block(\d+)_(\d_\w+)", name).groups()
        mod = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}[part]
        prefix = f"features.denseblock4.denselayer{n}.{mod}"
        return [f"{prefix}.{p}" for p in bn_params] if bn else [f"{prefix}.weight"]
    if model == "resnext50_32x4d":
        b, part = re.fullmatch(r"conv5_block(\d)_(\d_\w+)", name).groups()
        mod = {"1_conv": "conv1", "1_bn": "bn1", "2_conv": "conv2", "2_bn": "bn2", "3_conv": "conv3",
               "3_bn": "bn3"}[part]
        prefix = f"layer4.{int(b) - 1}.{mod}"
        return [f"{prefix}.{p}" for p in bn_params] if bn else [f"{prefix}.weight"]
    if model == "inception_v3":  # mixed10 = Mixed_7c: conv2d_85 ... conv2d_93 in the order of its code
        i = int(re.fullmatch(r"(?:conv2d|batch_normalization)_(\d+)", name).group(1))
        branch = {85: "branch1x1", 86: "branch3x3_1", 87: "branch3x3_2a", 88: "branch3x3_2b", 89: "branch3x3dbl_1",
                  90: "branch3x3dbl_2", 91: "branch3x3dbl_3a", 92: "branch3x3dbl_3b", 93: "branch_pool"}[i]
        return [f"Mixed_7c.{branch}.bn.{p}" for p in bn_params] if bn else [f"Mixed_7c.{branch}.conv.weight"]
    if model == "inception_resnet_v2":  # block8_10 = timm's block8; conv_7b = conv2d_7b
        if name == "block8_10_conv":
            return ["block8.conv2d.weight", "block8.conv2d.bias"]
        if name.startswith("conv_7b"):
            return [f"conv2d_7b.bn.{p}" for p in bn_params] if bn else ["conv2d_7b.conv.weight"]
        i = int(re.fullmatch(r"(?:conv2d|batch_normalization)_(\d+)", name).group(1))
        branch = {199: "branch0", 200: "branch1.0", 201: "branch1.1", 202: "branch1.2"}[i]
        return [f"block8.{branch}.bn.{p}" for p in bn_params] if bn else [f"block8.{branch}.conv.weight"]
    raise KeyError(model)


def main() -> None:
    tails = keras_tails()
    version = tails.pop("keras_version")
    tails["resnext50_32x4d"] = resnext50_tail()
    doc = {}
    for model in ("vgg16", "inception_v3", "inception_resnet_v2", "resnext50_32x4d", "densenet121"):
        n, tail = tails[model]
        source = ("keras-applications 1.0.8 resnet_common.py (ResNeXt50, block3)" if model == "resnext50_32x4d"
                  else f"keras.applications (Keras {version})")
        note = {"note": RESNEXT_NOTE} if model == "resnext50_32x4d" else {}
        doc[model] = {"source": source, "keras_layers": n, **note,
                      "tail": [{"keras": name, "type": kind, "weights": {w[0]: w[1] for w in weights},
                                "timm": timm_params(model, name, kind, weights)} for name, kind, weights in tail]}
    lines = ["# The last layers of each paper backbone as Keras Applications builds it (include_top=False), in",
             "# Keras' layer order, each with its trainable weights' shapes and the timm parameters holding them.",
             "# `unfreeze: keras:N` trains the timm parameters of the last N entries. Generated by",
             "# tools/keras_tails.py (see its docstring for the sources); do not edit by hand."]
    for model, d in doc.items():
        lines += [f"{model}:", f"  source: {d['source']}", f"  keras_layers: {d['keras_layers']}"]
        if "note" in d:
            lines.append(f"  note: {yaml.safe_dump(d['note'], width=1000).strip().removesuffix(chr(10) + '...')}")
        lines.append("  tail:")
        lines += [f"  - {yaml.safe_dump(e, default_flow_style=True, sort_keys=False, width=1000).strip()}"
                  for e in d["tail"]]
    OUT.write_text("\n".join(lines) + "\n")
    assert yaml.safe_load(OUT.read_text()) == doc
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
