"""Evidently peer for the monitoring benchmark (test/bench/evidently.ts drives it).

    python evidently_reference.py --reference ref.csv --current cur.csv --windows N --out out.json

Runs Evidently's data drift preset on each of N equal consecutive windows of the current data against
the reference, twice: with its default tests per column and with PSI. Times only the reports (not the
CSV reading) and writes {seconds_default, seconds_psi, psi: [{column: value}] per window} as JSON.
"""
import argparse
import json
import time

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset


def values(snapshot) -> dict:
    out = {}
    for m in snapshot.dict()["metrics"]:
        col = m["config"].get("column")
        if col is not None:
            out[col] = m["value"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True)
    ap.add_argument("--current", required=True)
    ap.add_argument("--windows", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    ref = pd.read_csv(args.reference)
    cur = pd.read_csv(args.current)
    size = len(cur) // args.windows
    windows = [cur.iloc[i * size:(i + 1) * size] for i in range(args.windows)]
    result = {"rows": len(cur), "reference_rows": len(ref)}
    for method in ("default", "psi"):
        preset = DataDriftPreset() if method == "default" else DataDriftPreset(method="psi")
        started = time.perf_counter()
        per_window = [values(Report([preset]).run(current_data=w, reference_data=ref)) for w in windows]
        result[f"seconds_{method}"] = time.perf_counter() - started
        result[method] = per_window
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
