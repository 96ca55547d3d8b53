"""Multiply-accumulates of an ONNX model, from the graph alone (the onnx package's shape
inference; Conv, ConvTranspose-free models, Gemm, MatMul), to cross-check what
`babycryd bench` walks from tract:

    training/.venv/bin/python bench/macs.py models/*.onnx
"""
from __future__ import annotations

import sys
from math import prod

import onnx
from onnx import shape_inference


def macs(path: str) -> int:
    model = shape_inference.infer_shapes(onnx.load(path))
    g = model.graph
    shapes = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for node in g.node:
        if node.op_type == "Conv":
            w = shapes[node.input[1]]  # [cout, cin/groups, kh, kw]
            out = shapes[node.output[0]]
            total += prod(out) * prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            trans_b = any(at.name == "transB" and at.i for at in node.attribute)
            k = a[-1]
            n = b[-2] if trans_b else b[-1]
            total += prod(a[:-1]) * k * n
    return total


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(f"{p}\t{macs(p)}")
