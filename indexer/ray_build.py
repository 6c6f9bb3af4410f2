"""``indexer build --engine ray``: the same build, with encoding spread over a Ray cluster.

* **Read** with Ray Data from the same readers as a local build (:func:`indexer.pipeline.read_rows`,
  one read task over the inputs in order, so auto ids, sentence splitting and rejects are exactly
  a local build's); rejects travel with the rows and are collected and reported on the driver.
* **Encode** with ``map_batches`` over a callable class on a pool of stateful actors
  (``compute=ray.data.ActorPoolStrategy(size=M)``): one model load per actor, ``--cpus-per-encoder``
  / ``--gpus-per-encoder`` each; batches of ``--chunk-size`` items; output order preserved.
* **Write** on the driver through the core :class:`~semsearch.index.writer.IndexWriter`, chunk by chunk
  (the unit ``--resume`` restarts from), segments per shard, then the same reject threshold,
  manifest, verification and atomic publish as a local build.

Ray is optional (``pip install 'semsearch[ray]'``): it is imported here only, when this engine
runs. A cluster that cannot be reached, or an encoder actor that keeps dying past Ray's restarts,
ends the build with one ``error:`` line and nothing published (committed chunks stay in staging,
so ``--resume`` continues).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from indexer.pipeline import (
    BuildOptions,
    BuildResult,
    _fingerprint,
    _finish,
    _progress_bar,
    _publish,
    encoder_meta,
    read_rows,
)
from semsearch.errors import SemsearchError
from semsearch.index import IndexRequest, IndexRoot, IndexWriter, Record, disk_errors
from semsearch.ingest import Reject
from semsearch.models import Encoder
from semsearch.ray_cluster import RayUnavailableError as RayUnavailableError  # its old home: re-exported
from semsearch.ray_cluster import connect as _connect
from semsearch.ray_cluster import import_ray as _import_ray

log = logging.getLogger(__name__)

ROW, REJECT = 0, 1
ACTOR_RESTARTS = 2  # an encoder actor that dies is restarted this many times, then the build fails


class RayBuildError(SemsearchError):
    """The distributed part of a build failed (an actor died past its restarts, a task failed)."""

    code = "ray_build_failed"


@dataclass
class RayOptions:
    """Where and how wide: the cluster address, encoder actors and what each one takes."""

    address: str | None = None  # None: RAY_ADDRESS, else a local Ray started for this build
    encoders: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    object_store_mb: int = 256  # only for a local Ray started here


def import_ray() -> Any:
    return _import_ray("ray.data", flag="--engine ray")


def connect(ray: Any, address: str | None, object_store_mb: int = 256, num_cpus: int | None = None) -> bool:
    """Join the cluster (:func:`semsearch.ray_cluster.connect`); an unreachable one publishes nothing."""
    return _connect(ray, address, object_store_mb, num_cpus, then="nothing was published")


# ------------------------------------------------------------------------------------ reading


def _record_json(rec: Record) -> str:
    return json.dumps(asdict(rec), ensure_ascii=False)


def _reject_json(rej: Reject) -> str:
    return json.dumps({"source": rej.source, "line": rej.line, "reason": rej.reason, "raw": rej.raw})


def _read_blocks(opts: BuildOptions, first_iid: int, skip: int, block_items: int) -> Iterator[Any]:
    """The inputs as Arrow tables of ``block_items`` items (rows and rejects, in input order), read as a
    local build reads them (:func:`~indexer.pipeline.read_rows`: the same ids, doc ids and errors)."""
    import pyarrow as pa

    items = read_rows(opts, first_iid)
    for _ in range(skip):  # --resume: items already committed (reading is cheap, encoding is not)
        if next(items, None) is None:
            break
    kinds: list[int] = []
    texts: list[str] = []
    payloads: list[str] = []

    def table() -> Any:
        return pa.table({"kind": pa.array(kinds, pa.int8()), "text": texts, "item": payloads})

    for item in items:
        if isinstance(item, Reject):
            kinds.append(REJECT)
            texts.append("")
            payloads.append(_reject_json(item))
        else:
            kinds.append(ROW)
            texts.append(item.text)
            payloads.append(_record_json(item))
        if len(kinds) >= block_items:
            yield table()
            kinds, texts, payloads = [], [], []
    if kinds:
        yield table()


def _datasource(opts: BuildOptions, first_iid: int, skip: int, block_items: int) -> Any:
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class InputsDatasource(Datasource):
        """One read task over all inputs in order (documents are numbered across files)."""

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(p.stat().st_size for p in opts.inputs)

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(lambda: _read_blocks(opts, first_iid, skip, block_items), meta)]

    return InputsDatasource()


# ------------------------------------------------------------------------------------ encoding


class EncodeActor:
    """A Ray Data callable class: loads the model once, encodes the row items of each batch."""

    def __init__(
        self,
        model: str | None,
        pooling: str,
        backend: str,
        max_seq_length: int | None,
        batch_size: int,
        threads: int,
        gpu: bool,
    ) -> None:
        logging.basicConfig(level=logging.WARNING)
        self.encoder = Encoder(
            model=model,
            pooling=pooling,  # type: ignore[arg-type]
            backend=backend,  # type: ignore[arg-type]
            max_seq_length=max_seq_length,
            num_threads=threads,
            spinning=False,
            device=_encoder_device(gpu, backend),
        )
        self.batch_size = batch_size
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch["kind"] == ROW
        texts = [str(t) for t in batch["text"][rows]]
        vectors = np.zeros((len(rows), self.encoder.dim), dtype=np.float32)
        truncated_before, seconds_before = self.encoder.stats.truncated, self.encoder.stats.seconds
        if texts:
            vectors[rows] = self.encoder.encode(texts, batch_size=self.batch_size)
        stats = np.zeros((len(rows), 2), dtype=np.float64)
        if len(rows):  # the batch's encode stats ride on its first item
            stats[0] = (self.encoder.stats.truncated - truncated_before, self.encoder.stats.seconds - seconds_before)
        node = np.full(len(rows), self.node, dtype=object)
        return {"kind": batch["kind"], "item": batch["item"], "vector": vectors, "stats": stats, "node": node}


def _encoder_device(gpu: bool, backend: str) -> str | None:
    """``cuda`` for a torch encoder given a GPU that torch can see, else the CPU (the ONNX backends run on
    the CPU; the Encoder feeds its inputs to wherever the model is)."""
    if not gpu or backend != "torch":
        return None
    import torch

    return "cuda" if torch.cuda.is_available() else None


# ------------------------------------------------------------------------------------ the build


def _decode(batch: dict[str, np.ndarray]) -> tuple[list[Record], np.ndarray, list[Reject]]:
    records: list[Record] = []
    rejects: list[Reject] = []
    keep = batch["kind"] == ROW
    for kind, payload in zip(batch["kind"], batch["item"], strict=True):
        data = json.loads(str(payload))
        if kind == ROW:
            records.append(Record(**data))
        else:
            rejects.append(Reject(**data))
    return records, np.asarray(batch["vector"][keep], dtype=np.float32), rejects


def run_ray_build(opts: BuildOptions, ray_opts: RayOptions) -> BuildResult:
    """``build --engine ray``: encode on a Ray cluster, write and publish here (see the module doc)."""
    ray = import_ray()
    started = time.perf_counter()
    root = IndexRoot(opts.output)
    with root.lock(), disk_errors(root):
        name = "build-" + _fingerprint(opts, None, "build")
        connected = connect(ray, ray_opts.address, ray_opts.object_store_mb)
        try:
            # the driver loads the model once too: the manifest records its fingerprint and dimension,
            # and an ONNX backend's export is cached here before the actors load it
            local = Encoder(
                model=opts.model, pooling=opts.pooling, backend=opts.backend, max_seq_length=opts.max_seq_length
            )
            meta = encoder_meta(local)
            del local
            writer = IndexWriter(
                root,
                name,
                meta,
                IndexRequest(opts.index_type, opts.index_params),
                resume=opts.resume,
                segment_rows=opts.segment_rows,
                shards=opts.shards,
                kind="build",
            )
            with disk_errors(root, writer):
                truncated, encode_s, n_nodes = _ingest(ray, writer, opts, ray_opts)
                rows, n_rejects = writer.consumed - writer.rejects, writer.rejects
                engine = {
                    "engine": "ray",
                    "encoders": ray_opts.encoders,
                    "cpus_per_encoder": ray_opts.cpus,
                    "gpus_per_encoder": ray_opts.gpus,
                }
                encoding = {
                    "encoder_nodes": n_nodes,
                    "encode_seconds": round(encode_s, 3),  # summed over the actors
                    "encode_per_second": round(rows / encode_s, 1) if encode_s > 0 else 0.0,
                }
                result = _publish(writer, root, opts, "build", rows, n_rejects, truncated, engine, encoding)
        finally:
            if connected:
                ray.shutdown()
        _finish(root, opts.keep, None, result)
    result.seconds = time.perf_counter() - started
    return result


def _ingest(ray: Any, writer: IndexWriter, opts: BuildOptions, ray_opts: RayOptions) -> tuple[int, float, int]:
    """Stream the inputs through the encoder actors, committing every batch: (truncated, encode s, nodes)."""
    from ray.data import ActorPoolStrategy, DataContext

    resumed = writer.consumed
    if resumed:
        log.info("resuming: %d input rows already committed", resumed)
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # internal ids follow the input order, as locally
    ctx.enable_progress_bars = False  # one progress bar for the whole job: ours
    # Ray Data cuts the read stream into blocks by bytes: aim at one block per chunk, so the encoder
    # actors share even small inputs and a batch is about a chunk (the first chunk gives the size)
    first = next(_read_blocks(opts, writer.first_iid, resumed, opts.chunk_size), None)
    if first is not None:
        ctx.target_max_block_size = max(1 << 12, min(int(first.nbytes), ctx.target_max_block_size or 1 << 27))
    ds = ray.data.read_datasource(
        _datasource(opts, writer.first_iid, resumed, opts.chunk_size), override_num_blocks=1, num_cpus=0.25
    )
    ds = ds.map_batches(
        EncodeActor,
        fn_constructor_kwargs={
            "model": opts.model,
            "pooling": opts.pooling,
            "backend": opts.backend,
            "max_seq_length": opts.max_seq_length,
            "batch_size": opts.batch_size,
            "threads": max(1, int(ray_opts.cpus)),
            "gpu": ray_opts.gpus > 0,
        },
        compute=ActorPoolStrategy(size=ray_opts.encoders),
        batch_size=opts.chunk_size,
        batch_format="numpy",
        num_cpus=ray_opts.cpus,
        num_gpus=ray_opts.gpus or None,
        max_restarts=ACTOR_RESTARTS,
        max_task_retries=ACTOR_RESTARTS,
    )
    bar = _progress_bar(opts, resumed)
    truncated, encode_s = 0, 0.0
    nodes: set[str] = set()
    quiet = _ReportedByTheBuild()
    for name in _RAY_DATA_ERROR_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            records, vectors, rejects = _decode(batch)
            writer.add_chunk(records, vectors, rejects, len(batch["kind"]), opts.on_duplicate)
            truncated += int(batch["stats"][:, 0].sum())
            encode_s += float(batch["stats"][:, 1].sum())
            nodes.update(str(n) for n in batch["node"])
            if bar is not None:
                bar.update(len(batch["kind"]))
                bar.set_postfix(rejects=writer.rejects, truncated=truncated, refresh=False)
    except SemsearchError:
        raise
    except Exception as e:  # a Ray error: actor died past its restarts, node lost, task failed
        if isinstance(e, OSError | MemoryError) or type(e).__module__.startswith("sqlite3"):
            raise
        log.debug("the Ray build failed", exc_info=e)
        raise RayBuildError(
            f"the Ray build failed and nothing was published: {type(e).__name__}: {_first_line(e)}; "
            f"{writer.consumed} input rows were committed before it (--resume continues from there)"
        ) from e
    finally:
        for name in _RAY_DATA_ERROR_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
        if bar is not None:
            bar.close()
    log.info("encoded on %d node(s)", len(nodes))
    return truncated, encode_s, len(nodes)


class _ReportedByTheBuild(logging.Filter):
    """Keeps Ray Data's error records of the failure it is about to raise (tracebacks) off the console:
    the build reports that error itself, as one ``error:`` line (its traceback with ``-v``). They still
    go to Ray Data's log file (``hide`` is Ray Data's own console-only switch)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            record.hide = True
        return True


# where Ray Data logs a failed execution before raising it
_RAY_DATA_ERROR_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
