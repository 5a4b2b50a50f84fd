"""Train the two Fashion-MNIST example models and export them to ONNX with BatchNorm kept.

    pip install -e .[recipes]          # torch, CPU
    apt-get install dataset-fashion-mnist
    python models/recipes/train_fashion_mnist.py --model resnet8 --epochs 15
    python models/recipes/train_fashion_mnist.py --model mobilenetv2 --epochs 15
    python models/recipes/train_fashion_mnist.py --subset 300   # the bundled labelled subset

Writes models/fashion_<model>.onnx and prints the test accuracy on all 10,000 test images,
measured with onnxruntime on the exported file (the number recorded in models/README.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qcompiler.models.datasets import load_fashion_mnist

MODELS_DIR = Path(__file__).resolve().parents[1]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet8(nn.Module):
    """CIFAR-style ResNet-8: stem, three stages of one basic block, global pool, linear."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.layer1 = BasicBlock(widths[0], widths[0], 1)
        self.layer2 = BasicBlock(widths[0], widths[1], 2)
        self.layer3 = BasicBlock(widths[1], widths[2], 2)
        self.fc = nn.Linear(widths[2], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Small(nn.Module):
    """A MobileNetV2-style net for 28x28 inputs: (expansion, channels, repeats, stride) per stage."""

    STAGES = ((1, 16, 1, 1), (4, 24, 2, 1), (4, 32, 2, 2), (4, 64, 2, 1))

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()]
        cin = 16
        for expand, cout, repeats, stride in self.STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


ARCHITECTURES = {"resnet8": ResNet8, "mobilenetv2": MobileNetV2Small}


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and random 2-pixel shift (pad and crop), per batch."""
    if torch.rand(()) < 0.5:
        x = x.flip(3)
    dx, dy = torch.randint(-2, 3, (2,)).tolist()
    pad = nn.functional.pad(x, (2, 2, 2, 2), value=float(x.min()))
    return pad[:, :, 2 + dy: 30 + dy, 2 + dx: 30 + dx]


def train(model: nn.Module, epochs: int, batch: int, lr: float, seed: int) -> None:
    """SGD with Nesterov momentum and a one-cycle schedule; logs loss and time per epoch."""
    torch.manual_seed(seed)
    images, labels = load_fashion_mnist("train")
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps = epochs * (len(x_all) // batch)
    model.to(memory_format=torch.channels_last)  # faster depthwise convolutions on CPU
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        start, total = time.time(), 0.0
        order = torch.randperm(len(x_all))
        for i in range(len(x_all) // batch):
            idx = order[i * batch: (i + 1) * batch]
            x = augment(x_all[idx]).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(model(x), y_all[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{epochs}  loss {total / (i + 1):.4f}  {time.time() - start:.0f}s", flush=True)


def export(model: nn.Module, path: Path) -> None:
    """Export in eval mode with BatchNormalization kept (TrainingMode.PRESERVE skips BN fusion)."""
    model.eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(1, 1, 28, 28)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False,
    )
    tmp.replace(path)


def onnx_accuracy(path: Path) -> float:
    """Top-1 accuracy of the exported model on all 10,000 test images, run by onnxruntime."""
    import onnxruntime as ort

    images, labels = load_fashion_mnist("test")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": images[i: i + 500]})[0] for i in range(0, len(images), 500)])
    return float((logits.argmax(1) == labels).mean())


def write_subset(count: int, seed: int) -> Path:
    """Save `count` test images, stratified by class, as models/fashion_mnist_subset.npz."""
    images, labels = load_fashion_mnist("test")
    rng = np.random.default_rng(seed)
    per_class = count // 10
    picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    picks.sort()
    path = MODELS_DIR / "fashion_mnist_subset.npz"
    np.savez_compressed(path, input=images[picks], labels=labels[picks], test_indices=picks)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subset", type=int, help="write a labelled test subset of this many images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.subset:
        print(f"wrote {write_subset(args.subset, args.seed)}")
    if args.model:
        model = ARCHITECTURES[args.model]()
        train(model, args.epochs, args.batch, args.lr, args.seed)
        path = MODELS_DIR / f"fashion_{args.model}.onnx"
        export(model, path)
        print(f"wrote {path}  test accuracy (onnxruntime, 10,000 images): {onnx_accuracy(path):.4f}")


if __name__ == "__main__":
    main()
