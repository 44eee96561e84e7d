"""Oracle for tests/pipeline/metrics_test.cpp: scikit-learn (and brute force where sklearn has
no such metric) on the same labels and probabilities.

usage: metrics_oracle.py IN.json OUT.json
IN:  {"labels": [N ints], "probabilities": [[C floats] x N], "threshold": t, "bins": B}
OUT: the metrics below, computed without attnscope.
"""
import json
import math
import sys

import numpy as np
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize


def ece_brute_force(y, p, bins):
    # Top-label: confidence = max prob, correct = argmax == label; bin b holds
    # confidences in (b/B, (b+1)/B], bin 0 also holds 0.
    n = len(y)
    rows = []
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = []
        for i in range(n):
            conf = max(p[i])
            pred = list(p[i]).index(conf)
            if (lo < conf <= hi) or (b == 0 and conf == 0):
                members.append((conf, pred == y[i]))
        if members:
            mc = sum(c for c, _ in members) / len(members)
            acc = sum(1 for _, ok in members if ok) / len(members)
            total += len(members) / n * abs(acc - mc)
            rows.append([len(members), mc, acc])
        else:
            rows.append([0, None, None])
    return total, rows


def main():
    with open(sys.argv[1]) as f:
        data = json.load(f)
    y = np.array(data["labels"], dtype=np.int64)
    p = np.array(data["probabilities"], dtype=np.float64)
    t = data.get("threshold", 0.5)
    bins = data.get("bins", 15)
    n, c = p.shape
    out = {}
    ece, rows = ece_brute_force(y.tolist(), p.tolist(), bins)
    out["ece"] = ece
    out["reliability"] = rows
    out["log_loss"] = skm.log_loss(y, p, labels=list(range(c)))
    if c == 2:
        s = p[:, 1]
        pred = (s >= t).astype(np.int64)
        out["confusion"] = skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
        out["balanced_accuracy"] = skm.balanced_accuracy_score(y, pred)
        out["brier"] = skm.brier_score_loss(y, s)
        try:
            out["auc"] = skm.roc_auc_score(y, s)
            out["ap"] = skm.average_precision_score(y, s)
            fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
            out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr[1:].tolist()}
            prec, rec, thr = skm.precision_recall_curve(y, s)
            # sklearn: increasing thresholds with (precision 1, recall 0) appended; reverse.
            out["pr"] = {"precision": prec[::-1].tolist(), "recall": rec[::-1].tolist(),
                         "thresholds": thr[::-1].tolist()}
            # Hanley & McNeil (1982) standard error of the AUC.
            a = out["auc"]
            npos, nneg = int(y.sum()), int(n - y.sum())
            q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
            out["hanley_mcneil_se"] = math.sqrt(
                (a * (1 - a) + (npos - 1) * (q1 - a * a) + (nneg - 1) * (q2 - a * a))
                / (npos * nneg))
        except ValueError as e:
            out["auc_error"] = str(e)
    else:
        pred = p.argmax(axis=1)
        out["confusion"] = skm.confusion_matrix(y, pred, labels=list(range(c))).tolist()
        out["balanced_accuracy"] = skm.balanced_accuracy_score(y, pred)
        onehot = label_binarize(y, classes=list(range(c)))
        out["brier"] = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
        try:
            out["auc"] = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
            out["per_class_auc"] = [skm.roc_auc_score(onehot[:, k], p[:, k]) for k in range(c)]
            out["per_class_ap"] = skm.average_precision_score(onehot, p, average=None).tolist()
            out["ap"] = skm.average_precision_score(onehot, p, average="macro")
        except ValueError as e:
            out["auc_error"] = str(e)
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
