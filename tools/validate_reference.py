#!/usr/bin/env python3
"""Reference values for `crlm validate` from the implementations statisticians trust:
scikit-survival (time-dependent AUC, Harrell's and Uno's C, Brier with IPCW, Kaplan-Meier, Cox
with Breslow ties), lifelines (log-rank), scikit-learn (binary AUC) and dcurves (net benefit for
a time-to-event outcome).

    python3 tools/validate_reference.py PREDICTIONS.csv OUTCOMES.csv --horizon 24   # one JSON object
    python3 tools/validate_reference.py --make-fixtures tests/reference              # the committed sets

The committed sets (tests/reference/<name>/{predictions,outcomes}.csv and reference.json) are
WHAS500 and GBSG2 as bundled with scikit-survival (risk at 24 months from a Cox model on a few
covariates) and a generated cohort with heavy censoring and tied times and risks. The Rust tests
compare crlm's metrics.json with reference.json without Python.
"""
import argparse
import csv
import json
import os

import numpy as np
import pandas as pd

THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]


def reference(ids, risk, high, time, event, h):
    from lifelines.statistics import logrank_test
    from sklearn.metrics import roc_auc_score
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.metrics import (brier_score, concordance_index_censored, concordance_index_ipcw,
                                cumulative_dynamic_auc)
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv
    import dcurves

    y = Surv.from_arrays(event=event, time=time)
    auc_td = cumulative_dynamic_auc(y, y, risk, [h])[0][0]
    # Harrell's C truncated at the horizon: only events before it anchor comparable pairs.
    c_harrell = concordance_index_censored(event & (time < h), time, risk)[0]
    c_uno = concordance_index_ipcw(y, y, risk, tau=h)[0]
    brier = brier_score(y, y, (1.0 - risk)[:, None], [h])[1][0]
    t_km, s_km = kaplan_meier_estimator(event, time)
    s_h = s_km[t_km <= h][-1] if (t_km <= h).any() else 1.0
    brier_null = brier_score(y, y, np.full((len(ids), 1), s_h), [h])[1][0]
    known = (time > h) | (event & (time <= h))
    auc_binary = roc_auc_score((event & (time <= h))[known], risk[known])
    lr = logrank_test(time[high], time[~high], event[high], event[~high])
    cox = CoxPHSurvivalAnalysis(ties="breslow").fit(high.astype(float)[:, None], y)
    df = pd.DataFrame({"event": event.astype(int), "time": time, "risk": risk})
    nb = dcurves.dca(data=df, outcome="event", modelnames=["risk"], thresholds=THRESHOLDS,
                     time_to_outcome_col="time", time=h)
    net = []
    for t in THRESHOLDS:
        row = lambda m: float(nb[(nb.model == m) & (np.isclose(nb.threshold, t))].net_benefit.iloc[0])
        net.append({"threshold": t, "model": row("risk"), "treat_all": row("all")})
    return {
        "n": len(ids),
        "auc_td": auc_td,
        "c_harrell": c_harrell,
        "c_uno": c_uno,
        "brier": brier,
        "ipa": 1.0 - brier / brier_null,
        "observed_risk": 1.0 - s_h,
        "auc_binary": auc_binary,
        "logrank_chi2": lr.test_statistic,
        "logrank_p": lr.p_value,
        "hazard_ratio": float(np.exp(cox.coef_[0])),
        "net_benefit": net,
    }


def read(pred_path, out_path):
    preds = {r["pseudonym"]: r for r in csv.DictReader(open(pred_path))}
    outs = {r["pseudonym"]: r for r in csv.DictReader(open(out_path))}
    ids = sorted(set(preds) & set(outs))
    risk = np.array([float(preds[i]["risk_2y"]) for i in ids])
    high = np.array([preds[i].get("risk_group") == "high" for i in ids])
    time = np.array([float(outs[i]["time_months"]) for i in ids])
    event = np.array([outs[i]["event"] == "1" for i in ids])
    return ids, risk, high, time, event


def write_set(d, name, risk, time, event, threshold):
    os.makedirs(d, exist_ok=True)
    ids = [f"P-{name[:3].upper()}{k:09d}" for k in range(len(risk))]
    with open(os.path.join(d, "predictions.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pseudonym", "risk_2y", "risk_group", "threshold"])
        for i, r in zip(ids, risk):
            w.writerow([i, repr(float(r)), "high" if r >= threshold else "low", threshold])
    with open(os.path.join(d, "outcomes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pseudonym", "time_months", "event"])
        for i, t, e in zip(ids, time, event):
            w.writerow([i, repr(float(t)), int(e)])
    ids2, r2, high, t2, e2 = read(os.path.join(d, "predictions.csv"), os.path.join(d, "outcomes.csv"))
    ref = reference(ids2, r2, high, t2, e2, 24.0)
    ref["source"] = name
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print(name, json.dumps({k: v for k, v in ref.items() if k != "net_benefit"}))


def cox_risk(X, y, h_days):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    m = CoxPHSurvivalAnalysis().fit(X, y)
    return np.array([1.0 - f(h_days) for f in m.predict_survival_function(X)])


def make_fixtures(root):
    from sksurv.datasets import load_gbsg2, load_whas500
    days = 30.4375
    X, y = load_whas500()
    cols = ["age", "bmi", "hr", "sysbp"]
    risk = np.round(cox_risk(X[cols].astype(float), y, 24 * days), 6)
    write_set(os.path.join(root, "whas500"), "whas500", risk, y["lenfol"] / days, y["fstat"],
              float(np.round(np.quantile(risk, 0.6), 3)))
    X, y = load_gbsg2()
    cols = ["age", "tsize", "pnodes", "progrec", "estrec"]
    risk = np.round(cox_risk(X[cols].astype(float), y, 24 * days), 6)
    write_set(os.path.join(root, "gbsg2"), "gbsg2", risk, y["time"] / days, y["cens"],
              float(np.round(np.quantile(risk, 0.6), 3)))
    # Heavy censoring, whole-month times (many ties) and risks on a 0.01 grid (tied risks).
    rng = np.random.default_rng(7)
    n = 300
    risk = np.round(1 / (1 + np.exp(-rng.uniform(-3, 1, n))), 2)
    t_event = rng.exponential(1 / (0.002 + 0.08 * risk * risk))
    t_cens = rng.uniform(1, 40, n)
    time = np.ceil(np.minimum(t_event, t_cens))
    event = t_event <= t_cens
    write_set(os.path.join(root, "generated_ties"), "generated_ties", risk, time, event, 0.3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("predictions", nargs="?")
    ap.add_argument("outcomes", nargs="?")
    ap.add_argument("--horizon", type=float, default=24.0)
    ap.add_argument("--make-fixtures")
    a = ap.parse_args()
    if a.make_fixtures:
        make_fixtures(a.make_fixtures)
        return
    print(json.dumps(reference(*read(a.predictions, a.outcomes), a.horizon)))


if __name__ == "__main__":
    main()
