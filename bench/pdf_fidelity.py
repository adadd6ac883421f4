#!/usr/bin/env python3
"""Pages per second and word-level F1 of agentdesk's PDF text extraction beside poppler's pdftotext.

Runs both tools, one process per document, over the text-layer documents of the corpus
(pdf_index.tsv: good set, pdftotext ok, at least 20 non-space characters), then prints one row
per document and the totals. The extractor is `agentdesk pdf-extract` (the same child process the
agent runs, with its resource limits); it reads the PDF on stdin and writes JSON.

usage: bench/pdf_fidelity.py [path/to/agentdesk] [corpus/pdf]
"""
import collections
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/release/agentdesk")
CORPUS = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "../shared/corpus/pdf")


def words(text):
    return collections.Counter(text.split())


def f1(ours, ref):
    a, b = words(ours), words(ref)
    common = sum((a & b).values())
    if not a and not b:
        return 1.0
    if common == 0:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(b.values())
    return 2 * precision * recall / (precision + recall)


# The environment the agent gives its extraction child (CHILD_ENV in agents/pdf-processing/src/isolate.rs).
CHILD_ENV = dict(os.environ, AGENTDESK_PDF_CHILD_ALLOCATOR="mimalloc", MIMALLOC_ARENA_EAGER_COMMIT="0")


def timed(cmd, stdin=None):
    start = time.perf_counter()
    done = subprocess.run(cmd, stdin=stdin, capture_output=True, env=CHILD_ENV)
    return time.perf_counter() - start, done


def main():
    rows = []
    with open(os.path.join(CORPUS, "..", "pdf_index.tsv"), encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            if row["set"] == "good" and row["pdftotext_status"].startswith("ok") and int(row["chars_nonws"] or 0) >= 20:
                rows.append(row)
    per_doc = []
    timings = []  # (pages, ours s, pdftotext s) per document
    total = {"ours_s": 0.0, "poppler_s": 0.0, "pages": 0, "common": 0, "ours_words": 0, "ref_words": 0}
    print(f"{'file':60} {'pages':>6} {'ours s':>8} {'pdftotext s':>11} {'F1':>6}")
    for row in rows:
        path = os.path.join(CORPUS, row["file"])
        t_ref, ref = timed(["pdftotext", "-q", "-enc", "UTF-8", path, "-"])
        with open(path, "rb") as pdf:
            t_ours, ours = timed([BIN, "pdf-extract"], stdin=pdf)
        try:
            doc = json.loads(ours.stdout)
            text = "\n".join(p["text"] for p in doc["pages"])
        except (ValueError, KeyError):
            doc, text = {}, ""
        ref_text = ref.stdout.decode("utf-8", "replace")
        score = f1(text, ref_text)
        per_doc.append(score)
        a, b = words(text), words(ref_text)
        total["common"] += sum((a & b).values())
        total["ours_words"] += sum(a.values())
        total["ref_words"] += sum(b.values())
        pages = int(row["pages"])
        total["pages"] += pages
        total["ours_s"] += t_ours
        total["poppler_s"] += t_ref
        timings.append((pages, t_ours, t_ref))
        err = doc.get("error") or {}
        print(f"{row['file'][:60]:60} {pages:6} {t_ours:8.3f} {t_ref:11.3f} {score:6.3f} {err.get('code', '')}")
    p = total["common"] / max(total["ours_words"], 1)
    r = total["common"] / max(total["ref_words"], 1)
    micro = 2 * p * r / (p + r) if p + r else 0.0
    print()
    print(f"documents: {len(rows)}, pages: {total['pages']}")
    print(f"agentdesk pdf-extract: {total['ours_s']:.2f} s, {total['pages'] / total['ours_s']:.0f} pages/s")
    print(f"pdftotext:             {total['poppler_s']:.2f} s, {total['pages'] / total['poppler_s']:.0f} pages/s")
    # The longest document weighs most in the totals; show the rest on their own too.
    longest = max(timings)
    rest = [t for t in timings if t is not longest]
    rest_pages = sum(t[0] for t in rest)
    print(f"without the longest document ({longest[0]} pages): ours {rest_pages / sum(t[1] for t in rest):.0f} pages/s, "
          f"pdftotext {rest_pages / sum(t[2] for t in rest):.0f} pages/s")
    print(f"documents extracted at least as fast as pdftotext: {sum(1 for t in timings if t[1] <= t[2])} of {len(timings)}")
    print(f"word-level F1 against pdftotext (all words pooled): {micro:.4f} (precision {p:.4f}, recall {r:.4f})")
    mean = sum(per_doc) / len(per_doc)
    print(f"word-level F1, mean over documents: {mean:.4f}; documents at or above 0.97: "
          f"{sum(1 for f in per_doc if f >= 0.97)} of {len(per_doc)}")
    largest = max(rows, key=lambda r: int(r["size_bytes"]))
    path = os.path.join(CORPUS, largest["file"])
    for name, cmd in (("agentdesk pdf-extract", [BIN, "pdf-extract"]), ("pdftotext", ["pdftotext", "-q", path, "/dev/null"])):
        with open(path, "rb") as pdf:
            done = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdin=pdf if name.startswith("agentdesk") else None, env=CHILD_ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak_kib = int(done.stderr.decode().strip().splitlines()[-1])
        print(f"peak RSS on the largest file ({largest['file']}, {int(largest['size_bytes']) / 1e6:.1f} MB, "
              f"{largest['pages']} pages), {name}: {peak_kib / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
