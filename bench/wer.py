"""Word error rates of transcript tables against the corpus references (bench/speech.sh).

usage: python wer.py INDEX.tsv NAME=FILE.tsv ...   (each FILE.tsv: file<TAB>text per line)
Normalisation as in tests/tests/suite/audio_recording.rs: lower case, punctuation and hyphens as
spaces, "mr" read as "mister"; digits for spoken numbers count as errors.
"""
import csv
import re
import sys


def words(text):
    return ["mister" if w == "mr" else w.strip("'")
            for w in re.sub(r"[^\w']+", " ", text.lower().replace("_", " ")).split()]


def errors(reference, hypothesis):
    r, h = words(reference), words(hypothesis)
    row = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, row[0] = row[0], i
        for j, hw in enumerate(h, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
    return row[len(h)], len(r)


index_path, *tables = sys.argv[1:]
reference = {row["file"]: row["transcript"]
             for row in csv.DictReader(open(index_path), delimiter="\t")
             if row["transcript"] and row["transcript"] != "error"}
results = {}
for spec in tables:
    name, path = spec.split("=", 1)
    results[name] = dict(line.rstrip("\n").split("\t", 1) for line in open(path) if "\t" in line)
files = sorted(set().union(*results.values()) & set(reference))
print("| file | " + " | ".join(results) + " |")
print("|---|" + "---|" * len(results))
totals = {name: [0, 0] for name in results}
for f in files:
    cells = []
    for name, table in results.items():
        if f not in table:
            cells.append("")
            continue
        e, n = errors(reference[f], table[f])
        totals[name][0] += e
        totals[name][1] += n
        cells.append(f"{100 * e / n:.1f} %")
    print(f"| {f} | " + " | ".join(cells) + " |")
print("| **pooled** | " + " | ".join(
    f"**{100 * e / max(n, 1):.1f} %**" for e, n in totals.values()) + " |")
