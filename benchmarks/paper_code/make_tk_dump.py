"""Write the toolkit run's initial weights (paper key names) and data order, for factor swaps."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_common import toolkit_model

from train.run_setup import mix_seed as _mix

seed, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
torch.manual_seed(seed)
m = toolkit_model()
mp = {"1": "0", "3": "2", "6": "5", "8": "7"}
sd = {
    f"{mp[k.split('.')[0]]}.{k.split('.')[1]}": v.clone()
    for k, v in m.state_dict().items()
    if k.split(".")[0] in mp
}
torch.save(sd, f"{out}/init.pt")
orders = [
    torch.randperm(60000, generator=torch.Generator().manual_seed(_mix(seed, e))) for e in range(2)
]
torch.save(orders, f"{out}/order.pt")
print({k: tuple(v.shape) for k, v in sd.items()}, [o[:5].tolist() for o in orders])
