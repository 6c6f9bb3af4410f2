"""ONNX inference for the bi-encoder transformer and the cross-encoder, cached by model fingerprint.

The fingerprint is :func:`semsearch.models.source.model_fingerprint` for both kinds (the one recorded in
every index manifest). Before it was, the cross-encoder's folders were keyed by a second hash of the
top-level weight files; those ``<old>-cross-encoder`` folders are simply no longer found: the first
load under the new key exports and quantises again (once), and the old folder can be deleted.

The transformers model is exported once with ``torch.onnx.export`` (the torch.export-based
exporter; the TorchScript exporter is the fallback) and, for ``onnx-int8``, quantised to int8 by
:func:`quantize_rowwise`. Files live in ``<cache_dir>/<fingerprint>-<kind>/``::

    model.onnx                         float32 export (variant "onnx")
    model-int8-<INT8_RECIPE>.onnx      int8 (variant "onnx-int8"); the recipe is part of the name, so a
                                       file made by another recipe (e.g. the old ``model-int8.onnx``)
                                       is never picked up
    meta.json                          fingerprint, kind, library versions, opset, how each variant was built

The int8 recipe quantises every weight MatMul with per-output-channel 7-bit weights and **per-row**
(per-token) dynamic 8-bit activation scales. onnxruntime's ``quantize_dynamic`` computes one
activation scale over the whole padded batch tensor, so a text's vector depended on the texts it
was batched with (cosine down to 0.97); with a scale per token row, a row's result depends only on
that row, and a text's vector is the same whatever it is batched or padded with.

Every file is written to a temporary name and moved into place with ``os.replace``, so a crash or a
concurrent build never leaves a half-written model; present files are always reused, never rebuilt.
torch is imported only when a file has to be exported. Measurements: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from semsearch.models.runner import OUTPUTS, Kind, forward_parameters
from semsearch.runtime import available_cores

if TYPE_CHECKING:
    import onnxruntime
    import torch

log = logging.getLogger(__name__)

Variant = Literal["onnx", "onnx-int8"]

KINDS: tuple[str, ...] = ("encoder", "cross-encoder")
VARIANTS: tuple[str, ...] = ("onnx", "onnx-int8")

# int8 recipe (docs/benchmarks.md, "Deterministic int8"): weights symmetric per output channel with
# INT8_WEIGHT_BITS bits (7: u8 x s8 pair sums cannot saturate int16 in AVX2's vpmaddubsw), activations
# symmetric 8-bit with one scale per row of the last axis (a token), stored as uint8 around 128.
# Change INT8_RECIPE whenever the produced file would differ: it names the cached file.
INT8_RECIPE = "rowwise-w7a8-v1"
INT8_WEIGHT_BITS = 7
_INT8_OPSET = 21  # blocked QuantizeLinear (one scale per row) needs opset 21

_FILES: dict[str, str] = {"onnx": "model.onnx", "onnx-int8": f"model-int8-{INT8_RECIPE}.onnx"}
ModelSource = Union["torch.nn.Module", Callable[[], "torch.nn.Module"]]
_OUTPUT_NAMES = OUTPUTS
_MAX_SINGLE_FILE_BYTES = 1_900_000_000  # protobuf's 2 GiB limit, with margin for the graph itself
_LEGACY_OPSET = 17  # only used by the TorchScript fallback exporter


def default_cache_dir() -> Path:
    """``$SEMSEARCH_CACHE_DIR/onnx``, else ``~/.cache/semsearch/onnx``."""
    base = os.environ.get("SEMSEARCH_CACHE_DIR")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "semsearch"
    return root / "onnx"


class OnnxModel:
    """A cached ONNX export of a HF transformer, run with onnxruntime."""

    def __init__(
        self,
        hf_model: ModelSource,
        model_dir: Path | None,
        fingerprint: str,
        kind: Kind,
        variant: Variant,
        cache_dir: Path | None = None,
        num_threads: int | None = None,
        spinning: bool = False,
        arena_keep_tokens: int | None = None,
    ) -> None:
        """``hf_model`` is the transformers model, or a function that loads it: it is called only when
        the float export is missing from the cache, so a cached model runs without importing torch.

        ``spinning`` (off by default) lets idle intra-op threads spin-wait for the next parallel region
        instead of sleeping: it burns a core per thread between calls for little gain on short inputs
        (docs/benchmarks.md, "No spin-waiting")."""
        if kind not in KINDS:
            raise ValueError(f"unknown ONNX model kind {kind!r}; choose one of: {', '.join(KINDS)}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown ONNX variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        self.kind: Kind = kind
        self.variant: Variant = variant
        self.fingerprint = fingerprint
        self.folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{fingerprint}-{kind}"
        self._exported = False
        float_path = self.folder / _FILES["onnx"]
        target = self.folder / _FILES[variant]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RuntimeError(f"cannot create ONNX cache folder {self.folder}: {e}") from e

        if target.is_file():
            log.info("reusing cached ONNX model %s", target)
        else:
            if float_path.is_file():
                log.info("reusing cached ONNX model %s", float_path)
            else:
                started = time.perf_counter()
                info = _export(_load(hf_model), kind, float_path)
                self._exported = True
                self._write_meta(model_dir, "onnx", info)
                log.info("exported ONNX model to %s in %.1fs", float_path, time.perf_counter() - started)
            if variant == "onnx-int8":
                started = time.perf_counter()
                info = quantize_rowwise(float_path, target)
                self._exported = True
                self._write_meta(model_dir, "onnx-int8", info)
                log.info("quantised ONNX model to %s in %.1fs", target, time.perf_counter() - started)
        self._path = target
        self._session = _session(target, num_threads, spinning)
        self.arena_keep_tokens = arena_keep_tokens
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_name = _OUTPUT_NAMES[kind]

    @property
    def path(self) -> Path:
        """The ``.onnx`` file this model runs."""
        return self._path

    @property
    def exported(self) -> bool:
        """True if this construction built a file (export or quantisation), False if all came from cache."""
        return self._exported

    @property
    def input_names(self) -> list[str]:
        """The graph inputs, e.g. ``input_ids``, ``attention_mask``[, ``token_type_ids``]."""
        return list(self._input_names)

    def run(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run on tokenizer output; returns float32 last_hidden_state (B, T, H) or logits (B, L)."""
        if "input_ids" not in features or "attention_mask" not in features:
            raise ValueError("features need 'input_ids' and 'attention_mask'")
        shape = np.shape(features["input_ids"])
        feeds: dict[str, np.ndarray] = {}
        for name in self._input_names:
            if name in features:
                feeds[name] = np.ascontiguousarray(features[name], dtype=np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros(shape, dtype=np.int64)
            else:
                raise ValueError(f"ONNX model input {name!r} missing from features")
        tokens = int(np.prod(shape))
        shrink = self.arena_keep_tokens is not None and tokens > self.arena_keep_tokens
        (out,) = self._session.run([self._output_name], feeds, _shrink_options() if shrink else None)
        return np.asarray(out, dtype=np.float32)

    def _write_meta(self, model_dir: Path | None, variant: str, info: dict[str, Any]) -> None:
        """``meta.json`` is informational: failing to write it is logged, not raised."""
        try:
            self._update_meta(model_dir, variant, info)
        except OSError as e:
            log.warning("could not write %s: %s", self.folder / "meta.json", e)

    def _update_meta(self, model_dir: Path | None, variant: str, info: dict[str, Any]) -> None:
        """Record how ``variant`` was built in ``meta.json`` (read-modify-write, atomic replace)."""
        import onnx
        import onnxruntime

        torch_module = sys.modules.get("torch")  # only imported when something was exported
        torch_version = getattr(torch_module, "__version__", None)
        path = self.folder / "meta.json"
        meta: dict[str, Any] = {}
        if path.is_file():
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
        variants: dict[str, Any] = meta["variants"] if isinstance(meta.get("variants"), dict) else {}
        variants[variant] = {
            "file": _FILES[variant],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch_version,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            **info,
        }
        meta.update(
            {
                "fingerprint": self.fingerprint,
                "kind": self.kind,
                "variant": variant,  # the variant built last; details per variant below
                "model_dir": str(model_dir) if model_dir is not None else None,
                "torch": torch_version or meta.get("torch"),
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "variants": variants,
            }
        )
        if "opset" in info:
            meta["opset"] = info["opset"]
        with _atomic_path(path) as tmp:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class _ExportWrapper:
    """Builds a ``torch.nn.Module`` with explicit tensor inputs that returns one output tensor."""

    @staticmethod
    def build(hf_model: torch.nn.Module, kind: Kind, with_token_types: bool) -> torch.nn.Module:
        import torch

        attr = _OUTPUT_NAMES[kind]

        class WithTypes(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = hf_model

            def forward(
                self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
            ) -> torch.Tensor:
                out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return getattr(out, attr)

        class WithoutTypes(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = hf_model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), attr)

        return WithTypes() if with_token_types else WithoutTypes()


def _takes_token_types(hf_model: torch.nn.Module) -> bool:
    return "token_type_ids" in forward_parameters(hf_model)


def _load(source: ModelSource) -> torch.nn.Module:
    """The model itself, or what the loader function returns (an ``nn.Module`` is callable too)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(source, torch.nn.Module):
        return source
    return source() if callable(source) else source


def _example_inputs(hf_model: torch.nn.Module, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Random but valid token ids with some padding; batch and seq must be >= 2 (no 0/1 specialisation)."""
    import torch

    config = getattr(hf_model, "config", None)
    vocab = int(getattr(config, "vocab_size", 1000) or 1000)
    device = next(hf_model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(low=min(1000, vocab - 1), high=vocab, size=(batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[-1, seq // 2 :] = 0  # one padded row
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "token_type_ids": torch.zeros(batch, seq, dtype=torch.long, device=device),
    }


def _export(hf_model: torch.nn.Module, kind: Kind, dst: Path) -> dict[str, Any]:
    """Export ``hf_model`` to ``dst`` (atomically) and check it against torch; returns meta info."""
    import onnx
    import torch

    n_bytes = sum(p.numel() * p.element_size() for p in hf_model.parameters())
    if n_bytes > _MAX_SINGLE_FILE_BYTES:
        raise RuntimeError(
            f"ONNX export failed: model weights ({n_bytes / 1e9:.1f} GB) exceed the 2 GB single-file limit"
        )
    with_types = _takes_token_types(hf_model)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    wrapper = _ExportWrapper.build(hf_model, kind, with_types)
    example = _example_inputs(hf_model, batch=2, seq=8, seed=0)
    args = tuple(example[n] for n in names)
    output = _OUTPUT_NAMES[kind]
    was_training = hf_model.training
    wrapper.eval()  # also puts hf_model in eval mode; restored below
    errors: list[str] = []
    try:
        with _atomic_path(dst) as tmp:
            exporter = ""
            for dynamo in (True, False):
                try:
                    with torch.no_grad(), _quiet_export():
                        _torch_export(wrapper, args, names, output, tmp, dynamo=dynamo)
                    exporter = "dynamo" if dynamo else "torchscript"
                    break
                except Exception as e:  # the exporters raise many types; we report them all
                    errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(e).__name__}: {e}")
                    log.warning("ONNX %s", errors[-1].splitlines()[0][:500])
            if not exporter:
                raise RuntimeError(f"ONNX export of the {kind} failed: " + " | ".join(errors))
            try:
                max_diff = _check_export(wrapper, tmp, names, output, hf_model, kind)
            except RuntimeError:
                raise
            except Exception as e:
                raise RuntimeError(f"ONNX export of the {kind} could not be checked: {e}") from e
            model = onnx.load(str(tmp), load_external_data=False)
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    finally:
        hf_model.train(was_training)
    return {"exporter": exporter, "opset": opset, "inputs": names, "max_abs_diff_vs_torch": max_diff}


def _torch_export(
    wrapper: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    names: list[str],
    output: str,
    path: Path,
    *,
    dynamo: bool,
) -> None:
    import torch

    common: dict[str, Any] = {"input_names": names, "output_names": [output], "dynamo": dynamo}
    if dynamo:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        options: dict[str, Any] = {
            "dynamic_shapes": tuple({0: batch, 1: seq} for _ in names),
            "external_data": False,
            "verbose": False,
        }
    else:  # the TorchScript exporter
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
        options = {"dynamic_axes": axes, "opset_version": _LEGACY_OPSET, "do_constant_folding": True}
    torch.onnx.export(wrapper, args, str(path), **common, **options)
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"exporter wrote no model to {path}")


def _check_export(
    wrapper: torch.nn.Module, path: Path, names: list[str], output: str, hf_model: torch.nn.Module, kind: Kind
) -> float:
    """Compare the ONNX graph with torch on inputs of a different shape than the export example."""
    import torch

    example = _example_inputs(hf_model, batch=3, seq=13, seed=1)
    with torch.no_grad():
        expected = wrapper(*(example[n] for n in names)).float().cpu().numpy()
    session = _session(path, num_threads=None)
    (got,) = session.run([output], {n: example[n].cpu().numpy() for n in names})
    got = np.asarray(got, dtype=np.float32)
    if got.shape != expected.shape:
        raise RuntimeError(f"ONNX export of the {kind} is wrong: output shape {got.shape} != torch {expected.shape}")
    if kind == "encoder":  # padded positions carry no meaning; compare real tokens only
        mask = example["attention_mask"].cpu().numpy().astype(bool)
        got, expected = got[mask], expected[mask]
    max_diff = float(np.max(np.abs(got - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if not max_diff <= 1e-3 * scale:
        raise RuntimeError(f"ONNX export of the {kind} does not match torch (max abs diff {max_diff:.3g})")
    return max_diff


def quantize_rowwise(src: Path, dst: Path, weight_bits: int = INT8_WEIGHT_BITS) -> dict[str, Any]:
    """int8 version of the float graph ``src``, written atomically to ``dst``; returns meta info.

    Every ``MatMul`` whose second input is a 2-D weight initializer ``W`` (K, N) becomes::

        s   = max(|x|, axis=-1) / 127                      one scale per row (token), shape (..., 1)
        q   = QuantizeLinear(x, s, 128, block_size=K)      uint8, symmetric around 128
        y   = MatMulInteger(q, Wq, 128) * s * w_scale      Wq int8 per output channel, |Wq| <= 2^(bits-1) - 1

    Activation-activation MatMuls (attention scores) stay float. No calibration data is needed.
    """
    import onnx

    model = onnx.load(str(src))
    if _default_opset(model) < _INT8_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, _INT8_OPSET)
    rewrite = _RowwiseRewrite(model, weight_bits)
    nodes = rewrite.run(model.graph.node)
    if not rewrite.weights:
        raise RuntimeError(f"int8 quantisation of {src} failed: the graph has no MatMul with a float weight")
    _replace_graph(model.graph, nodes, replaced=set(rewrite.weights), added=rewrite.consts)
    try:
        onnx.checker.check_model(model)
        with _atomic_path(dst) as tmp:
            onnx.save(model, str(tmp))
    except Exception as e:
        raise RuntimeError(f"int8 quantisation of {src} failed: {type(e).__name__}: {e}") from e
    return {
        "recipe": INT8_RECIPE,
        "weights": f"int{weight_bits} symmetric, per output channel",
        "activations": "int8 symmetric, dynamic, one scale per row (token)",
        "matmuls": sum(1 for n in nodes if n.op_type == "MatMulInteger"),
        "opset": _default_opset(model),
    }


class _RowwiseRewrite:
    """The node rewrite of :func:`quantize_rowwise`: the new node list, and the initializers it adds
    (:attr:`consts`). Each weight is quantised once and each activation's row scale computed once,
    however many MatMuls share them. The names and order of the nodes and initializers are part of
    the file produced: changing them needs a new ``INT8_RECIPE``."""

    def __init__(self, model: Any, weight_bits: int) -> None:
        self.initializers = {i.name: i for i in model.graph.initializer}
        self.ranks = _ranks(model)
        self.qmax = 2 ** (weight_bits - 1) - 1
        self.consts: list[Any] = []
        self.axes = self.const("rq_axes_last", np.array([-1], dtype=np.int64))
        self.inv127 = self.const("rq_inv127", np.array(1.0 / 127.0, dtype=np.float32))
        self.eps = self.const("rq_eps", np.array(1e-12, dtype=np.float32))
        self.zero = self.const("rq_zero", np.array(0.0, dtype=np.float32))
        self.f128 = self.const("rq_f128", np.array(128.0, dtype=np.float32))
        self.zp128 = self.const("rq_zp128", np.array(128, dtype=np.uint8))
        self.weights: dict[str, tuple[str, str]] = {}  # weight -> (int8 weight, per-channel scale)
        self.inputs: dict[str, tuple[str, str]] = {}  # activation -> (uint8 activation, row scale)
        self.zero_points: dict[object, str] = {}  # one (..., 1) tensor of 128s per activation rank: fewer nodes
        self.nodes: list[Any] = []

    def const(self, name: str, value: Any) -> str:
        from onnx import numpy_helper

        self.consts.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def run(self, nodes: Iterable[Any]) -> list[Any]:
        """``nodes`` with every MatMul by a 2-D float weight replaced by its integer version."""
        from onnx import TensorProto

        for node in nodes:
            weight = self.initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
            if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
                self.nodes.append(node)
                continue
            x, w_name = node.input
            w_q, w_scale = self.quantised_weight(w_name, weight)
            x_q, x_scale = self.quantised_input(x, block_size=int(weight.dims[0]))
            self.integer_matmul(node.output[0], x_q, x_scale, w_q, w_scale)
        return self.nodes

    def quantised_weight(self, name: str, weight: Any) -> tuple[str, str]:
        """The weight as int8 with one symmetric scale per output channel (column)."""
        from onnx import numpy_helper

        if name not in self.weights:
            w = numpy_helper.to_array(weight).astype(np.float32)
            w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / self.qmax
            w_q = np.clip(np.rint(w / w_scale), -self.qmax, self.qmax).astype(np.int8)
            self.weights[name] = (
                self.const(f"{name}_rq_q", w_q),
                self.const(f"{name}_rq_scale", w_scale.astype(np.float32)),
            )
        return self.weights[name]

    def quantised_input(self, x: str, block_size: int) -> tuple[str, str]:
        """Nodes that quantise activation ``x`` to uint8 with one scale per row (max |x| / 127)."""
        from onnx import helper

        if x not in self.inputs:
            p = f"rq{len(self.inputs)}"
            self.nodes += [
                helper.make_node("ReduceMax", [x, self.axes], [f"{p}_max"], keepdims=1, name=f"{p}_max"),
                helper.make_node("ReduceMin", [x, self.axes], [f"{p}_min"], keepdims=1, name=f"{p}_min"),
                helper.make_node("Neg", [f"{p}_min"], [f"{p}_negmin"], name=f"{p}_negmin"),
                helper.make_node("Max", [f"{p}_max", f"{p}_negmin", self.eps], [f"{p}_absmax"], name=f"{p}_absmax"),
                helper.make_node("Mul", [f"{p}_absmax", self.inv127], [f"{p}_scale"], name=f"{p}_scale"),
            ]
            zero_point = self.zero_point(x, p)
            self.nodes.append(
                helper.make_node(
                    "QuantizeLinear",
                    [x, f"{p}_scale", zero_point],
                    [f"{p}_q"],
                    axis=-1,
                    block_size=block_size,
                    name=f"{p}_q",
                )
            )
            self.inputs[x] = (f"{p}_q", f"{p}_scale")
        return self.inputs[x]

    def zero_point(self, x: str, p: str) -> str:
        """The zero point must have the scale's shape: 128 everywhere, built from a scale of that rank
        (``{p}_scale``), once per rank."""
        from onnx import TensorProto, helper

        rank_key: object = self.ranks.get(x) or x
        if rank_key not in self.zero_points:
            self.zero_points[rank_key] = f"{p}_zp"
            self.nodes += [
                helper.make_node("Mul", [f"{p}_scale", self.zero], [f"{p}_z0"], name=f"{p}_z0"),
                helper.make_node("Add", [f"{p}_z0", self.f128], [f"{p}_z128"], name=f"{p}_z128"),
                helper.make_node("Cast", [f"{p}_z128"], [f"{p}_zp"], to=TensorProto.UINT8, name=f"{p}_zp"),
            ]
        return self.zero_points[rank_key]

    def integer_matmul(self, out: str, x_q: str, x_scale: str, w_q: str, w_scale: str) -> None:
        """``out = MatMulInteger(x_q, w_q) * x_scale * w_scale`` (int32 accumulation, then float)."""
        from onnx import TensorProto, helper

        self.nodes += [
            helper.make_node("MatMulInteger", [x_q, w_q, self.zp128], [f"{out}_i32"], name=f"{out}_mmi"),
            helper.make_node("Cast", [f"{out}_i32"], [f"{out}_f"], to=TensorProto.FLOAT, name=f"{out}_cast"),
            helper.make_node("Mul", [f"{out}_f", x_scale], [f"{out}_xs"], name=f"{out}_xs"),
            helper.make_node("Mul", [f"{out}_xs", w_scale], [out], name=f"{out}_ws"),
        ]


def _replace_graph(graph: Any, nodes: list[Any], replaced: set[str], added: list[Any]) -> None:
    """Put ``nodes`` in place of the graph's nodes; drop the ``replaced`` initializers no node reads
    any more and append the ``added`` ones."""
    still_used = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if not (i.name in replaced and i.name not in still_used)]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + added)


def _ranks(model: Any) -> dict[str, int]:
    """Tensor name -> rank, where the graph (after ONNX shape inference) knows it."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes are an optimisation here, not a requirement
        inferred = model
    graph = inferred.graph
    out: dict[str, int] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            out[value.name] = len(tensor.shape.dim)
    return out


def _default_opset(model: Any) -> int:
    return int(next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))


@functools.cache
def _shrink_options() -> Any:
    """Run options that free the run's onnxruntime arena chunks after it.

    onnxruntime's CPU arena keeps the largest tensors it ever allocated: a service that once encodes 32
    queries of 256 tokens would hold ~0.5 GB more for good (measured: anonymous RSS 139 -> 728 MB after
    batches of 32 long texts, 209 MB with this; a soak's RSS grew in steps when publications slowed the
    encoder and batches filled up). Used above ``OnnxModel(arena_keep_tokens=...)``, so ordinary query
    batches keep the arena and its speed."""
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _session(path: Path, num_threads: int | None, spinning: bool = False) -> onnxruntime.InferenceSession:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(num_threads or available_cores())
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; ORT warns about unused initialisers otherwise
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RuntimeError(f"onnxruntime cannot load {path}: {e}; delete the folder {path.parent} to rebuild it") from e


@contextlib.contextmanager
def _atomic_path(dst: Path) -> Iterator[Path]:
    """Yield a unique temporary path next to ``dst``; move it onto ``dst`` if the block succeeds."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{dst.suffix}")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Keep the exporter's chatter out of the way: stdout goes to stderr (CLI output stays clean),
    its warnings are muted and its INFO loggers (onnxscript, onnx_ir, torch.onnx) raised to ERROR."""
    root = logging.getLogger()
    saved: list[tuple[logging.Logger, int]] = []
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.ERROR)
    root.addFilter(_drop_root_info)  # onnxruntime.quantization logs INFO on the root logger itself
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(_drop_root_info)
        for logger, level in saved:
            logger.setLevel(level)


def _drop_root_info(record: logging.LogRecord) -> bool:
    """A filter on the root logger sees only records logged on it directly, not propagated ones."""
    return record.levelno >= logging.WARNING
