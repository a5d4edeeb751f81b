"""Train the paper's model_small (padded, 28x28) with the toolkit's loop (the installed toolkit).

python tk_run.py --method crown-ibp --seed 0 --out runs/x [--kappa-start 0] [--clip] [--dm-small]
       [--init-from paper_dump/init.pt] [--order-from paper_dump/order.pt] [--steps 1500] [--ramp-epochs 1]
Loss/schedule: batch 80, Adam lr 5e-4, eps 0 -> 0.1 linear over --ramp-epochs epochs (per step),
beta 1, kappa kappa_start -> 0 over the ramp, no normalisation, eps-ball unclipped unless --clip.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import evaluate, load_fmnist, paper_state_to_toolkit, toolkit_model

from train.data import Data
from train.loop import train

p = argparse.ArgumentParser()
p.add_argument("--method", required=True, choices=["ibp", "crown-ibp", "cap", "tightest"])
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True)
p.add_argument("--kappa-start", type=float, default=0.0)
p.add_argument("--clip", action="store_true")
p.add_argument("--dm-small", action="store_true")
p.add_argument("--init-from")
p.add_argument("--order-from")
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--ramp-epochs", type=float, default=1.0)
p.add_argument("--threads", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads)

os.makedirs(a.out, exist_ok=True)
data = load_fmnist()
domain = (0.0, 1.0) if a.clip else (-math.inf, math.inf)
spec = dataclasses.replace(data.spec, domain=domain, mean=(0.0,), std=(1.0,))
data = Data(data.train_x, data.train_y, data.test_x, data.test_y, spec, data.source)

method, slope = {"cap": ("crown-ibp", "same-slope")}.get(a.method, (a.method, None))
cfg = dict(
    dataset="fashion-mnist",
    model="dm-small" if a.dm_small else "custom-padded-small",
    method=method,
    slope=slope,
    eps=0.1,
    eps_start_epoch=0.0,
    eps_ramp_epochs=a.ramp_epochs,
    eps_schedule="linear",
    beta_start=1.0,
    beta_end=1.0,
    kappa_start=a.kappa_start,
    kappa_end=0.0,
    epochs=2,
    batch_size=80,
    optimizer="adam",
    lr=5e-4,
    seed=a.seed,
    eval_size=0,
    record_every=50,
)
if a.dm_small:
    model = None  # the zoo's dm-small (no padding), built after torch.manual_seed(seed)
else:
    torch.manual_seed(a.seed)
    model = toolkit_model()
    if a.init_from:
        model = paper_state_to_toolkit(torch.load(a.init_from))

real_randperm = torch.randperm
if a.order_from:
    orders = torch.load(a.order_from)  # list of index tensors, one per epoch
    calls = {"k": 0}

    def randperm(n, *args, **kw):
        if n == len(data.train_y):
            k = calls["k"]
            calls["k"] += 1
            return orders[k].clone()
        return real_randperm(n, *args, **kw)

    torch.randperm = randperm


class Stop(Exception):
    pass


log = []


class Watch:
    def on_step(self, ctx):
        if ctx.step % 50 == 0:
            log.append(
                dict(
                    step=ctx.step,
                    eps=ctx.eps,
                    kappa=ctx.kappa,
                    loss=ctx.loss,
                    **{k: v for k, v in ctx.stats.items()},
                )
            )
            print(json.dumps(log[-1]), flush=True)
        if ctx.step >= a.steps:
            raise Stop

    def on_epoch_end(self, *args):
        pass

    def on_train_end(self, *args):
        pass


t0 = time.time()
holder = {}
if model is None:
    from train.config import TrainConfig
    from train.loop import build_for_config

    model, _ = build_for_config(TrainConfig.from_dict(cfg), spec)
try:
    res = train(cfg, callbacks=[Watch()], data=data, model=model, progress=False)
except Stop:
    pass
# Stop is raised at step a.steps before its update: exactly a.steps updates were made.
torch.randperm = real_randperm
wall = time.time() - t0
torch.save(model.state_dict(), f"{a.out}/final.pt")
ev_m, ev_s = {"cap": ("crown-ibp", "same-slope")}.get(a.method, (a.method, None))
clean, ver = evaluate(model, data.test_x, data.test_y, 0.1, ev_m, ev_s)
clean1k, ver1k = evaluate(model, data.test_x[:1000], data.test_y[:1000], 0.1, ev_m, ev_s)
_, ver_ibp = evaluate(model, data.test_x, data.test_y, 0.1, "ibp")
out = dict(
    args=vars(a),
    clean_err=clean,
    verified_err_own=ver,
    verified_err_ibp=ver_ibp,
    clean_err_first1000=clean1k,
    verified_err_own_first1000=ver1k,
    wall_s=wall,
    log=log,
)
json.dump(out, open(f"{a.out}/result.json", "w"), indent=1)
print("RESULT", json.dumps({k: v for k, v in out.items() if k != "log"}))
