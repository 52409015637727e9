"""``covidxray predict --engine ray``: batch prediction on a Ray cluster (or a local Ray instance) with Ray Data.

The work, for archives that outgrow one machine:

1. the driver lists the images (a folder, a glob, a manifest, or a ``scheme://`` URI read through a pyarrow
   filesystem) and numbers them; the list is cut into *shards* of ``shard_size`` images;
2. Ray Data streams ``(index, path)`` rows through :meth:`ray.data.Dataset.map_batches` to a pool of actors
   (``concurrency=workers``, ``num_cpus`` each). Each actor loads the model **once** (the model files travel
   through Ray's object store, so workers need no copy of the model) and predicts each batch with the same
   :class:`~covidxray.prediction.predictor.Predictor` as the local engine: the one loader
   (:mod:`covidxray.imageio`), the one preprocessing, the same backend, the same input guard and decision rule.
   Images are decoded where they are scored, so only paths go in and small result rows come out -- no pixel
   arrays cross the network or the object store;
3. the driver gathers the rows and writes each shard as a Parquet file (``part-00000.parquet``, ...) as soon as
   all its rows are in, so ``--resume`` skips the shards already written.

``--out DIR`` (any name not ending in ``.csv``/``.jsonl``) keeps the shards (plus ``_covidxray_run.json``);
``--out preds.csv`` (or ``.jsonl``, or stdout)
merges them, in input order, through the local engine's :class:`~covidxray.prediction.batch.RowWriter`, giving
the very file the local engine writes. A file that cannot be read is a row with its error, never a failed job.

Ray is imported lazily, inside the functions that need it: nothing else in covidxray imports ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covidxray.bundle import resolve_model_path
from covidxray.imageio import IMAGE_SUFFIXES, ImageLoadError, load_image_bytes
from covidxray.prediction.batch import WARNING_SEPARATOR, BatchSummary, RowWriter
from covidxray.prediction.predictor import Prediction, Predictor

RUN_FILE = "_covidxray_run.json"
SHARD_PATTERN = "part-{:05d}.parquet"
DEFAULT_SHARD_SIZE = 10_000
RUN_FORMAT = 2  # 2: shards carry the decision (deciding point, threshold) and the lung facts
MODEL_FILES = {"torch": ("config.json", "model.safetensors")}


class RayEngineError(ValueError):
    """A run that cannot start as asked (an output in the way, a resume that does not match): usage error."""


@dataclass
class RayPredictOptions:
    """How ``predict --engine ray`` runs. ``workers=None`` uses every CPU of the cluster (one actor per
    ``cpus_per_worker``); each actor reserves ``cpus_per_worker`` CPUs (None: the cluster's CPUs split between
    ``workers`` actors, or 1 when ``workers`` is None -- :func:`worker_cpus`) and runs that many compute
    threads; ``address=None`` joins a running Ray of this process or starts a local one."""

    model: str | None = None
    backend: str = "onnx"
    strict: bool = False
    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    batch_size: int = 32
    shard_size: int = DEFAULT_SHARD_SIZE
    resume: bool = False
    progress: bool = True


@dataclass
class RayPredictResult:
    """What a run did: the summary over every row of the output, and what was skipped or written."""

    summary: BatchSummary
    classes: list[str]
    decision_rule: str
    model_version: str
    output: str
    shards_total: int
    shards_skipped: int
    workers: int = 0
    rows_skipped: int = 0
    timings: dict[str, float] = field(
        default_factory=dict
    )  # seconds: connect, first_row, stream, merge, total

    def timing_line(self) -> str:
        """One line on where the time went (the benchmark reads it too)."""
        t = self.timings
        if "stream" not in t:
            return f"timing: {t.get('total', 0):.1f} s in all (nothing left to predict)"
        rows = self.summary.total - self.rows_skipped
        rate = (rows - 1) / t["stream"] if t["stream"] > 0 and rows > 1 else float("nan")
        return (
            f"timing: {t['total']:.1f} s in all: Ray connect {t['connect']:.1f} s, first rows after "
            f"{t['first_row']:.1f} s, then {rate:.0f} images/s for {t['stream']:.1f} s, merge/summary {t['merge']:.2f} s"
        )


# -- the image list --------------------------------------------------------------------------------------------
def is_uri(path: str) -> bool:
    """``s3://...``, ``gs://...``, ``hdfs://...``, ``file://...``: read through a pyarrow filesystem."""
    head, sep, _ = str(path).partition("://")
    return bool(sep) and head.isalnum() and len(head) > 1


