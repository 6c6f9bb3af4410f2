"""Choice enums shared by the indexer's commands (typer shows their values in ``--help``)."""

from __future__ import annotations

from enum import StrEnum


class PoolingOpt(StrEnum):
    mean = "mean"
    cls = "cls"


class BackendOpt(StrEnum):
    torch = "torch"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"
