"""Evaluate a paper-code checkpoint with the toolkit engine (clean / verified error, full test set and
first 1000), to check that both codes measure the same numbers."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import evaluate, load_fmnist, paper_state_to_toolkit

torch.set_num_threads(1)
ck, method = sys.argv[1], sys.argv[2]
slope = sys.argv[3] if len(sys.argv) > 3 else None
sd = torch.load(ck, map_location="cpu")["state_dict"]
m = paper_state_to_toolkit(sd)
d = load_fmnist()
torch.save(m.state_dict(), ck + ".toolkit.pt")
full = evaluate(m, d.test_x, d.test_y, 0.1, method, slope)
k1 = evaluate(m, d.test_x[:1000], d.test_y[:1000], 0.1, method, slope)
print(
    json.dumps(
        dict(
            ckpt=ck,
            clean_err=full[0],
            verified_err=full[1],
            clean_err_first1000=k1[0],
            verified_err_first1000=k1[1],
        )
    )
)