def list_uri_images(spec: str) -> list[str]:
    """Image files under a URI prefix (recursively, by extension), sorted, as URIs; via ``pyarrow.fs``."""
    from pyarrow import fs as pafs

    try:
        filesystem, base = pafs.FileSystem.from_uri(spec)
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as exc:
        raise ImageLoadError(spec, "missing", f"cannot list this location: {exc}", "check the URI") from exc
    prefix = spec.rstrip("/")
    base = base.rstrip("/")
    paths = sorted(
        prefix + "/" + info.path[len(base) :].lstrip("/")
        for info in infos
        if info.type == pafs.FileType.File
        and Path(info.path).suffix.lower() in IMAGE_SUFFIXES
        and not Path(info.path).name.startswith(".")
    )
    if not paths:
        raise ImageLoadError(
            spec,
            "empty",
            "no image files here",
            f"expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}",
        )
    return paths


def paths_digest(paths: list[str]) -> str:
    """sha1 of the ordered path list: a resumed run must predict the same images in the same order."""
    h = hashlib.sha1()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


# -- the actor -------------------------------------------------------------------------------------------------
def model_files(model: str | None, backend: str) -> dict[str, bytes]:
    """The files a worker needs to load the model: ``model.onnx`` (onnx) or the bundle's config and weights."""
    p = resolve_model_path(model, backend)
    if backend == "onnx":
        return {p.name: p.read_bytes()}
    return {name: (p / name).read_bytes() for name in MODEL_FILES["torch"]}


def build_predictor(folder: Path, backend: str, strict: bool, threads: int) -> Predictor:
    """A predictor on model files written to ``folder``, with ``threads`` compute threads."""
    if backend == "onnx":
        from covidxray.prediction.onnx_backend import OnnxBackend

        return Predictor(OnnxBackend(next(folder.glob("*.onnx")), threads=threads), strict=strict)
    import torch

    from covidxray.prediction.torch_backend import TorchBackend

    torch.set_num_threads(threads)
    return Predictor(TorchBackend(folder), strict=strict)


class _UriReader:
    """Reads ``scheme://`` paths through pyarrow filesystems (one per scheme and host, kept open)."""

    def __init__(self) -> None:
        self._filesystems: dict[str, Any] = {}

    def read(self, uri: str) -> bytes:
        from pyarrow import fs as pafs

        key = uri.split("/", 3)[:3]
        k = "/".join(key)
        if k not in self._filesystems:
            self._filesystems[k] = pafs.FileSystem.from_uri(uri)[0]
        _, path = pafs.FileSystem.from_uri(uri)
        with self._filesystems[k].open_input_file(path) as f:
            return f.read()


def predict_paths(
    predictor: Predictor, paths: list[str], reader: _UriReader | None = None
) -> list[Prediction]:
    """Predict local paths and URIs, in order; a file that cannot be used is a row with its error.

    Local paths go through :meth:`Predictor.predict_batch` exactly as in the local engine; URIs are read with
    pyarrow and decoded by the same loader. Should the whole batch fail (e.g. the backend raises), each image is
    retried alone so that only the images that fail become error rows.
    """
    items: list[Any] = []
    early: dict[int, Prediction] = {}
    for i, p in enumerate(paths):
        if is_uri(p):
            try:
                items.append(load_image_bytes((reader or _UriReader()).read(p), p))
            except ImageLoadError as exc:
                early[i] = Prediction(p, None, error=str(exc), error_reason=exc.reason)
            except Exception as exc:  # missing object, permission, network: pyarrow raises OSError and others
                early[i] = Prediction(
                    p, None, error=f"{p}: cannot be read: {type(exc).__name__}: {exc}", error_reason="missing"
                )
        else:
            items.append(p)
    todo = [i for i in range(len(paths)) if i not in early]
    kept = items
    try:
        preds = predictor.predict_batch(kept, batch_size=max(1, len(kept)))
    except Exception:
        preds = []
        for it, i in zip(kept, todo, strict=True):
            try:
                preds.append(predictor.predict(it))
            except Exception as exc:
                preds.append(
                    Prediction(
                        paths[i],
                        None,
                        error=f"{paths[i]}: prediction failed: {type(exc).__name__}: {exc}",
                        error_reason="error",
                    )
                )
    out: list[Prediction] = []
    it_preds = iter(preds)
    for i, p in enumerate(paths):
        pred = early.get(i) or next(it_preds)
        pred.path = p
        out.append(pred)
    return out


