"""Batch losses every 50 steps: paper log ([e: i] lines, 'Total Loss val') vs toolkit log (json lines)."""

import json
import re
import sys

paper, tk = sys.argv[1], sys.argv[2]
P = {}
for line in open(paper):
    m = re.match(
        r"\[ *(\d+): *(\d+)\]: eps ([0-9.]+) .*?Total Loss ([0-9.]+) .*? CE ([0-9.]+) .*?Err ([0-9.]+) \(",
        line,
    )
    if m:
        e, i = int(m.group(1)), int(m.group(2))
        P[e * 750 + i] = (float(m.group(3)), float(m.group(4)), float(m.group(6)))
T = {}
for line in open(tk):
    if line.startswith("{"):
        d = json.loads(line)
        T[d["step"]] = (d["eps"], d["loss"], d["clean_err"])
for s in sorted(set(P) & set(T)):
    print(
        f"step {s:5d} eps {P[s][0]:.4f}/{T[s][0]:.4f} loss paper {P[s][1]:.4f} "
        f"toolkit {T[s][1]:.4f}  batch clean err {P[s][2]:.4f} / {T[s][2]:.4f}"
    )
