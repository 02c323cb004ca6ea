"""Ablation of the light heads on one feature set: pooling, LSTM, BiLSTM, soft aggregations, K.

Given a workspace whose features are extracted (``vpipe run`` does that), this trains,
for every seed, the configurations of the papers' ablations on the same data split
and with the same optimisation settings (:data:`vpipe.stages.main_job.QUICK`, the
settings ``vpipe run`` trains with):

1. features + average pooling            (temporal none,   aggregation avg)
2. + LSTM                                (temporal lstm,   aggregation avg)
3. + BiLSTM                              (temporal bilstm, aggregation avg)
4. BiLSTM + softbof / softfv / softvlad / concat / mean (``--out-dim`` for mean),
   with the pipeline's K
5. the best soft variant of 4 (by mean *validation* accuracy over the seeds, never by
   test accuracy) again with every K of ``--clusters``
6. the classic encodings (hard BoF, VLAD, improved FV + linear SVM, from
   :func:`vpipe.stages.encode.run_encode`) for the pipeline's K and every K of
   ``--clusters``; they are deterministic, so seeds do not apply to them.
7. with ``--segments S``: rows 1-3 again with the head's ``segments=S`` (each video's
   steps pooled in S consecutive parts joined in order); ``--temporal-only`` leaves out
   4-5 (and 6 with ``--skip-baselines``) when only the temporal rows are wanted. With
   ``--soft-segments S`` as well, rows 4-5 pool the same S parts, and the soft claims
   are tested against the average pooling of S segments: on descriptors whose order is
   lost in a whole-video code (bench/ablation.md), that is where the heads learn.
8. with ``--spectrum C``: every head row with the head's ``spectrum=C`` (the temporal
   spectra of C learnt channels joined to the pooled code, :mod:`vpipe.models.spectrum`).

Reported per configuration: mean ± sample standard deviation over the seeds of test
accuracy, macro precision, macro recall, top-5, parameter count and test milliseconds
per video (forward pass only), and test accuracy per class family of the synthetic
dataset (:data:`vpipe.data.synthetic.FAMILIES`), plus the share of the order family's
test videos predicted as their time-reversed partner (``order swap``), which is what
a model that ignores temporal order gets wrong. The descriptors per centroid of each K
are stated, because k-means with few descriptors per centre fits noise.

A classic encoding whose baseline fails (e.g. an SVM input with NaN) is reported as
failed with its error; the other encodings of that K are still run and reported.

Runs are named ``abl-<temporal>-<aggregation>[-k<K>]-s<seed>`` and trained with
``reuse=True``: a rerun skips finished runs (an identical finished run of another name,
such as the one ``vpipe run`` trains, is reused as well). Each run uses one torch
thread: on a busy 2-core machine two threads were many times slower.

    vpipe run --dataset synthetic --workspace /tmp/ablation-ws --videos-per-class 10 --clusters 16
    python bench/ablation.py --workspace /tmp/ablation-ws           # full protocol: seeds 0-4
    # (only the extracted features are needed: the bench fits its own codebooks and heads)
    python bench/ablation.py --workspace /tmp/ablation-ws --seeds 0,1,2

Writes JSON (``--out``, default bench/results/ablation.json) with machine information
and every run, and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from vpipe.data.synthetic import FAMILIES, REVERSED_PAIRS
from vpipe.errors import ConfigError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.encode import EncodeOptions, run_encode
from vpipe.models.heads.registry import HeadInput
from vpipe.stages.main_job import QUICK, QUICK_HEAD
from vpipe.train.config import TrainConfig
from vpipe.train.data import InputReader, make_splits
from vpipe.train.trainer import RunResult, existing_run, train
from machine import cpu_model  # bench/machine.py, beside this script

TEMPORAL_ROWS = (("none", "features + avg pool"), ("lstm", "LSTM + avg pool"), ("bilstm", "BiLSTM + avg pool"))
SOFT = ("softbof", "softfv", "softvlad", "concat", "mean")
BASELINE_METHODS = ("bof", "vlad", "fv")
METRICS = ("accuracy", "macro_precision", "macro_recall", "top5", "parameters", "test_ms_per_video")
#: Both directions of every time-reversed class pair.
PARTNERS = {**REVERSED_PAIRS, **{forward: backward for backward, forward in REVERSED_PAIRS.items()}}


# --------------------------------------------------------------------------- metrics


def family_scores(class_names: Sequence[str], confusion: np.ndarray) -> dict[str, float | None]:
    """Accuracy per family and the order family's share predicted as the reversed partner.

    ``confusion[i, j]`` counts test videos of ``class_names[i]`` predicted as
    ``class_names[j]``. A family with no test videos gets None.
    """
    index = {name: i for i, name in enumerate(class_names)}
    out: dict[str, float | None] = {}
    for family, members in FAMILIES.items():
        rows = [index[m] for m in members if m in index]
        support = int(confusion[rows].sum()) if rows else 0
        out[family] = float(sum(confusion[i, i] for i in rows) / support) if support else None
    swapped = total = 0
    for name, partner in PARTNERS.items():
        if name in index and partner in index:
            swapped += int(confusion[index[name], index[partner]])
            total += int(confusion[index[name]].sum())
    out["order_swap"] = float(swapped / total) if total else None
    return out


def run_record(result: RunResult, seconds: float) -> dict[str, Any]:
    """What the table needs from one trained run."""
    metrics = result.metrics
    class_names = [row["class"] for row in metrics["per_class"]]
    best = result.history.loc[result.history["epoch"] == result.best_epoch].iloc[0]
    return {
        "run_id": result.run_id,
        "reused": result.reused,
        "epochs": int(len(result.history)),
        "best_epoch": int(result.best_epoch),
        "best_val_acc": float(best["val_acc"]),
        "best_val_loss": float(best["val_loss"]),
        "train_seconds": float(result.history["seconds"].sum()),
        "wall_seconds": seconds,
        **{key: metrics[key] for key in METRICS},
        "families": family_scores(class_names, np.asarray(metrics["confusion"])),
    }


def mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) of the non-None values."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"mean": statistics.fmean(present), "std": std, "n": len(present)}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (*METRICS, "best_val_acc", "best_val_loss", "epochs", "train_seconds")
    summary = {key: mean_std([r[key] for r in records]) for key in keys}
    summary["families"] = {
        family: mean_std([r["families"][family] for r in records]) for family in (*FAMILIES, "order_swap")
    }
    return summary


# --------------------------------------------------------------------------- data facts


def dataset_facts(ws: DatasetWorkspace, features_name: str, layer: str, seeds: Sequence[int], val_fraction: float,
                  ks: Sequence[int]) -> dict[str, Any]:  # fmt: skip
    """Split sizes, time steps per video and descriptors per centroid for every K.

    Two descriptor pools are fitted with k-means: the classic codebook (``vpipe encode``)
    uses every train video; a head's centres are fitted on its fit videos only (train
    minus the validation videos carved out for early stopping).
    """
    manifest = ws.read_manifest()
    train_ids = set(manifest.loc[(manifest["status"] == "ok") & (manifest["split"] == "train"), "video_id"])
    with InputReader(ws, [HeadInput("x", (features_name,), layer)]) as reader:
        splits = make_splits(ws, reader, val_fraction, seeds[0])
        features = reader.sets[features_name]
        sequences = {v: features.sequence(v, layer=layer, view=0) for v in splits.labels}
        provenance = features.provenance
    steps = {v: int(x.shape[0]) for v, x in sequences.items()}
    stacked = np.concatenate(list(sequences.values()))
    values = stacked.astype(np.float64)
    video_means = np.stack([x.astype(np.float64).mean(0) for x in sequences.values()])
    train_steps = sum(n for v, n in steps.items() if v in train_ids)
    fit_steps = sum(steps[v] for v in splits.train)
    return {
        "videos": {"fit": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "classes": len(splits.class_names),
        "steps_per_video": mean_std(list(steps.values())),
        "train_descriptors": train_steps,
        "fit_descriptors": fit_steps,
        "descriptors_per_centroid": {
            str(k): {"encode_codebook": train_steps / k, "head_codebook": fit_steps / k} for k in ks
        },
        # The scale of what a head reads: random-init backbones can give tiny activations,
        # and the float16 cache then keeps only a few distinct values.
        "feature_values": {
            "stored_dtype": str(stacked.dtype),
            "abs_max": float(np.abs(values).max()),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "distinct_values": int(np.unique(stacked).size),
            "zero_fraction": float((stacked == 0).mean()),
            "mean_std_of_video_means_per_dim": float(video_means.std(0).mean()),
        },
        "features_provenance": {
            key: provenance.get(key) for key in ("backbone", "stream", "weights", "weights_sha256", "plan")
        }
        | {"sampler": provenance.get("sampler")},
    }


# --------------------------------------------------------------------------- training


_TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)


def make_config(flat: dict[str, Any]) -> TrainConfig:
    """A ``bilstm-softagg`` config from one flat dict of training and head options."""
    head = {k: v for k, v in flat.items() if k not in _TRAIN_FIELDS}
    return TrainConfig(head_options=head, **{k: v for k, v in flat.items() if k in _TRAIN_FIELDS})


def run_id_for(config: TrainConfig) -> str:
    return f"abl-{config.head_cls.tag(config.head_options)}-s{config.seed}"


def free_run_id(ws: DatasetWorkspace, wanted: str) -> str:
    """``wanted``, or ``wanted-2``, ``-3`` ... when a directory of that name exists.

    A directory under the wanted name that holds no identical finished run (a killed
    run, or one trained from other inputs) is left alone for inspection.
    """
    candidate, n = wanted, 1
    while (ws.runs_dir / candidate).exists():
        n += 1
        candidate = f"{wanted}-{n}"
    return candidate


def train_one(ws: DatasetWorkspace, config: TrainConfig, threads: int) -> dict[str, Any]:
    start = time.perf_counter()
    result = existing_run(ws, config)
    if result is None:
        result = train(ws, config, run_id=free_run_id(ws, run_id_for(config)), reuse=True, threads=threads)
    return run_record(result, time.perf_counter() - start)


def train_group(ws: DatasetWorkspace, label: str, base: dict[str, Any], seeds: Sequence[int], threads: int,
                log: Any) -> dict[str, Any]:  # fmt: skip
    """Train (or reuse) one configuration for every seed; return its row."""
    records = []
    for seed in seeds:
        config = make_config({**base, "seed": seed})
        record = train_one(ws, config, threads)
        records.append(record)
        state = "reused" if record["reused"] else f"{record['wall_seconds']:.0f} s"
        log(f"  {label:<28} seed {seed}: acc {record['accuracy']:.3f}  val {record['best_val_acc']:.3f}  "
            f"epochs {record['epochs']}  ({state})")  # fmt: skip
    config = make_config({**base, "seed": seeds[0]})
    head = config.head_options
    return {
        "label": label,
        "kind": "head",
        "temporal": head["temporal"],
        "aggregation": head["aggregation"],
        "segments": head["segments"],
        "clusters": head["clusters"] if head["aggregation"] != "avg" else None,
        "out_dim": head["out_dim"],
        "seeds": list(seeds),
        "config": {k: v for k, v in base.items() if k != "seed"},
        "runs": records,
        "summary": summarise(records),
    }


def best_soft(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The soft row with the highest mean validation accuracy (lower mean validation loss breaks ties)."""
    soft = [r for r in rows if r["aggregation"] in SOFT]
    return max(soft, key=lambda r: (r["summary"]["best_val_acc"]["mean"], -r["summary"]["best_val_loss"]["mean"]))