def rows_from_predictions(indices: Iterable[int], preds: list[Prediction], classes: list[str]) -> dict:
    """Columns of one batch of results: index, path, label, p_<class>, warnings, error, error_reason, decision
    and lungs (JSON)."""
    cols: dict[str, Any] = {
        "index": np.asarray(list(indices), dtype=np.int64),
        "path": np.asarray([p.path or "" for p in preds], dtype=object),
        "label": np.asarray([p.label or "" for p in preds], dtype=object),
    }
    for c in classes:
        cols[f"p_{c}"] = np.asarray([p.probabilities.get(c, np.nan) for p in preds], dtype=np.float64)
    cols["warnings"] = np.asarray([WARNING_SEPARATOR.join(p.warnings) for p in preds], dtype=object)
    cols["error"] = np.asarray([p.error or "" for p in preds], dtype=object)
    cols["error_reason"] = np.asarray([p.error_reason or "" for p in preds], dtype=object)
    # the deciding operating point and the lung facts travel as JSON, so a shard gives back the local Prediction
    cols["decision"] = np.asarray([json.dumps(p.decision) if p.decision else "" for p in preds], dtype=object)
    cols["lungs"] = np.asarray([json.dumps(p.lungs) if p.lungs else "" for p in preds], dtype=object)
    return cols


class ImageScorer:
    """The Ray Data actor: loads the model once, then predicts batches of ``{"index", "path"}`` rows."""

    def __init__(self, files_ref: list, backend: str, strict: bool, threads: int):
        import ray

        files = ray.get(
            files_ref[0]
        )  # wrapped in a list so Ray hands over the reference, not a copy per call
        self._dir = Path(tempfile.mkdtemp(prefix="covidxray-model-"))
        for name, data in files.items():
            (self._dir / name).write_bytes(data)
        self.predictor = build_predictor(self._dir, backend, strict, max(1, int(threads)))
        self.reader = _UriReader()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        preds = predict_paths(self.predictor, paths, self.reader)
        return rows_from_predictions(batch["index"], preds, self.predictor.classes)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True)


# -- shards ----------------------------------------------------------------------------------------------------
def shard_schema(classes: list[str]):
    import pyarrow as pa

    return pa.schema(
        [
            ("index", pa.int64()),
            ("path", pa.string()),
            ("label", pa.string()),
            *((f"p_{c}", pa.float64()) for c in classes),
            ("warnings", pa.string()),
            ("error", pa.string()),
            ("error_reason", pa.string()),
            ("decision", pa.string()),
            ("lungs", pa.string()),
        ]
    )


def write_shard(path: Path, columns: dict[str, list], classes: list[str]) -> None:
    """One shard as Parquet, rows sorted by index, empty strings as nulls; written to a temporary file first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = np.argsort(np.asarray(columns["index"], dtype=np.int64), kind="stable")
    data: dict[str, list] = {}
    for name, values in columns.items():
        v = [values[k] for k in order]
        if name in ("label", "error", "error_reason", "decision", "lungs"):
            v = [x or None for x in v]
        elif name.startswith("p_"):
            v = [None if x != x else float(x) for x in v]  # NaN (not predicted) -> null
        data[name] = v
    table = pa.table(data, schema=shard_schema(classes))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_shard_predictions(path: Path, classes: list[str]) -> list[Prediction]:
    """The rows of one shard as :class:`Prediction` objects (in index order)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    preds = []
    for k in range(len(t["index"])):
        probs = {c: t[f"p_{c}"][k] for c in classes if t[f"p_{c}"][k] is not None}
        w = t["warnings"][k]
        decision = json.loads(t["decision"][k]) if t["decision"][k] else None
        preds.append(
            Prediction(
                t["path"][k],
                t["label"][k],
                probs,
                w.split(WARNING_SEPARATOR) if w else [],
                error=t["error"][k],
                error_reason=t["error_reason"][k],
                covid_threshold=(decision or {}).get("threshold"),
                decision=decision,
                lungs=json.loads(t["lungs"][k]) if t["lungs"][k] else None,
            )
        )
    return preds


# -- the run ---------------------------------------------------------------------------------------------------
FILE_SUFFIXES = (".csv", ".jsonl")


def is_dir_output(out: Path | None) -> bool:
    """``--out`` names a folder of Parquet shards unless it ends in ``.csv`` or ``.jsonl`` (one merged file)."""
    return out is not None and (out.is_dir() or out.suffix.lower() not in FILE_SUFFIXES)


