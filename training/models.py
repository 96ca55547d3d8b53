"""Network architectures, MAC/parameter counting and ONNX export (legacy exporter)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17


def conv_block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                               nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


class SmallCNN(nn.Module):
    """Plain 3x3 conv stack, global average + max pooling, linear head.

    ``in_shift``/``in_scale`` are fixed constants applied to the input ((x + shift) * scale)
    so absolute-dB inputs arrive near unit range; they are part of the exported graph.
    """

    def __init__(self, channels: list[int], n_classes: int, in_shift: float = 0.0,
                 in_scale: float = 1.0, dropout: float = 0.2, stem_stride: int = 1):
        super().__init__()
        k = 3 if stem_stride == 1 else 5
        layers: list[nn.Module] = [nn.Conv2d(1, channels[0], k, stride=stem_stride,
                                             padding=k // 2, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        cin = channels[0]
        for c in channels[1:]:
            layers.append(nn.MaxPool2d(2))
            layers += conv_block(cin, c, pool=False)
            cin = c
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * cin, n_classes)
        self.in_shift = float(in_shift)
        self.in_scale = float(in_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_shift != 0.0 or self.in_scale != 1.0:
            x = (x + self.in_shift) * self.in_scale
        h = self.features(x)
        avg = torch.mean(h, dim=(2, 3))
        mx = torch.amax(h, dim=(2, 3))
        return self.head(self.dropout(torch.cat([avg, mx], dim=1)))


def detector_net(channels: list[int] | None = None, standardised: bool = False) -> SmallCNN:
    # input [1, 1, 40, 63]: absolute dB (about -100..0) -> (x + 60) / 20; standardised
    # log-mel is used as it is
    shift, scale = (0.0, 1.0) if standardised else (60.0, 1.0 / 20.0)
    return SmallCNN(list(channels or [8, 16, 32, 64]), 2, in_shift=shift, in_scale=scale,
                    dropout=0.2)


def reason_net() -> SmallCNN:
    # input [1, 1, 64, 219]: standardised log-mel
    return SmallCNN([16, 32, 48, 64], 8, dropout=0.3, stem_stride=2)


class TinyOld(nn.Module):
    """Test-only stand-in for the old project's export: [1,1,224,224] -> 8 logits."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(28)
        self.fc = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


# ------------------------------------------------------------------ ResNet18 (old recipe)

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + idt)


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (from scratch), 1 input channel."""

    def __init__(self, n_classes: int = 8, in_ch: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks = []
        cin = 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x):
        h = self.layers(self.stem(x))
        return self.fc(torch.flatten(torch.mean(h, dim=(2, 3)), 1))


# ------------------------------------------------------------------ accounting and export

def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, shape: list[int]) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one forward pass."""
    macs = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs += int(out.numel() * k)

    def lin_hook(m: nn.Linear, _inp, out):
        nonlocal macs
        macs += int(out.numel() * m.in_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(shape))
    model.train(was)
    for h in hooks:
        h.remove()
    return macs


def export_onnx(model: nn.Module, shape: list[int], path: Path) -> None:
    """Static-shape export with the legacy TorchScript exporter, input 'input',
    output 'logits'; checked with onnx.checker and onnxruntime."""
    import onnx
    import onnxruntime as ort
    import warnings

    model = model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          do_constant_folding=True)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    if not np.allclose(got, want, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"onnxruntime disagrees with torch: {got} vs {want}")


def onnx_ops(path: Path) -> list[str]:
    import onnx
    return sorted({n.op_type for n in onnx.load(str(path)).graph.node})
