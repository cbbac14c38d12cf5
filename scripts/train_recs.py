"""Train the `recs` model and export it to ONNX with its serving manifest and parity fixture.

Reads the CSV written by scripts/build-recs-training-set.ts (columns: `query`, `ts`, `item`, the model
inputs in RECS_INPUT_NAMES order, then `label`; rows in query order, queries in event-time order).
A query is one interaction of a user; its rows are the candidate items scored as of it; the label
says whether the user clicked or purchased the item within 30 minutes.

Time-ordered split by query: the first 80% of the queries train, the last 20% validate (the model
never sees the future, and a query's candidates are never split). The estimator is scikit-learn's
HistGradientBoostingClassifier (fixed iterations, no early stopping, seeded): with the pinned
skl2onnx 1.19.1 it converts to a TreeEnsemble graph, and it fits the ~1.4 M training rows in seconds
where GradientBoostingClassifier needs minutes. It runs on one thread: its OpenMP reductions make
the last bits of the leaf values (so the model bytes) depend on the thread count, and one thread
costs little here; with it the same seed and count give the same bytes on any machine. Validation metrics: ROC AUC over rows, and NDCG@10,
hit rate@10 (and @1) over the validation queries with at least one positive, for the model and for
two baselines: popularity (rank by item_clicks_24h) and recency (rank by user_item_seconds_since_last,
most recent first). Rankings break score ties by item id, and rank model scores rounded to 1e-6, as
the recs processor does.

Exports ONNX (input `input` float [N, n]; outputs `label` int64 [N] and `probabilities` float [N, 2],
no zipmap), checks onnxruntime against scikit-learn on every validation row, and writes:

  <out-dir>/model.onnx
  <out-dir>/model.json      manifest: name, version, task, sha256, inputs, signature, metrics, reference, ...
  <parity-fixture>          200 input rows (validation rows, some with -1 inputs) with scikit-learn's and
                            onnxruntime's probabilities

Usage: python scripts/train_recs.py --csv .stack/train/recs.csv --out-dir models/recs \
         --meta .stack/train/recs.meta.json --parity-fixture test/fixtures/parity/recs.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

MODEL_NAME = "recs"
MODEL_VERSION = "1.0.0"
RANDOM_STATE = 42
VALIDATION_SHARE = 0.2
# Same as train_fraud.py: onnxruntime-node 1.22 (serving) loads these.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
MAX_ITER = 100
LEARNING_RATE = 0.1
MAX_LEAF_NODES = 31
# Depth 4 beat unlimited depth (31 leaves), 300 iterations at 0.05, 63 leaves and L2 1.0 on validation NDCG@10.
MAX_DEPTH = 4
K = 10
# The parity fixture (test/unit/parity.test.ts) holds onnxruntime-node to 1e-5 of scikit-learn.
MAX_ONNX_DIFF = 1e-5
FIXTURE_ROWS = 200
MISSING = -1.0
LEAD_COLUMNS = ["query", "ts", "item"]


def fail(msg: str) -> None:
    print(f"train_recs: {msg}", file=sys.stderr)
    sys.exit(1)


def load(path: str):
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    if header[: len(LEAD_COLUMNS)] != LEAD_COLUMNS or header[-1] != "label":
        fail(f"{path}: columns must be {','.join(LEAD_COLUMNS)},<inputs>,label; got {header[:3]}...{header[-1:]}")
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if data.shape[1] != len(header):
        fail(f"{path}: {data.shape[1]} columns but {len(header)} names")
    query = data[:, 0].astype(np.int64)
    ts = data[:, 1].astype(np.int64)
    item = data[:, 2].astype(np.int64)
    x = data[:, 3:-1].astype(np.float32)
    y = data[:, -1].astype(np.int64)
    if np.any(np.diff(query) < 0):
        fail(f"{path}: rows are not in query order")
    return header[3:-1], query, ts, item, x, y


def ranking_metrics(query: np.ndarray, item: np.ndarray, score: np.ndarray, y: np.ndarray, k: int = K) -> dict:
    """NDCG@k and hit rates over the queries with at least one positive (binary relevance).

    Candidates are ranked by score descending, ties by item id ascending (as the recs processor ranks).
    """
    order = np.lexsort((item, -score, query))
    q, ys = query[order], y[order]
    starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    ends = np.r_[starts[1:], len(q)]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ndcg, hit_k, hit_1, sizes = [], [], [], []
    for s, e in zip(starts, ends):
        rel = ys[s:e]
        n_pos = int(rel.sum())
        if n_pos == 0:
            continue
        top = rel[:k]
        dcg = float(np.sum(top * discounts[: len(top)]))
        idcg = float(np.sum(discounts[: min(n_pos, k)]))
        ndcg.append(dcg / idcg)
        hit_k.append(float(top.max()))
        hit_1.append(float(rel[0]))
        sizes.append(e - s)
    return {
        f"ndcg_at_{k}": float(np.mean(ndcg)),
        f"hit_rate_at_{k}": float(np.mean(hit_k)),
        "hit_rate_at_1": float(np.mean(hit_1)),
        "queries": len(ndcg),
        "mean_candidates": float(np.mean(sizes)),
    }


def reference_profile(values: np.ndarray) -> dict:
    """Decile profile for PSI, as train_fraud.py: 9 inner cut points (deduplicated on ties), right-closed bins."""
    values = values.astype(np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
    bins = np.searchsorted(edges, values, side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    return {
        "edges": [float(e) for e in edges],
        "proportions": [float(c) / len(values) for c in counts],
        "counts": [int(c) for c in counts],
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "count": int(len(values)),
    }


def parity_rows(x_va: np.ndarray, y_va: np.ndarray, x_all: np.ndarray, n: int = FIXTURE_ROWS) -> np.ndarray:
    """Deterministic rows for the parity fixture (float32): half evenly spread validation rows, a fifth
    positive validation rows, up to a tenth real rows with a missing (-1) input (from any split), and
    the rest validation rows with 1, 2, 3, half or all of their inputs set to -1 (what serving feeds
    when features are unavailable)."""
    rng = np.random.default_rng(RANDOM_STATE)

    def spread(pool: np.ndarray, k: int) -> np.ndarray:
        return pool[np.linspace(0, len(pool) - 1, min(k, len(pool))).astype(np.int64)] if len(pool) and k > 0 else pool[:0]

    every = spread(np.arange(len(x_va)), n // 2)
    positives = spread(np.flatnonzero(y_va == 1), n // 5)
    real_missing = x_all[spread(np.flatnonzero(np.any(x_all == MISSING, axis=1)), n // 10)]
    k = n - len(every) - len(positives) - len(real_missing)
    synthetic = x_va[rng.choice(len(x_va), size=k, replace=False)].copy()
    width = x_va.shape[1]
    sizes = [1, 2, 3, max(1, width // 2), width]
    for i, row in enumerate(synthetic):
        row[rng.choice(width, size=sizes[i % len(sizes)], replace=False)] = MISSING
    return np.concatenate([x_va[every], x_va[positives], real_missing, synthetic]).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--meta", required=True, help="JSON from train-recs.ts: signature inputs, top_k, max_candidates, trained_on")
    ap.add_argument("--parity-fixture", required=True)
    args = ap.parse_args()
    with open(args.meta) as f:
        meta = json.load(f)
    sig_inputs = meta["signature_inputs"]

    t0 = time.time()
    names, query, ts, item, x, y = load(args.csv)
    if names != [i["name"] for i in sig_inputs]:
        fail(f"CSV inputs {names} != signature {[i['name'] for i in sig_inputs]}")
    queries = np.unique(query)
    n_train_q = int(round(len(queries) * (1 - VALIDATION_SHARE)))
    first_va_query = queries[n_train_q]
    tr = query < first_va_query
    va = ~tr
    x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
    if y_tr.sum() == 0 or y_va.sum() == 0:
        fail("both splits need positive rows")
    print(f"loaded {len(y)} rows x {len(names)} inputs of {len(queries)} queries in {time.time() - t0:.1f}s; "
          f"train {len(y_tr)} rows ({int(y_tr.sum())} positive) of {n_train_q} queries, "
          f"validation {len(y_va)} ({int(y_va.sum())} positive) of {len(queries) - n_train_q} queries")

    t1 = time.time()
    model = HistGradientBoostingClassifier(max_iter=MAX_ITER, learning_rate=LEARNING_RATE, max_leaf_nodes=MAX_LEAF_NODES, max_depth=MAX_DEPTH,
                                           early_stopping=False, random_state=RANDOM_STATE)
    model.fit(x_tr, y_tr)
    fit_seconds = time.time() - t1
    print(f"trained {model.n_iter_} trees in {fit_seconds:.1f}s")

    p_tr = model.predict_proba(x_tr)[:, 1]
    p_va = model.predict_proba(x_va)[:, 1]
    auc_tr = float(roc_auc_score(y_tr, p_tr))
    auc = float(roc_auc_score(y_va, p_va))
    q_va, item_va = query[va], item[va]
    col = names.index
    model_rank = ranking_metrics(q_va, item_va, np.round(p_va, 6), y_va)
    pop_score = x_va[:, col("item_clicks_24h")].astype(np.float64)
    popularity = {"auc": float(roc_auc_score(y_va, pop_score)), **ranking_metrics(q_va, item_va, pop_score, y_va)}
    since = x_va[:, col("user_item_seconds_since_last")].astype(np.float64)
    rec_score = np.where(since < 0, -np.inf, -since)
    recency = {"auc": float(roc_auc_score(y_va, rec_score)), **ranking_metrics(q_va, item_va, rec_score, y_va)}
    print(f"validation ROC AUC {auc:.4f} (train {auc_tr:.4f}); over {model_rank['queries']} queries with a positive "
          f"(mean {model_rank['mean_candidates']:.1f} candidates):")
    for label, m, a in (("model", model_rank, auc), ("popularity", popularity, popularity["auc"]), ("recency", recency, recency["auc"])):
        print(f"  {label:10s} NDCG@{K} {m[f'ndcg_at_{K}']:.4f}  hit@{K} {m[f'hit_rate_at_{K}']:.4f}  hit@1 {m['hit_rate_at_1']:.4f}  AUC {a:.4f}")

    onx = convert_sklearn(
        model,
        name=MODEL_NAME,
        initial_types=[("input", FloatTensorType([None, len(names)]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onx.doc_string = f"{MODEL_NAME} {MODEL_VERSION}: HistGradientBoostingClassifier over {','.join(names)}"
    outputs = [o.name for o in onx.graph.output]
    if [i.name for i in onx.graph.input] != ["input"] or outputs != ["label", "probabilities"]:
        fail(f"unexpected ONNX signature: inputs {[i.name for i in onx.graph.input]}, outputs {outputs}")
    onnx.checker.check_model(onx)
    model_bytes = onx.SerializeToString()
    sha256 = hashlib.sha256(model_bytes).hexdigest()

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    o_label, o_proba = sess.run(["label", "probabilities"], {"input": x_va})
    sk_proba = model.predict_proba(x_va)
    diff = float(np.max(np.abs(o_proba - sk_proba)))
    label_mismatch = int(np.sum(o_label != model.predict(x_va)))
    print(f"onnxruntime vs scikit-learn on {len(y_va)} rows: max |dp| {diff:.2e}, label mismatches {label_mismatch}")
    if diff > MAX_ONNX_DIFF:
        fail(f"ONNX probabilities differ from scikit-learn by {diff:.2e} (limit {MAX_ONNX_DIFF})")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "model.onnx")
    with open(onnx_path, "wb") as f:
        f.write(model_bytes)

    trained_on = meta["trained_on"]
    manifest = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "task": "recs",
        "sha256": sha256,
        "format": "onnx",
        "inputs": names,
        "input_name": "input",
        "output_name": "probabilities",
        "label_output_name": "label",
        "positive_class_index": 1,
        "missing_value": -1,
        "top_k": int(meta["top_k"]),
        "max_candidates": int(meta["max_candidates"]),
        "owner": "recs-team",
        "description": "Scores a user's candidate items (the items they touched in the last 24 h) by the probability of a click or purchase within 30 minutes.",
        "signature": {
            "inputs": sig_inputs,
            "output": {
                "kind": "binary_probability",
                "positive_class_index": 1,
                "meaning": "probability the user clicks or purchases the item within 30 minutes",
            },
        },
        "training": {
            "from_ts": int(ts[tr].min()),
            "to_ts": int(ts[tr].max()),
            "rows": int(len(y_tr)),
            "queries": int(n_train_q),
            "source": meta["source"],
            "validation": {
                "from_ts": int(ts[va].min()),
                "to_ts": int(ts[va].max()),
                "rows": int(len(y_va)),
                "queries": int(len(queries) - n_train_q),
            },
        },
        "metrics": {
            "split": "time-ordered by query: first 80% of queries train, last 20% validation",
            "auc": auc,
            "auc_train": auc_tr,
            f"ndcg_at_{K}": model_rank[f"ndcg_at_{K}"],
            f"hit_rate_at_{K}": model_rank[f"hit_rate_at_{K}"],
            "hit_rate_at_1": model_rank["hit_rate_at_1"],
            "ranking_queries": model_rank["queries"],
            "ranking_mean_candidates": model_rank["mean_candidates"],
            "ranking": "over validation queries with at least one positive; ties by item id; binary relevance; model scores rounded to 1e-6",
            "baseline_popularity": popularity,
            "baseline_recency": recency,
            "train_rows": int(len(y_tr)),
            "train_positive": int(y_tr.sum()),
            "validation_rows": int(len(y_va)),
            "validation_positive": int(y_va.sum()),
            "onnx_max_abs_diff": diff,
        },
        "estimator": {
            "type": "sklearn.ensemble.HistGradientBoostingClassifier",
            "max_iter": MAX_ITER,
            "learning_rate": LEARNING_RATE,
            "max_leaf_nodes": MAX_LEAF_NODES,
            "max_depth": MAX_DEPTH,
            "early_stopping": False,
            "random_state": RANDOM_STATE,
        },
        "opset": {d.domain or "ai.onnx": d.version for d in onx.opset_import},
        "libraries": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "trained_on": trained_on,
        "reference": {
            "item_views_24h": reference_profile(x_va[:, col("item_views_24h")]),
            "score": reference_profile(p_va),
        },
        "reference_info": {
            "source": "validation split rows (item_views_24h: model input of each candidate; score: positive-class probability)",
            "binning": "bin i holds edges[i-1] < x <= edges[i] (bin 0: x <= edges[0]; last bin: x > edges[-1]); "
                       "proportions has len(edges) + 1 entries; edges are deciles, deduplicated on ties",
        },
    }
    with open(os.path.join(args.out_dir, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")

    fixture = parity_rows(x_va, y_va, x)
    write_fixture(args.parity_fixture, MODEL_NAME, sha256, fixture, model.predict_proba(fixture)[:, 1],
                  sess.run(["probabilities"], {"input": fixture})[0][:, 1])
    print(f"wrote {onnx_path} ({len(model_bytes)} bytes, sha256 {sha256[:16]}...), model.json and "
          f"{args.parity_fixture} ({len(fixture)} rows) in {time.time() - t0:.1f}s total")


def write_fixture(path: str, name: str, sha256: str, rows: np.ndarray, sk: np.ndarray, ort_p: np.ndarray) -> None:
    """The parity fixture: float32 inputs (printed exactly), scikit-learn's and onnxruntime's P(positive)."""
    gap = float(np.max(np.abs(np.asarray(sk, dtype=np.float64) - np.asarray(ort_p, dtype=np.float64))))
    if gap > MAX_ONNX_DIFF:
        fail(f"parity fixture: onnxruntime differs from scikit-learn by {gap:.2e} (limit {MAX_ONNX_DIFF})")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    doc = {
        "model": name,
        "sha256": sha256,
        "inputs": [[float(v) for v in r] for r in rows.astype(np.float32)],
        "sklearn_proba": [float(p) for p in np.asarray(sk, dtype=np.float64)],
        "onnxruntime_proba": [float(p) for p in np.asarray(ort_p, dtype=np.float64)],
    }
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
