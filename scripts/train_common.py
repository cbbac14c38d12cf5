"""What scripts/train_fraud.py and scripts/train_recs.py share: reading the training CSV, the ONNX
export and its onnxruntime check, the manifest's common fields, the drift reference profiles and the
parity fixture (checked by test/unit/parity.test.ts).

The scripts run as `python scripts/train_<model>.py`, so scripts/ is on sys.path and they
`import train_common`. fail() names the running script (train_fraud, train_recs).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from reference_profile import BIN_CONVENTION, numeric_profile

# onnxruntime-node 1.22 (serving) loads these; pinning the opsets keeps the file stable across converters.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# The parity fixture (test/unit/parity.test.ts) holds onnxruntime-node to 1e-5 of scikit-learn.
MAX_FIXTURE_DIFF = 1e-5
FIXTURE_ROWS = 200
MISSING = -1.0
REFERENCE_BINNING = (BIN_CONVENTION + "; edges are inverted-CDF deciles of the data, a value holding a tenth or more of "
                     "it gets a bin of its own, bins under max(1, ceil(n/100)) values are merged "
                     "(scripts/reference_profile.py, serving/registry/reference.ts)")

PROG = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "train"))[0]


def fail(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)
    sys.exit(1)


def csv_header(path: str) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def csv_matrix(path: str, header: list[str]) -> np.ndarray:
    """The CSV's rows below `header` as float64, one column per name."""
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if data.shape[1] != len(header):
        fail(f"{path}: {data.shape[1]} columns but {len(header)} names")
    return data


def check_signature(names: list[str], sig_inputs: list[dict]) -> None:
    if names != [i["name"] for i in sig_inputs]:
        fail(f"CSV inputs {names} != signature {[i['name'] for i in sig_inputs]}")


