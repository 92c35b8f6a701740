"""One-off: convert facenet-pytorch's MTCNN state dicts to safetensors for shipping.

Reads ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` from an unpacked facenet-pytorch
2.6.0 wheel (plain state dicts, loaded with ``weights_only=True``), writes

    weights/mtcnn/{pnet,rnet,onet}.safetensors   tensors unchanged, same key names
    weights/mtcnn/LICENSE                         the wheel's MIT licence + provenance
    weights/mtcnn/card.json                       source, licence, checksums, contract
    weights/manifest.json                         relpath -> sha256 of every weight file

Usage:  python tools/convert_mtcnn_weights.py /tmp/fnp/x [--weights-dir weights]

The tensors are copied as they are (float32, no transposition): the P/R/O-Net
definitions in ``affstream/detect/mtcnn.py`` follow the layout of these state dicts,
including the (width, height, channel) flatten order before the dense layers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

NETS = ("pnet", "rnet", "onet")
SOURCE_VERSION = "2.6.0"
WHEEL_NAME = f"facenet_pytorch-{SOURCE_VERSION}-py3-none-any.whl"

INPUT_CONTRACT = {
    "color": "RGB",
    "dtype": "uint8 pixels converted to float32",
    "normalisation": "(x - 127.5) * 0.0078125  (i.e. (x - 127.5) / 128), range about [-1, 1]",
    "layout": "NCHW",
    "pnet_input": "any size >= 12x12; output stride 2, receptive cell 12 px",
    "rnet_input": "24x24 crops",
    "onet_input": "48x48 crops",
    "dense_flatten_order": "features are flattened as (width, height, channel), "
    "i.e. x.permute(0, 3, 2, 1).reshape(N, -1), before dense4 (R-Net) and dense5 (O-Net)",
    "outputs": {
        "pnet": "conv4_1 -> 2 logits (softmax, index 1 = face); conv4_2 -> 4 box offsets "
        "(dx1, dy1, dx2, dy2) in units of the cell size",
        "rnet": "dense5_1 -> 2 logits; dense5_2 -> 4 box offsets in units of box size",
        "onet": "dense6_1 -> 2 logits; dense6_2 -> 4 box offsets; dense6_3 -> 10 landmark "
        "values (5 x then 5 y, fractions of the box size; order left eye, right eye, nose, "
        "left mouth, right mouth)",
    },
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_net(source: Path, target: Path, name: str) -> dict[str, list[int]]:
    """Write one state dict as safetensors; return {tensor name: shape}."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    tensors = {key: value.detach().to(torch.float32).contiguous() for key, value in state.items()}
    # One metadata key only: safetensors writes several keys in random order, and the
    # files must be byte-reproducible for their checksums.
    provenance = {
        "source": f"{WHEEL_NAME}: facenet_pytorch/data/{source.name}",
        "license": "MIT (Copyright (c) 2019 Timothy Esler); see LICENSE beside this file",
        "network": name,
    }
    save_file(tensors, str(target), metadata={"provenance": json.dumps(provenance, sort_keys=True)})
    target.chmod(0o644)
    return {key: list(value.shape) for key, value in tensors.items()}


def write_license(unpacked: Path, target: Path) -> None:
    candidates = sorted(unpacked.glob("facenet_pytorch-*.dist-info/LICENSE*"))
    if not candidates:
        raise SystemExit(f"{unpacked}: no facenet_pytorch-*.dist-info/LICENSE* found")
    text = candidates[0].read_text(encoding="utf-8").rstrip() + "\n"
    note = (
        "\n---\n"
        f"pnet.safetensors, rnet.safetensors and onet.safetensors in this directory are "
        f"converted from facenet_pytorch/data/{{pnet,rnet,onet}}.pt in the facenet-pytorch "
        f"{SOURCE_VERSION} wheel ({WHEEL_NAME}); the tensors are unchanged. The licence "
        "above is the one that wheel ships.\n"
    )
    target.write_text(text + note, encoding="utf-8")


def write_manifest(weights_dir: Path) -> dict[str, str]:
    """Rebuild weights/manifest.json from every *.safetensors file under weights/."""
    manifest = {
        path.relative_to(weights_dir).as_posix(): sha256_of(path)
        for path in sorted(weights_dir.rglob("*.safetensors"))
    }
    (weights_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("unpacked_wheel", type=Path, help="directory the wheel was unzipped into")
    parser.add_argument("--weights-dir", type=Path, default=Path(__file__).resolve().parents[1] / "weights")
    args = parser.parse_args(argv)

    data_dir = args.unpacked_wheel / "facenet_pytorch" / "data"
    out_dir = args.weights_dir / "mtcnn"
    out_dir.mkdir(parents=True, exist_ok=True)

    layers: dict[str, dict[str, list[int]]] = {}
    source_sha: dict[str, str] = {}
    for name in NETS:
        source = data_dir / f"{name}.pt"
        if not source.is_file():
            raise SystemExit(f"{source}: not found; unzip {WHEEL_NAME} first")
        source_sha[f"{name}.pt"] = sha256_of(source)
        layers[name] = convert_net(source, out_dir / f"{name}.safetensors", name)

    write_license(args.unpacked_wheel, out_dir / "LICENSE")
    manifest = write_manifest(args.weights_dir)
    card = {
        "name": "mtcnn",
        "description": "MTCNN face detector (Zhang et al. 2016) P-Net, R-Net, O-Net weights",
        "source": {
            "package": f"facenet-pytorch {SOURCE_VERSION}",
            "wheel": WHEEL_NAME,
            "files": [f"facenet_pytorch/data/{name}.pt" for name in NETS],
            "sha256": source_sha,
            "origin": "converted by facenet-pytorch from the TensorFlow MTCNN of "
            "davidsandberg/facenet, itself from the original Caffe models",
        },
        "license": "MIT",
        "license_file": "LICENSE",
        "copyright": "Copyright (c) 2019 Timothy Esler",
        "conversion": "tools/convert_mtcnn_weights.py: tensors copied unchanged (float32)",
        "sha256": {f"{name}.safetensors": manifest[f"mtcnn/{name}.safetensors"] for name in NETS},
        "input": INPUT_CONTRACT,
        "architecture": {
            "activation": "PReLU (one slope per channel) after every conv and hidden dense layer",
            "pooling": "max pooling with ceil_mode=True: P-Net 2x2/2 after conv1; R-Net 3x3/2 "
            "after conv1 and conv2; O-Net 3x3/2 after conv1 and conv2, 2x2/2 after conv3",
            "convolutions": "stride 1, no padding",
        },
        "layers": layers,
    }
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    for rel, digest in manifest.items():
        print(f"{digest}  {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
