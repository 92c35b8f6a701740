"""Train, evaluate and use a head on a feature bank (the library calls behind
`affstream features`, `affstream train` and `affstream evaluate`).

    python examples/train_head_on_bank.py FEATURES_DIR --task expr --head mlp

FEATURES_DIR is what `affstream features AFFWILD_ROOT -o FEATURES_DIR` produced.
"""

from __future__ import annotations

import argparse
import json

from affstream.train.evaluate import evaluate_head
from affstream.train.loop import train_head


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("features")
    parser.add_argument("--task", default="expr", choices=["expr", "au", "va", "all"])
    parser.add_argument("--head", default="mlp", choices=["mlp", "temporal"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", default="heads/example")
    args = parser.parse_args()

    train_head(args.features, task=args.task, head=args.head, out=args.out, epochs=args.epochs)
    metrics = evaluate_head(args.features, args.out)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
