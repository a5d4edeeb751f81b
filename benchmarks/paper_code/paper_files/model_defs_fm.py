# Investigation-only model file (not part of the paper code): the paper's model_small with the
# first FC layer sized for 28x28 inputs (model_small in model_defs.py hardcodes 7200 = 32*15*15,
# the 32x32 size; on 28x28 the flattened size is 32*13*13 = 5408).
import torch.nn as nn
from model_defs import Flatten

def model_small28(in_ch, in_dim):
    side = (in_dim + 2 - 4) // 2 + 1          # conv1: 4x4 / 2, pad 1
    side = side + 2 - 4 + 1                   # conv2: 4x4 / 1, pad 1
    return nn.Sequential(
        nn.Conv2d(in_ch, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=1, padding=1),
        nn.ReLU(),
        Flatten(),
        nn.Linear(32 * side * side, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