# --------------------------------------------------------------------------- baselines


def _error(exc: BaseException) -> str:
    """Exception type and its first non-empty message line, short enough for a table."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line[:300]}"


def _encode_baselines(
    ws: DatasetWorkspace, features_name: str, k: int
) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """Baseline results per method for one K, label names, and the error of every method that failed.

    All methods are run in one :func:`run_encode` call; if that raises, each method is
    run on its own so that one failing encoding does not hide the others.
    """
    attempts = [BASELINE_METHODS]
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    label_names: dict[str, str] = {}
    try:
        summary = run_encode(ws, features_name, k, EncodeOptions(methods=BASELINE_METHODS))
    except Exception as exc:  # noqa: BLE001 - recorded in the report, then each method alone
        attempts = [(m,) for m in BASELINE_METHODS]
        summary = None
        first_error = _error(exc)
    for methods in attempts if summary is None else []:
        try:
            one = run_encode(ws, features_name, k, EncodeOptions(methods=methods))
        except Exception as exc:  # noqa: BLE001
            errors[methods[0]] = _error(exc)
            continue
        results.update(one["baseline"]["methods"])
        label_names = json.loads(Path(one["baseline"]["path"]).read_text())["label_names"]
    if summary is not None:
        if summary["baseline"] is None:
            raise ConfigError(f"dataset {ws.dataset!r} has no test split: the baseline needs one")
        results = summary["baseline"]["methods"]
        label_names = json.loads(Path(summary["baseline"]["path"]).read_text())["label_names"]
    elif not errors:
        errors["all"] = first_error
    return results, label_names, errors


def baseline_rows(ws: DatasetWorkspace, features_name: str, ks: Sequence[int], log: Any) -> list[dict[str, Any]]:
    """Hard BoF / VLAD / FV + linear SVM for every K (deterministic: one value, no spread)."""
    rows = []
    for k in ks:
        start = time.perf_counter()
        results, label_names, errors = _encode_baselines(ws, features_name, k)
        seconds = time.perf_counter() - start
        for method in BASELINE_METHODS:
            row: dict[str, Any] = {
                "label": f"{method.upper()} + linear SVM",
                "kind": "baseline",
                "method": method,
                "clusters": k,
                "encode_seconds": seconds,
            }
            if method not in results:
                error = errors.get(method, errors.get("all", "no result"))
                rows.append(row | {"error": error, "runs": [], "summary": None})
                log(f"  baseline {method} K={k}: failed: {error}")
                continue
            result = results[method]
            names = [label_names[str(label)] for label in result["labels"]]
            record = {
                "accuracy": result["accuracy"],
                "macro_precision": result["macro_precision"],
                "macro_recall": result["macro_recall"],
                "top5": result["top5"],
                # One-vs-rest linear SVM: a weight per dimension and class plus a bias per class.
                "parameters": (result["dim"] + 1) * len(result["labels"]),
                "test_ms_per_video": None,
                "families": family_scores(names, np.asarray(result["confusion"])),
            }
            row |= {"dim": result["dim"], "C": result["C"], "C_chosen_by": result["C_chosen_by"], "runs": [record]}
            row["summary"] = {key: mean_std([record[key]]) for key in METRICS} | {
                "families": {f: mean_std([v]) for f, v in record["families"].items()}
            }
            rows.append(row)
            log(f"  baseline {method} K={k}: acc {record['accuracy']:.3f}")
    return rows


# --------------------------------------------------------------------------- report


def machine_info(threads: int) -> dict[str, Any]:
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_per_run": threads,
        "cuda": torch.cuda.is_available(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _pm(cell: dict[str, Any], fmt: str, scale: float = 1.0) -> str:
    if cell["mean"] is None:
        return "–"
    if cell["n"] <= 1:
        return format(cell["mean"] * scale, fmt)
    return f"{format(cell['mean'] * scale, fmt)} ± {format(cell['std'] * scale, fmt)}"


#: The papers' claims as (claim, better row, worse row): li3d-bilstm Table 3 (LSTM over
#: pooling, BiLSTM over LSTM) and the aggregation paper's Table 1 and §4.1 (each soft
#: encoding after the BiLSTM over its plain average; their mean over the best single one).
CLAIMS = (
    ("LSTM beats pooling (li3d-bilstm Table 3)", "LSTM + avg pool", "features + avg pool"),
    ("BiLSTM beats LSTM (li3d-bilstm Table 3)", "BiLSTM + avg pool", "LSTM + avg pool"),
    *((f"soft {a[4:].upper()} beats the plain average (Table 1)", f"BiLSTM + {a}", "BiLSTM + avg pool")
      for a in ("softbof", "softfv", "softvlad")),
    ("the mean of the three beats the plain average (§4.1)", "BiLSTM + mean", "BiLSTM + avg pool"),
    ("the mean of the three beats concatenation (§4.1)", "BiLSTM + mean", "BiLSTM + concat"),
)


def verdict(better: dict[str, Any], worse: dict[str, Any]) -> dict[str, Any]:
    """Whether the test accuracies of two rows support "``better`` beats ``worse``".

    The gap's standard error is ``√(s₁²/n₁ + s₂²/n₂)`` over seeds. A gap above two
    standard errors in the claimed direction reproduces the claim, one below minus two
    refutes it; anything in between is "not reproduced": the seeds cannot tell the rows
    apart, which says nothing against the paper. A row of one seed has no spread to
    measure the gap against, so it tests nothing.
    """
    a, b = better["summary"]["accuracy"], worse["summary"]["accuracy"]
    gap = a["mean"] - b["mean"]
    se = (a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"]) ** 0.5
    if min(a["n"], b["n"]) < 2:
        word = "not tested (one seed gives no spread)"
    elif gap > 2 * se:
        word = "reproduced"
    elif gap < -2 * se:
        word = "refuted"
    else:
        word = "not reproduced (gap under 2 standard errors)"
    return {"gap": gap, "standard_error": se, "verdict": word}


def segments_suffix(segments: int) -> str:
    """What a row's label gains when its head pools ``segments`` ordered parts."""
    return f" x {segments} segments" if segments > 1 else ""


def claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim of :data:`CLAIMS` whose two rows were trained, with its verdict.

    A claim is tested between rows of one pooling (whole video, or S segments): each
    pooling present gives its own line, marked with the segments when there are any.
    """
    by_label = {(r["label"], r["clusters"]): r for r in rows if r["summary"] is not None and r["kind"] == "head"}
    first = {label: row for (label, _), row in reversed(list(by_label.items()))}
    out = []
    for segments in sorted({r["segments"] for r in rows if r["kind"] == "head"}):
        suffix = segments_suffix(segments)
        for claim, better, worse in CLAIMS:
            better, worse = better + suffix, worse + suffix
            if better in first and worse in first:
                out.append({"claim": claim + suffix, "better": better, "worse": worse,
                            **verdict(first[better], first[worse])})  # fmt: skip
        swept = [r for r in rows if r["kind"] == "head" and r["clusters"] == 128 and r["segments"] == segments]
        if swept:
            label = swept[0]["label"]
            pair = by_label.get((label, 128)), by_label.get((label, 64))
            if all(pair):
                out.append({"claim": f"K = 128 beats K = 64 ({label}; aggregation paper Table 2)",
                            "better": f"{label} K=128", "worse": f"{label} K=64", **verdict(*pair)})  # fmt: skip
    return out


def markdown_claims(found: list[dict[str, Any]], chance: float) -> str:
    lines = [f"Chance: {100 * chance:.1f} %.", "", "| claim | gap (points) | 2 × s.e. | verdict |", "|---|---|---|---|"]
    for c in found:
        lines.append(f"| {c['claim']} | {100 * c['gap']:+.1f} | {200 * c['standard_error']:.1f} | {c['verdict']} |")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Two tables: overall metrics, then accuracy per class family (percent, mean ± std)."""
    head = "| configuration | K | accuracy % | per seed | macro P % | macro R % | top-5 % | parameters | test ms/video |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        s = r["summary"]
        if s is None:
            lines.append(f"| {r['label']} | {r['clusters']} | failed: {r['error'][:80]} |" + " |" * 6)
            continue
        params = s["parameters"]["mean"]
        per_seed = ", ".join(f"{100 * run['accuracy']:.0f}" for run in r.get("runs", []))
        lines.append(
            f"| {r['label']} | {r['clusters'] or '–'} | {_pm(s['accuracy'], '.1f', 100)} | {per_seed or '–'} | "
            f"{_pm(s['macro_precision'], '.1f', 100)} | {_pm(s['macro_recall'], '.1f', 100)} | "
            f"{_pm(s['top5'], '.1f', 100)} | {int(params):,} | {_pm(s['test_ms_per_video'], '.3f')} |"
        )
    fams = list(FAMILIES)
    lines += ["", "| configuration | K | " + " | ".join(fams) + " | order swap |", "|" + "---|" * (len(fams) + 3)]
    for r in rows:
        if r["summary"] is None:
            continue
        f = r["summary"]["families"]
        cells = " | ".join(_pm(f[name], ".0f", 100) for name in (*fams, "order_swap"))
        lines.append(f"| {r['label']} | {r['clusters'] or '–'} | {cells} |")
    return "\n".join(lines)


