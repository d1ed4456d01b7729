import torch

# Two cores, as on the target machines; also keeps test timings stable under parallel agents.
torch.set_num_threads(2)
