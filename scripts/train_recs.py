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
import json
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from train_common import (binary_signature, check_signature, csv_header, csv_matrix, export_model, fail, finish, manifest_head,
                          manifest_tail, reference_profiles)

MODEL_NAME = "recs"
MODEL_VERSION = "1.0.0"
RANDOM_STATE = 42
VALIDATION_SHARE = 0.2
MAX_ITER = 100
LEARNING_RATE = 0.1
MAX_LEAF_NODES = 31
# Depth 4 beat unlimited depth (31 leaves), 300 iterations at 0.05, 63 leaves and L2 1.0 on validation NDCG@10.
MAX_DEPTH = 4
K = 10
# Validation probabilities must differ by at most this (as the parity fixture: train_common.py).
MAX_ONNX_DIFF = 1e-5
LEAD_COLUMNS = ["query", "ts", "item"]


def load(path: str):
    header = csv_header(path)
    if header[: len(LEAD_COLUMNS)] != LEAD_COLUMNS or header[-1] != "label":
        fail(f"{path}: columns must be {','.join(LEAD_COLUMNS)},<inputs>,label; got {header[:3]}...{header[-1:]}")
    data = csv_matrix(path, header)
    query = data[:, 0].astype(np.int64)
    ts = data[:, 1].astype(np.int64)
    item = data[:, 2].astype(np.int64)
    x = data[:, 3:-1].astype(np.float32)
    y = data[:, -1].astype(np.int64)
    if np.any(np.diff(query) < 0):
        fail(f"{path}: rows are not in query order")
    return header[3:-1], query, ts, item, x, y, data[:, 3:-1]


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
    names, query, ts, item, x, y, raw = load(args.csv)
    check_signature(names, sig_inputs)
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

    ex = export_model(model, MODEL_NAME, MODEL_VERSION, names, x_va, MAX_ONNX_DIFF, args.out_dir)
    manifest = {
        **manifest_head(ex, "recs"),
        "top_k": int(meta["top_k"]),
        "max_candidates": int(meta["max_candidates"]),
        "owner": "recs-team",
        "description": "Scores a user's candidate items (the items they touched in the last 24 h) by the probability of a click or purchase within 30 minutes.",
        "signature": binary_signature(sig_inputs, "probability the user clicks or purchases the item within 30 minutes"),
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
            "onnx_max_abs_diff": ex.diff,
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
        **manifest_tail(
            ex,
            meta["trained_on"],
            reference_profiles(names, raw[va], ex.sess.run(["probabilities"], {"input": x_va})[0][:, 1]),
            "validation split rows: every model input of each candidate as served (float64) and the score (onnxruntime's positive-class probability)",
        ),
    }
    finish(ex, manifest, args.parity_fixture, model, x_va, y_va, x, RANDOM_STATE, t0)


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        main()
