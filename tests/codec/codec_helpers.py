"""Helpers shared by the codec tests (imported by module name: pytest puts this folder on sys.path)."""

import torch

from heartmula.codec.model import HeartCodec


def perturb_weight_norm_gains(state: dict, seed: int = 0) -> dict:
    """Official files store g separately; make g differ from ||v|| so that folding is actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name, tensor in state.items():
        if name.endswith("parametrizations.weight.original0"):
            out[name] = tensor * (0.5 + torch.rand(tensor.shape, generator=generator))
    return out


def write_official(folder, config, seed=0, max_shard_bytes=None):
    """Write a codec with random weights in the official layout (weight norm as g/v pairs, g != ||v||)."""
    from heartmula.checkpoint import save_state_dict

    model = HeartCodec(config).init_weights(seed)
    state = perturb_weight_norm_gains(model.official_state_dict(), seed)
    save_state_dict(state, folder, max_shard_bytes=max_shard_bytes)
    config.save(folder / "config.json")
    return state


def random_codes(frames: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, size, (8, frames), generator=torch.Generator().manual_seed(seed))