def _work_dir(out: Path | None) -> tuple[Path, bool]:
    """Where the shards go, and whether that place is temporary (stdout output)."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="covidxray-ray-")), True
    if is_dir_output(out):
        return out, False
    return out.with_name(out.name + ".parts"), False


def _check_resume(work: Path, meta: dict[str, Any], resume: bool, out: Path | None) -> set[int]:
    """The shards already written that this run may keep; raises :class:`RayEngineError` if they do not fit."""
    run_file = work / RUN_FILE
    if out is not None and not is_dir_output(out) and out.exists() and not run_file.exists():
        if resume:
            raise RayEngineError(
                f"{out} exists and {work} does not: nothing to resume (the run that wrote it finished); "
                "remove the file or choose another --out"
            )
        raise RayEngineError(f"{out} exists: remove it or choose another --out")
    if not run_file.exists():
        if work.is_dir() and any(work.iterdir()):
            raise RayEngineError(
                f"{work} is not empty and holds no {RUN_FILE}: it is not a covidxray Ray output; "
                "choose an empty or new folder"
            )
        return set()
    if not resume:
        raise RayEngineError(
            f"{work} holds shards of an earlier run: pass --resume to continue it, or remove the folder"
        )
    old = json.loads(run_file.read_text())
    for key in ("format", "n_images", "paths_sha1", "shard_size", "model_version", "backend", "strict"):
        if old.get(key) != meta.get(key):
            raise RayEngineError(
                f"--resume: {work} was written with {key}={old.get(key)!r}, this run has {meta.get(key)!r}; "
                "resume with the same images, model and options, or start a new --out"
            )
    done = set()
    for k in range((meta["n_images"] + meta["shard_size"] - 1) // meta["shard_size"]):
        if (work / SHARD_PATTERN.format(k)).is_file():
            done.add(k)
    return done


def predict_with_ray(
    paths: list[str],
    out: Path | None,
    options: RayPredictOptions,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> RayPredictResult:
    """Predict ``paths`` on Ray and write ``out`` (a ``.csv``/``.jsonl`` file, else a folder of Parquet shards;
    stdout when None). Raises ``ModelLoadError`` (bad model) and
    :class:`RayEngineError` (output in the way, resume mismatch) before any work starts."""
    t0 = time.perf_counter()
    if options.shard_size < 1 or options.batch_size < 1:
        raise RayEngineError("--batch-size and the shard size must be at least 1")
    if options.workers is not None and options.workers < 1:
        raise RayEngineError(f"--workers must be at least 1, got {options.workers}")
    files = model_files(options.model, options.backend)
    with tempfile.TemporaryDirectory(prefix="covidxray-model-") as tmp:  # loads here first: fail fast
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        local = build_predictor(Path(tmp), options.backend, options.strict, 1)
    classes = local.classes
    n = len(paths)
    n_shards = (n + options.shard_size - 1) // options.shard_size
    meta = {
        "format": RUN_FORMAT,
        "n_images": n,
        "paths_sha1": paths_digest(paths),
        "shard_size": options.shard_size,
        "model_version": local.backend.version,
        "backend": local.backend.name,
        "strict": options.strict,
        "classes": classes,
        "columns": [f.name for f in shard_schema(classes)],
        "decision_rule": local.decision_rule(),
    }
    work, temporary = _work_dir(out)
    done = _check_resume(work, meta, options.resume, out) if not temporary else set()
    created = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    (work / RUN_FILE).write_text(json.dumps({**meta, "complete": False}, indent=2) + "\n")
    pending = [k for k in range(n_shards) if k not in done]
    result = RayPredictResult(
        BatchSummary(),
        classes,
        local.decision_rule(),
        local.backend.version,
        str(out) if out else "stdout",
        n_shards,
        len(done),
        rows_skipped=sum(min(options.shard_size, n - k * options.shard_size) for k in done),
    )
    try:
        if pending:
            result.workers = _run_shards(
                paths, pending, work, files, classes, options, result.rows_skipped, log, result.timings
            )
        t_merge = time.perf_counter()
        if out is None or not is_dir_output(out):
            _merge(work, n_shards, classes, out, result.summary)
            if not temporary:
                shutil.rmtree(work)
        else:
            for k in range(n_shards):
                for pred in read_shard_predictions(work / SHARD_PATTERN.format(k), classes):
                    result.summary.add(pred)
            (work / RUN_FILE).write_text(
                json.dumps({**meta, "complete": True, "summary": result.summary.lines()}, indent=2) + "\n"
            )
    except BaseException:
        if created and not temporary and not any(work.glob("part-*.parquet")):
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume: leave no folder in the way
        raise
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    result.timings["merge"] = time.perf_counter() - t_merge
    result.timings["total"] = time.perf_counter() - t0
    return result


def worker_cpus(
    cpus_per_worker: float | None, workers: int | None = None, cluster_cpus: float = 1.0
) -> float:
    """CPUs each actor reserves (and its compute threads): ``cpus_per_worker`` if given; else, with ``--workers
    N``, the cluster's CPUs split evenly between the N actors (whole CPUs, at least 1), so ``--workers 1`` gets
    the resources the local engine uses; else 1 (one actor per CPU, the fastest layout measured here: two 1-CPU
    actors beat the local engine by ~20 % on 2 cores; BENCHMARKS.md, "Ray batch prediction")."""
    if cpus_per_worker is not None:
        return float(cpus_per_worker)
    if workers:
        return float(max(1, int(cluster_cpus // workers)))
    return 1.0


def _run_shards(
    paths: list[str],
    shards: list[int],
    work: Path,
    files: dict[str, bytes],
    classes: list[str],
    options: RayPredictOptions,
    rows_done: int,
    log: Callable[[str], None],
    timings: dict[str, float],
) -> int:
    """Predict the rows of ``shards`` on Ray; write each shard when all its rows are in. Returns the actor count."""
    import pyarrow as pa

    from covidxray.evaluation.ray_trials import connect

    t0 = time.perf_counter()
    started, ray = connect(options.address, log)
    timings["connect"] = time.perf_counter() - t0
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # one bar: ours, counting images
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per_worker = worker_cpus(options.cpus_per_worker, options.workers, cpus)
        workers = options.workers or max(1, int(cpus // per_worker))
        if workers * per_worker > cpus:  # the actors would wait for CPUs forever
            raise RayEngineError(
                f"--workers {workers} x --cpus-per-worker {per_worker:g} needs "
                f"{workers * per_worker:g} CPUs; the Ray cluster has {cpus:g}"
            )
        s = options.shard_size
        expected = {k: min(s, len(paths) - k * s) for k in shards}
        # every actor gets work even for a few images (a batch is at most a worker's share), and blocks of up
        # to 8 batches keep the block count modest for millions of images
        todo = sum(expected.values())
        batch = max(1, min(options.batch_size, -(-todo // workers)))
        block = batch * max(1, min(8, todo // (4 * workers * batch)))
        tables = []
        for k in shards:
            for lo in range(k * s, k * s + expected[k], block):
                hi = min(lo + block, k * s + expected[k])
                tables.append(pa.table({"index": np.arange(lo, hi, dtype=np.int64), "path": paths[lo:hi]}))
        ds = ray.data.from_arrow(tables).map_batches(
            ImageScorer,
            fn_constructor_args=([ray.put(files)], options.backend, options.strict, per_worker),
            batch_size=batch,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=per_worker,
        )
        buffers: dict[int, dict[str, list]] = {}
        bar = _progress_bar(len(paths), rows_done, options.progress)
        t1 = time.perf_counter()
        first = None
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if first is None:
                    first = time.perf_counter()
                    timings["first_row"] = first - t1
                for k in np.unique(batch["index"] // s):
                    mask = batch["index"] // s == k
                    buf = buffers.setdefault(int(k), {name: [] for name in batch})
                    for name, values in batch.items():
                        buf[name].extend(values[mask].tolist())
                    if len(buf["index"]) == expected[int(k)]:
                        write_shard(work / SHARD_PATTERN.format(int(k)), buffers.pop(int(k)), classes)
                if bar is not None:
                    bar.update(len(batch["index"]))
        finally:
            if bar is not None:
                bar.close()
        timings["stream"] = time.perf_counter() - (first or t1)
        if buffers:  # cannot happen unless Ray lost rows; say so rather than write an incomplete file
            missing = {k: expected[k] - len(b["index"]) for k, b in buffers.items()}
            raise RuntimeError(f"Ray returned too few rows for shard(s) {missing}; rerun with --resume")
        return workers
    finally:
        if started:
            ray.shutdown()


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        desc="ray",
    )


def _merge(work: Path, n_shards: int, classes: list[str], out: Path | None, summary: BatchSummary) -> None:
    """Every shard, in order, through the local engine's RowWriter: the local engine's file, row for row."""
    jsonl = bool(out and out.suffix.lower() == ".jsonl")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp") if out else None
    stream = open(tmp, "w", newline="", encoding="utf-8") if tmp else sys.stdout  # noqa: SIM115
    try:
        writer = RowWriter(stream, classes, jsonl=jsonl)
        for k in range(n_shards):
            for pred in read_shard_predictions(work / SHARD_PATTERN.format(k), classes):
                writer.write(pred)
                summary.add(pred)
    finally:
        if tmp:
            stream.close()
        else:
            stream.flush()
    if tmp and out:
        os.replace(tmp, out)