def soft_rows(ws: DatasetWorkspace, base: dict[str, Any], args: argparse.Namespace, rows: list[dict[str, Any]],
              log: Any) -> dict[str, Any]:  # fmt: skip
    """Rows 4-5: the soft aggregations after the BiLSTM, then the K sweep of the chosen one
    (appended to ``rows``); returns what the sweep ran on and why."""
    suffix = segments_suffix(args.soft_segments)
    log(f"soft aggregations after the BiLSTM (K={args.pipeline_clusters}{suffix}):")
    soft = []
    for aggregation in SOFT:
        config = {**base, "temporal": "bilstm", "aggregation": aggregation, "segments": args.soft_segments}
        if aggregation == "mean" and args.out_dim is not None:
            config["out_dim"] = args.out_dim
        soft.append(train_group(ws, f"BiLSTM + {aggregation}{suffix}", config, args.seeds, args.threads, log))
    rows += soft
    chosen = next(r for r in soft if r["aggregation"] == args.k_variant) if args.k_variant else best_soft(soft)
    chosen_by = "given (--k-variant)" if args.k_variant else "highest mean validation accuracy over the seeds"
    log(f"K sweep for {chosen['label']} ({chosen_by}):")
    for k in args.clusters:
        if k == args.pipeline_clusters:
            continue
        config = {**chosen["config"], "clusters": k}
        rows.append(train_group(ws, chosen["label"], config, args.seeds, args.threads, log))
    return {"chosen": chosen["label"], "aggregation": chosen["aggregation"], "segments": args.soft_segments,
            "chosen_by": chosen_by, "clusters": args.clusters}  # fmt: skip


