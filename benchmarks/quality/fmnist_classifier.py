"""How the Fashion-MNIST feature classifier shipped with ilct was made (src/ilct/metrics/fmnist_classifier.*).

`ilct eval --features fmnist`, the demo's quality step and `train.fid_every` take their FID features from a
fixed classifier, not one trained on each machine: trained here, a classifier with the same seed gave other
weights on another CPU (another fingerprint), so FIDs from two machines were not in the same features.

    python benchmarks/quality/fmnist_classifier.py --data-dir /usr/share/datasets/fashion-mnist   # ~10 CPU minutes
    python benchmarks/quality/fmnist_classifier.py --data-dir ... --from DIR   # round a trained one, no training

It trains `train_fashion_classifier` (6 epochs, seed 0; or takes DIR/model.safetensors that it wrote), rounds
every float to float16 (half the file), measures the rounded model's test accuracy and fingerprint, and writes
--out (default: the package's fmnist_classifier.safetensors.xz, and fmnist_classifier.json beside it). Changing the shipped file changes every
FID: results measured before and after are not comparable.
"""

from __future__ import annotations

import argparse
import json
import lzma
import platform
import tempfile
from datetime import date
from pathlib import Path

import torch

from ilct.data.fashion_mnist import load_fashion_mnist
from ilct.io.files import read_tensors, save_tensors, write_text
from ilct.metrics.features import (PACKAGED, FashionClassifier, state_fingerprint, classifier_accuracy,
                                   train_fashion_classifier)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the Fashion-MNIST IDX files")
    p.add_argument("--from", dest="source", default="", help="a directory train_fashion_classifier wrote (no training)")
    p.add_argument("--out", default=str(PACKAGED), help="the .safetensors.xz to write (fmnist_classifier.json beside it)")
    p.add_argument("--epochs", type=int, default=6)
    args = p.parse_args(argv)
    source = Path(args.source) if args.source else Path(tempfile.mkdtemp()) / "classifier"
    if not args.source:
        train_fashion_classifier(args.data_dir, source, epochs=args.epochs)
    half = {k: v.half() if v.is_floating_point() else v for k, v in read_tensors(source / "model.safetensors").items()}
    model = FashionClassifier()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    model.eval()
    trained = json.loads((source / "config.json").read_text())
    meta = {"test_accuracy": classifier_accuracy(model, load_fashion_mnist(args.data_dir, "test")), "epochs": trained["epochs"], "seed": trained["seed"],
            "feature_dim": FashionClassifier.feature_dim, "fingerprint": state_fingerprint(model), "stored": "float16",
            "trained_fingerprint": trained["fingerprint"], "trained_test_accuracy": trained["test_accuracy"],
            "made": f"{date.today()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
                    "by benchmarks/quality/fmnist_classifier.py"}
    out = Path(args.out)  # xz: float16 weights compress to under 2 MB; the tensors are unchanged
    plain = Path(tempfile.mkdtemp()) / "classifier.safetensors"
    save_tensors(half, plain)
    out.write_bytes(lzma.compress(plain.read_bytes(), preset=9))
    write_text(out.parent / "fmnist_classifier.json", json.dumps(meta, indent=2) + "\n")
    print(f"written {out}: test accuracy {meta['test_accuracy']:.4f}, {meta['fingerprint']}")


if __name__ == "__main__":
    main()
