"""Network architectures, MAC/parameter counting and ONNX export (legacy exporter)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17


def conv_block(cin: int, cout: int, k: int = 3, stride: int = 1, dims: int = 2) -> list[nn.Module]:
    """Convolution (no bias: batch norm follows), batch norm, ReLU; 1-D or 2-D."""
    conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
    return [conv(cin, cout, k, stride=stride, padding=k // 2, bias=False), norm(cout),
            nn.ReLU(inplace=True)]


class PooledNet(nn.Module):
    """What every network here shares: fixed input constants, a feature stack, global
    average + max pooling over the feature map's spatial axes, dropout, a linear head.

    ``in_shift``/``in_scale`` are fixed constants applied to the input ((x + shift) * scale)
    so absolute-dB inputs arrive near unit range; they are part of the exported graph.
    """

    def __init__(self, layers: list[nn.Module], width: int, n_classes: int, in_shift: float,
                 in_scale: float, dropout: float):
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width, n_classes)
        self.in_shift = float(in_shift)
        self.in_scale = float(in_scale)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_shift != 0.0 or self.in_scale != 1.0:
            x = (x + self.in_shift) * self.in_scale
        h = self.features(self.prepare(x))
        axes = tuple(range(2, h.dim()))
        avg = torch.mean(h, dim=axes)
        mx = torch.amax(h, dim=axes)
        return self.head(self.dropout(torch.cat([avg, mx], dim=1)))


class SmallCNN(PooledNet):
    """Plain 3x3 conv stack with 2x2 max-pooling between the blocks."""

    def __init__(self, channels: list[int], n_classes: int, in_shift: float = 0.0,
                 in_scale: float = 1.0, dropout: float = 0.2, stem_stride: int = 1):
        layers = conv_block(1, channels[0], 3 if stem_stride == 1 else 5, stem_stride)
        for cin, cout in zip(channels, channels[1:]):
            layers += [nn.MaxPool2d(2), *conv_block(cin, cout)]
        super().__init__(layers, channels[-1], n_classes, in_shift, in_scale, dropout)


class TemporalCNN(PooledNet):
    """1-D convolutions over time with the mel bands as input channels.

    Why this shape: every layer is one GEMM of (channels x kernel*channels_in) by frames,
    large enough that tract runs it at 40-75 % of the CPU's peak, where the 2-D stacks of
    small 3x3 convolutions and max-pools (``SmallCNN``) spend most of their time in
    per-node overhead (20-30 %; docs/performance.md). Strided convolutions replace pooling.
    ``layers`` lists (channels, kernel, stride); the input is [B, 1, n_mels, frames].
    """

    def __init__(self, n_mels: int, layers: list[tuple[int, int, int]], n_classes: int,
                 in_shift: float = 0.0, in_scale: float = 1.0, dropout: float = 0.2):
        widths = [n_mels] + [c for c, _, _ in layers]
        mods = [m for cin, (cout, k, st) in zip(widths, layers) for m in conv_block(cin, cout, k, st, dims=1)]
        super().__init__(mods, widths[-1], n_classes, in_shift, in_scale, dropout)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(1)   # [B, 1, mels, frames] -> mels as channels


class StridedCNN(PooledNet):
    """2-D convolutions that downsample by striding instead of max-pooling: the 2-D stack's
    shift invariance along the mel axis (a cry's pitch moves) with fewer, larger nodes than
    ``SmallCNN`` (tract runs it at about 50 % of peak instead of 20 %). ``layers`` lists
    (channels, kernel, stride)."""

    def __init__(self, layers: list[tuple[int, int, int]], n_classes: int,
                 in_shift: float = 0.0, in_scale: float = 1.0, dropout: float = 0.2):
        widths = [1] + [c for c, _, _ in layers]
        mods = [m for cin, (cout, k, st) in zip(widths, layers) for m in conv_block(cin, cout, k, st)]
        super().__init__(mods, widths[-1], n_classes, in_shift, in_scale, dropout)


DETECTOR_S2_LAYERS = [(16, 3, 2), (32, 3, 2), (64, 3, 2), (80, 3, 1)]
DETECTOR_TC_LAYERS = [(64, 3, 1), (96, 3, 2), (128, 3, 2), (128, 3, 2)]
REASON_TC_LAYERS = [(128, 5, 1), (160, 3, 1), (192, 3, 2), (192, 3, 2)]


def detector_net(channels: list[int] | None = None, standardised: bool = False,
                 arch: str = "cnn2d", n_mels: int = 40) -> nn.Module:
    # input [1, 1, 40, 63]: absolute dB (about -100..0) -> (x + 60) / 20; standardised
    # log-mel is used as it is
    shift, scale = (0.0, 1.0) if standardised else (60.0, 1.0 / 20.0)
    if arch == "s2":
        return StridedCNN(DETECTOR_S2_LAYERS, 2, in_shift=shift, in_scale=scale, dropout=0.2)
    if arch == "tc":
        return TemporalCNN(n_mels, DETECTOR_TC_LAYERS, 2, in_shift=shift, in_scale=scale,
                           dropout=0.2)
    return SmallCNN(list(channels or [8, 16, 32, 64]), 2, in_shift=shift, in_scale=scale,
                    dropout=0.2)


def reason_net(n_mels: int = 64) -> nn.Module:
    # input [1, 1, 64, 110]: standardised log-mel, one frame per 64 ms
    return TemporalCNN(n_mels, REASON_TC_LAYERS, 8, dropout=0.3)


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

def describe(model: nn.Module) -> str:
    """One line for the model card: the layer stack of a detector or reason network."""
    if isinstance(model, TemporalCNN):
        convs = [m for m in model.features if isinstance(m, nn.Conv1d)]
        stack = ", ".join(f"{c.out_channels}ch k{c.kernel_size[0]}"
                          + (f" s{c.stride[0]}" if c.stride[0] > 1 else "") for c in convs)
        return (f"1-D temporal CNN over the {convs[0].in_channels} mel bands as channels: "
                f"{len(convs)} conv+BN+ReLU layers ({stack}), global average+max pooling over "
                "time, dropout, linear")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    if isinstance(model, StridedCNN):
        stack = ", ".join(f"{c.out_channels}ch {c.kernel_size[0]}x{c.kernel_size[1]}"
                          + (f" s{c.stride[0]}" if c.stride[0] > 1 else "") for c in convs)
        return (f"2-D CNN downsampling by strided convolutions: {len(convs)} conv+BN+ReLU "
                f"layers ({stack}), global average+max pooling, dropout, linear")
    return (f"2-D CNN: {len(convs)} conv blocks ("
            + "-".join(str(c.out_channels) for c in convs)
            + " channels, BN, ReLU, max-pool), global average+max pooling, dropout, linear")


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, shape: list[int]) -> int:
    """Multiply-accumulates of Conv1d, Conv2d and Linear layers for one forward pass."""
    macs = 0

    def conv_hook(m: nn.Conv1d | nn.Conv2d, _inp, out):
        nonlocal macs
        k = int(np.prod(m.kernel_size)) * (m.in_channels // m.groups)
        macs += int(out.numel() * k)

    def lin_hook(m: nn.Linear, _inp, out):
        nonlocal macs
        macs += int(out.numel() * m.in_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
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
