#!/usr/bin/python3
"""Checks an attnscope report against its results.h5, independently of attnscope: the numbers
come from h5py + scikit-learn, the page from the DOM headless Chromium dumped after running the
page's script.

usage: check_report.py RESULTS.h5 REPORT.html DOM.html [--cards N] [--evil]
Prints "report ok" and exits 0, or prints what is wrong and exits 1.
"""
import argparse
import base64
import json
import re
import sys
from html.parser import HTMLParser

import cv2
import h5py
import numpy as np
from sklearn.metrics import (average_precision_score, balanced_accuracy_score,
                             confusion_matrix, roc_auc_score)

failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)


class Dom(HTMLParser):
    """Collects the elements the checks need from a DOM dump."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.cards = 0
        self.ids = []
        self.imgs = []
        self.scripts = 0
        self.metrics = {}
        self.cells = {}
        self.measures = {}
        self.csp = None
        self.capture = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "img":
            self.imgs.append(a)
        if tag == "script":
            self.scripts += 1
        if tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            self.csp = a.get("content")
        if tag == "div" and "card" in cls:
            self.cards += 1
        if tag in ("img", "meta", "br", "input", "rect", "line", "circle", "polyline"):
            return  # void / self-closing
        target = None
        if tag == "div" and "id" in cls:
            target = ("id", None)
        elif "data-metric" in a and tag == "b":
            target = ("metric", a["data-metric"])
        elif "data-cell" in a:
            target = ("cell", a["data-cell"])
        if "data-measure" in a:
            self.measures[a["data-measure"]] = a["data-value"]
        self.stack.append([tag, target, ""])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in ("img", "meta", "br", "input", "rect", "line", "circle", "polyline"):
            return
        while self.stack:
            t, target, text = self.stack.pop()
            if target:
                kind, key = target
                if kind == "id":
                    self.ids.append(text)
                elif kind == "metric":
                    self.metrics[key] = text
                elif kind == "cell":
                    self.cells[key] = text
            if self.stack:
                self.stack[-1][2] += text
            if t == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1][2] += data


def close(a, b, tol, what):
    expect(abs(float(a) - float(b)) <= tol, f"{what}: report {a}, expected {b:.6f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("report")
    ap.add_argument("dom")
    ap.add_argument("--cards", type=int, default=-1)
    ap.add_argument("--evil", action="store_true")
    a = ap.parse_args()

    f = h5py.File(a.results, "r")
    n = int(f.attrs["num_images"])
    n_err = int(f.attrs["num_errors"])
    truth = f["images/label"][:n]
    prob = f["predictions/probability"][:n]
    pred = f["predictions/label"][:n]
    ids = list(f["images/id"].asstr()[:n])
    classes = json.loads(f.attrs["class_names"])

    raw = open(a.report, encoding="utf-8").read()
    dom = Dom()
    dom.feed(open(a.dom, encoding="utf-8").read())

    # The page: self-contained, no network, every card there.
    expect(dom.csp is not None and "default-src 'none'" in dom.csp, f"CSP missing: {dom.csp}")
    expect(not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", raw), "network reference")
    cards = n if a.cards < 0 else a.cards
    expect(dom.cards == cards, f"{dom.cards} image cards in the DOM, expected {cards}")
    expect(dom.metrics.get("classified") == str(n), f"classified {dom.metrics.get('classified')} != {n}")
    expect(dom.metrics.get("failed") == str(n_err), f"failed {dom.metrics.get('failed')} != {n_err}")

    # Summary numbers against scikit-learn.
    lab = truth >= 0
    if lab.any():
        t, p1, y = truth[lab], prob[lab, 1], pred[lab]
        close(dom.metrics["auc"], roc_auc_score(t, p1), 6e-4, "AUC")
        close(dom.metrics["average_precision"], average_precision_score(t, p1), 6e-4, "AP")
        close(dom.metrics["balanced_accuracy"], balanced_accuracy_score(t, y), 6e-4,
              "balanced accuracy")
        cm = confusion_matrix(t, y, labels=list(range(len(classes))))
        close(dom.metrics["sensitivity"], cm[1, 1] / max(1, cm[1].sum()), 6e-4, "sensitivity")
        close(dom.metrics["specificity"], cm[0, 0] / max(1, cm[0].sum()), 6e-4, "specificity")
        for i in range(len(classes)):
            for j in range(len(classes)):
                expect(dom.cells.get(f"{i},{j}") == str(cm[i, j]),
                       f"confusion[{i},{j}] {dom.cells.get(f'{i},{j}')} != {cm[i, j]}")
    else:
        expect("auc" not in dom.metrics, "AUC shown without labels")
    if "measures" in f:
        for mp in f["measures"]:
            for name in f["measures"][mp]:
                key = f"{mp}/{name}"
                want = float(np.nanmean(f["measures"][mp][name][:n]))
                expect(key in dom.measures, f"measure {key} missing")
                if key in dom.measures:
                    close(dom.measures[key], want, 1e-5, f"mean {key}")

    # Ids are text, never markup: every id shows as a card's text, no element came from one.
    expect(sorted(dom.ids) == sorted(ids), "card ids differ from /images/id")
    expect(dom.scripts == 2, f"{dom.scripts} script elements, expected 2 (data + code)")
    expect(not any(i.get("src") == "x" for i in dom.imgs), "an id became an <img> element")
    if a.evil:
        expect("<img src=x" not in raw and "<script>alert" not in raw, "raw markup from an id")
        expect("<b>malignant</b>" not in raw, "raw markup from a class name")

    # Thumbnails: RGB-correct input and JET overlays (hot = red where the map peaks).
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', raw,
                      re.S)
    data = json.loads(block.group(1))
    if "images/preprocessed" in f and data["images"]:
        k = 0
        row = ids.index(data["images"][k]["id"])
        rec = data["images"][k]
        img = cv2.imdecode(np.frombuffer(base64.b64decode(rec["img"]), np.uint8), cv2.IMREAD_COLOR)
        src = f["images/preprocessed"][row]
        small = cv2.resize(src, (rec["w"], rec["h"]), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(float)
        expect(np.abs(rgb - small).mean() < 6, f"input thumbnail differs (mean {np.abs(rgb - small).mean():.1f})")
        for m, name in enumerate(data["maps"]):
            heat = cv2.imdecode(np.frombuffer(base64.b64decode(rec["maps"][m]), np.uint8),
                                cv2.IMREAD_COLOR)
            heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(int)
            native = f["attention/" + name][row]
            up = cv2.resize(native, (rec["w"], rec["h"]), interpolation=cv2.INTER_LINEAR)
            hy, hx = np.unravel_index(np.argmax(up), up.shape)
            cy, cx = np.unravel_index(np.argmin(up), up.shape)
            hot, cold = heat[hy, hx], heat[cy, cx]
            expect(hot[0] > 110 and hot[2] < 90 and hot[1] < hot[0], f"{name}: peak colour {hot}, expected red")
            expect(cold[2] > 100 and cold[0] < 60, f"{name}: low colour {cold}, expected blue")

    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print("report ok")


if __name__ == "__main__":
    main()