# --------------------------------------------------------------------------- main


def parse_ints(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated integers")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="workspace root with extracted features")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--features", default="li3d-rgb")
    parser.add_argument("--seeds", type=parse_ints, default=[0, 1, 2, 3, 4], help="comma-separated (default 0,1,2,3,4)")
    parser.add_argument("--pipeline-clusters", type=int, default=QUICK_HEAD["clusters"],
                        help="K of the soft-aggregation rows (default: the pipeline's, %(default)s)")  # fmt: skip
    parser.add_argument("--clusters", type=parse_ints, default=[64, 128], help="K sweep for the best soft variant")
    parser.add_argument("--k-variant", choices=SOFT, default=None,
                        help="soft variant of the K sweep (default: best mean validation accuracy)")  # fmt: skip
    parser.add_argument("--out-dim", type=int, default=None,
                        help="projection size of the 'mean' fusion (default: the head's, K)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads per run")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--segments", type=int, default=1,
                        help="also train the temporal rows with the head's segments=S (pooled in S ordered parts)")
    parser.add_argument("--soft-segments", type=int, default=1,
                        help="segments of the soft-aggregation rows and the K sweep: 1 (the papers' whole-video "
                             "encoding) or the value of --segments, so the soft claims are tested against the "
                             "average pooling of the same segments")  # fmt: skip
    parser.add_argument("--temporal-only", action="store_true", help="leave out the soft aggregations and the K sweep")
    parser.add_argument("--spectrum", type=int, default=0,
                        help="the head's spectrum=C on every head row: C channels' temporal spectra join the code")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ablation.json"))
    args = parser.parse_args(argv)
    if args.soft_segments not in (1, args.segments):
        parser.error(f"--soft-segments must be 1 or --segments ({args.segments}), got {args.soft_segments}")

    torch.set_num_threads(args.threads)
    ws = DatasetWorkspace(args.workspace.resolve(), args.dataset)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start, wall = load_average(), time.perf_counter()
    base = {**QUICK, **QUICK_HEAD, "features": args.features, "clusters": args.pipeline_clusters,
            "spectrum": args.spectrum}  # fmt: skip
    ks = sorted({args.pipeline_clusters, *args.clusters})
    facts = dataset_facts(ws, args.features, "pool", args.seeds, make_config(base).val_fraction, ks)
    log(f"feature values: {facts['feature_values']}")
    log(f"{facts['videos']} videos, {facts['steps_per_video']['mean']:.1f} steps per video; "
        f"descriptors per centroid: {facts['descriptors_per_centroid']}")  # fmt: skip

    rows: list[dict[str, Any]] = []
    with threadpool_limits(args.threads):
        log("temporal layers (average pooling):")
        for temporal, label in TEMPORAL_ROWS:
            config = {**base, "temporal": temporal, "aggregation": "avg"}
            rows.append(train_group(ws, label, config, args.seeds, args.threads, log))
        if args.segments > 1:
            log(f"temporal layers (average pooling of {args.segments} segments):")
            for temporal, label in TEMPORAL_ROWS:
                config = {**base, "temporal": temporal, "aggregation": "avg", "segments": args.segments}
                rows.append(train_group(ws, label + segments_suffix(args.segments), config, args.seeds, args.threads,
                                        log))  # fmt: skip
        k_sweep = None if args.temporal_only else soft_rows(ws, base, args, rows, log)
        if not args.skip_baselines:
            log("classic encodings + linear SVM:")
            rows += baseline_rows(ws, args.features, ks, log)

    report = {
        "benchmark": "ablation",
        "started": started,
        "wall_seconds": time.perf_counter() - wall,
        "machine": machine_info(args.threads),
        "load_average": {"start": load_start, "end": load_average()},
        "workspace": str(ws.dir),
        "features": args.features,
        "seeds": args.seeds,
        "base_config": make_config(base).to_dict() | {"seed": None},
        "k_sweep": k_sweep,
        "dataset": facts,
        "std": "sample standard deviation over seeds (ddof=1); baselines are deterministic, one value",
        "rows": rows,
        "chance": 1 / facts["classes"],
        "claims": claims(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    seeds = ",".join(map(str, args.seeds))
    sweep = f"; K sweep on {k_sweep['chosen']} ({k_sweep['chosen_by']})" if k_sweep else ""
    print(f"Test metrics, mean ± std over seeds {seeds} ({facts['videos']['test']} test videos){sweep}.\n")
    print(markdown(rows))
    print()
    print(markdown_claims(report["claims"], report["chance"]))
    print(f"\nDescriptors per centroid (encode codebook / head codebook): "
          + ", ".join(f"K={k}: {v['encode_codebook']:.1f} / {v['head_codebook']:.1f}"
                      for k, v in facts["descriptors_per_centroid"].items()))  # fmt: skip
    log(f"wrote {args.out} in {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