def export_onnx(model, name: str, version: str, names: list[str]) -> tuple[onnx.ModelProto, bytes, str]:
    """The classifier as ONNX (input `input` float [N, len(names)]; outputs `label` int64 [N] and
    `probabilities` float [N, 2], no zipmap), checked; returns it, its bytes and their sha256."""
    onx = convert_sklearn(
        model,
        name=name,
        initial_types=[("input", FloatTensorType([None, len(names)]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onx.doc_string = f"{name} {version}: {type(model).__name__} over {','.join(names)}"
    outputs = [o.name for o in onx.graph.output]
    if [i.name for i in onx.graph.input] != ["input"] or outputs != ["label", "probabilities"]:
        fail(f"unexpected ONNX signature: inputs {[i.name for i in onx.graph.input]}, outputs {outputs}")
    onnx.checker.check_model(onx)
    model_bytes = onx.SerializeToString()
    return onx, model_bytes, hashlib.sha256(model_bytes).hexdigest()


def check_onnx(model_bytes: bytes, model, x: np.ndarray, limit: float, *, limit_passes: bool = True) -> tuple[ort.InferenceSession, float]:
    """onnxruntime against scikit-learn on rows x: fails when the probabilities differ by more than
    `limit` (by `limit` or more if not limit_passes); returns the session and the max difference."""
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    o_label, o_proba = sess.run(["label", "probabilities"], {"input": x})
    diff = float(np.max(np.abs(o_proba - model.predict_proba(x))))
    label_mismatch = int(np.sum(o_label != model.predict(x)))
    print(f"onnxruntime vs scikit-learn on {len(x)} rows: max |dp| {diff:.2e}, label mismatches {label_mismatch}")
    if diff > limit or (diff == limit and not limit_passes):
        fail(f"ONNX probabilities differ from scikit-learn by {diff:.2e} (limit {limit})")
    return sess, diff


def write_onnx(out_dir: str, model_bytes: bytes) -> str:
    os.makedirs(out_dir, exist_ok=True)
    onnx_path = os.path.join(out_dir, "model.onnx")
    with open(onnx_path, "wb") as f:
        f.write(model_bytes)
    return onnx_path


@dataclass
class Export:
    """A model exported by export_model: written to onnx_path and checked against scikit-learn."""

    name: str
    version: str
    names: list[str]
    onx: onnx.ModelProto
    model_bytes: bytes
    sha256: str
    sess: ort.InferenceSession
    diff: float
    out_dir: str
    onnx_path: str


def export_model(model, name: str, version: str, names: list[str], x_va: np.ndarray, limit: float, out_dir: str, *,
                 limit_passes: bool = True) -> Export:
    """export_onnx, check_onnx on the validation rows x_va, then <out_dir>/model.onnx."""
    onx, model_bytes, sha256 = export_onnx(model, name, version, names)
    sess, diff = check_onnx(model_bytes, model, x_va, limit, limit_passes=limit_passes)
    onnx_path = write_onnx(out_dir, model_bytes)
    return Export(name, version, names, onx, model_bytes, sha256, sess, diff, out_dir, onnx_path)


def manifest_head(ex: Export, task: str) -> dict:
    """The manifest's first fields, the same for every binary-classifier model."""
    return {
        "name": ex.name,
        "version": ex.version,
        "task": task,
        "sha256": ex.sha256,
        "format": "onnx",
        "inputs": ex.names,
        "input_name": "input",
        "output_name": "probabilities",
        "label_output_name": "label",
        "positive_class_index": 1,
        "missing_value": -1,
    }


def binary_signature(sig_inputs: list[dict], meaning: str) -> dict:
    return {
        "inputs": sig_inputs,
        "output": {
            "kind": "binary_probability",
            "positive_class_index": 1,
            "meaning": meaning,
        },
    }


def manifest_tail(ex: Export, trained_on: dict, reference: dict, reference_source: str) -> dict:
    """The manifest's last fields: opsets, library versions, what it was trained on, the drift reference
    (reference_profile of each named series) and how that was made."""
    return {
        "opset": {d.domain or "ai.onnx": d.version for d in ex.onx.opset_import},
        "libraries": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        "trained_on": trained_on,
        "reference": reference,
        "reference_info": {"source": reference_source, "binning": REFERENCE_BINNING},
    }


def finish(ex: Export, manifest: dict, fixture_path: str, model, x_va: np.ndarray, y_va: np.ndarray, x_all: np.ndarray,
           seed: int, t0: float) -> None:
    """Writes <out_dir>/model.json and the parity fixture, and says what was written since t0."""
    with open(os.path.join(ex.out_dir, "model.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    rows = parity_rows(x_va, y_va, x_all, seed)
    write_fixture(fixture_path, ex.name, ex.sha256, rows, model.predict_proba(rows)[:, 1],
                  ex.sess.run(["probabilities"], {"input": rows})[0][:, 1])
    print(f"wrote {ex.onnx_path} ({len(ex.model_bytes)} bytes, sha256 {ex.sha256[:16]}...), model.json and "
          f"{fixture_path} ({len(rows)} rows) in {time.time() - t0:.1f}s total")


def reference_profiles(names: list[str], rows: np.ndarray, scores: np.ndarray) -> dict:
    """The drift reference of every model input (the float64 values as served: an imputed missing value
    is profiled as the value it is served as) and of the score, with scripts/reference_profile.py:
    the same bins the online windows use (serving/registry/reference.ts)."""
    profiles = {name: numeric_profile(rows[:, i].astype(np.float64).tolist()) for i, name in enumerate(names)}
    profiles["score"] = numeric_profile(np.asarray(scores, dtype=np.float64).tolist())
    return profiles


def parity_rows(x_va: np.ndarray, y_va: np.ndarray, x_all: np.ndarray, seed: int, n: int = FIXTURE_ROWS) -> np.ndarray:
    """Deterministic rows for the parity fixture (float32): half evenly spread validation rows, a fifth
    positive validation rows, up to a tenth real rows with a missing (-1) input (from any split), and
    the rest validation rows with 1, 2, 3, half or all of their inputs set to -1 (what serving feeds
    when features are unavailable)."""
    rng = np.random.default_rng(seed)

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


def write_fixture(path: str, name: str, sha256: str, rows: np.ndarray, sk: np.ndarray, ort_p: np.ndarray) -> None:
    """The parity fixture: float32 inputs (printed exactly), scikit-learn's and onnxruntime's P(positive)."""
    gap = float(np.max(np.abs(np.asarray(sk, dtype=np.float64) - np.asarray(ort_p, dtype=np.float64))))
    if gap > MAX_FIXTURE_DIFF:
        fail(f"parity fixture: onnxruntime differs from scikit-learn by {gap:.2e} (limit {MAX_FIXTURE_DIFF})")
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
