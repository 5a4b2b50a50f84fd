"""partition-blocks on the bundled nets: the partitions were checked by hand against the models'
structure (ResNet basic blocks; MobileNetV2 inverted residuals, three weighted layers each)."""

from __future__ import annotations

import pytest

import qcompiler
from qcompiler.errors import UsageError
from qcompiler.passes import PartitionBlocks
from qcompiler.passes.partition_blocks import partition
from graphs import ROOT


def _model(name: str):
    return qcompiler.optimize(qcompiler.load(ROOT / "models" / f"{name}.onnx"))


@pytest.fixture(scope="module")
def resnet():
    return _model("fashion_resnet8")


def test_resnet_blocks_are_stem_basic_blocks_and_classifier(resnet):
    blocks = partition(resnet, "block")
    assert [len(b.layers) for b in blocks] == [1, 2, 3, 3, 1]
    assert blocks[1].layers == ("/layer1/conv1/Conv", "/layer1/conv2/Conv")
    assert blocks[2].layers == ("/layer2/conv1/Conv", "/layer2/shortcut/shortcut.0/Conv", "/layer2/conv2/Conv")
    # each residual block starts and ends at the ReLU after a residual join (single entry, single exit)
    assert blocks[1].inputs == ("/stem/stem.2/Relu_output_0",) and blocks[1].outputs == ("/layer1/Relu_1_output_0",)
    assert blocks[2].inputs == blocks[1].outputs
    assert blocks[-1].layers == ("/fc/Gemm",) and blocks[-1].outputs == ("logits",)


def test_resnet_other_granularities(resnet):
    layers = partition(resnet, "layer")
    assert [len(b.layers) for b in layers] == [1] * 10
    # layer2's conv2 block holds the residual Add: it reads its shortcut from another layer block
    assert set(layers[5].inputs) == {"/layer2/Relu_output_0", "/layer2/shortcut/shortcut.1/BatchNormalization_output_0"}
    assert [len(b.layers) for b in partition(resnet, "stage")] == [3, 3, 3, 1]  # 28x28, 14x14, 7x7, classifier
    (net,) = partition(resnet, "net")
    assert len(net.layers) == 10 and net.inputs == ("input",) and net.outputs == ("logits",)


@pytest.mark.parametrize("name,layers", [
    ("fashion_mobilenetv2", [1, 2, 3, 3, 3, 3, 3, 3, 2]),
    # ImageNet MobileNetV2: stem + the t=1 block (3 layers), 16 inverted residuals, last conv + classifier
    ("mobilenet_v2_imagenet", [3] + [3] * 16 + [2]),
])
def test_mobilenet_blocks_are_inverted_residuals(name, layers):
    blocks = partition(_model(name), "block")
    assert [len(b.layers) for b in blocks] == layers
    for block in blocks[1:-1]:  # expand 1x1, depthwise 3x3, project 1x1 of one feature block each
        stems = {layer.split("/conv/")[0] for layer in block.layers}
        assert len(stems) == 1, block.layers
    assert all(len(b.inputs) == 1 and len(b.outputs) == 1 for b in blocks)


def test_the_pass_leaves_the_model_alone_and_rejects_unknown_granularity(resnet):
    before = resnet.fingerprint()
    step = PartitionBlocks("stage")
    assert not step(resnet).modified and resnet.fingerprint() == before
    assert len(step.blocks) == 4
    with pytest.raises(UsageError, match="granularity 'blocks'"):
        partition(resnet, "blocks")


def test_resnet50_bottlenecks_and_any_dag_in_single_entry_single_exit_blocks():
    """ONNX's light ResNet-50: stem, 3 + 4 + 6 + 3 bottlenecks (the first of each stage with its
    downsampling conv: 4 layers), classifier. Every light model partitions into blocks that read
    one tensor and hand on one."""
    from graphs import LIGHT_MODELS

    resnet50 = next(p for p in LIGHT_MODELS if p.stem == "light_resnet50")
    stages = [[4] + [3] * (n - 1) for n in (3, 4, 6, 3)]
    assert [len(b.layers) for b in partition(qcompiler.optimize(qcompiler.load(resnet50)))] == \
        [1] + sum(stages, []) + [1]
    for path in LIGHT_MODELS:
        blocks = partition(qcompiler.optimize(qcompiler.load(path)), "block")
        assert all(len(b.inputs) == 1 and len(b.outputs) == 1 and b.layers for b in blocks), path.stem
