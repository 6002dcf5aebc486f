"""Throughput of `astroclass predict` on this machine (images/s, files → CSV): fp32 (`--amp off`) without and
with 8-fold TTA, and the default (`--amp auto`: bf16 autocast on CPUs with AMX, fp32 elsewhere).

Trains a small model for one epoch on the real ARIES cutouts, then predicts all 3388 JPEG files.
Usage: python benchmarks/bench_predict.py [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from astroclass.predict import load, predict_to_csv  # noqa: E402
from astroclass.training import RunConfig, train  # noqa: E402
from common import DATA, import_real, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    cat = DATA / "aries_star_galaxy" / "labels.csv"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        h5 = import_real("aries_star_galaxy", tmp)
        run = Path(tmp) / "run"
        train(RunConfig(dataset=str(h5), model=args.model, setup="pretrained" if args.model == "efficientnet_lite0"
                        else "scratch", head_epochs=1, epochs=2), run, progress=False)
        clf = load(run / "checkpoint.pt", "cpu", amp="off")
        from astroclass.data import PreparedDataset

        with PreparedDataset(h5) as ds:
            x, y = ds.tensors("test")
        acc = {tta: float((clf.predict_tensor(x, tta=tta).argmax(1) == y.numpy()).mean()) for tta in (False, True)}
        out["test_accuracy"] = {"plain": acc[False], "tta": acc[True]}
        print(f"test accuracy on the ARIES test split ({len(y)} images): plain {acc[False]:.4f}, "
              f"8-fold TTA {acc[True]:.4f} ({acc[True] - acc[False]:+.4f})")
        for tta in (False, True):
            res = predict_to_csv(clf, [cat], Path(tmp) / f"p{tta}.csv", tta=tta, progress=False)
            out["tta_images_per_s" if tta else "plain_images_per_s"] = res["images_per_s"]
            print(f"predict {res['ok']} JPEG files, tta={tta}: {res['images_per_s']:.0f} images/s", flush=True)
        auto = load(run / "checkpoint.pt", "cpu")  # the default: --amp auto
        out["auto_is_bf16"] = auto.amp
        res = predict_to_csv(auto, [cat], Path(tmp) / "pauto.csv", progress=False)
        out["auto_images_per_s"] = res["images_per_s"]
        out["test_accuracy"]["auto"] = float((auto.predict_tensor(x).argmax(1) == y.numpy()).mean())
        print(f"predict {res['ok']} JPEG files, --amp auto ({'bf16' if auto.amp else 'fp32'}): "
              f"{res['images_per_s']:.0f} images/s; test accuracy {out['test_accuracy']['auto']:.4f}", flush=True)
    print(f"TTA costs {out['plain_images_per_s'] / out['tta_images_per_s']:.1f}x the time of a plain pass; the default "
          f"runs {out['auto_images_per_s'] / out['plain_images_per_s']:.2f}x the fp32 rate")
    print(f"saved {save('predict_cpu', {'model': args.model, **out})}")


if __name__ == "__main__":
    main()
