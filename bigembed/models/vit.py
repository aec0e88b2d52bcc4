"""A ViT-B/16-shaped image transformer built from ``torch.nn``, with random weights.

For throughput benchmarks (torchvision does not import beside the CPU torch here). The shape
follows ViT-B/16: 224 x 224 x 3 images, 16 x 16 patches (196 + a class token), width 768,
12 pre-norm blocks of 12 heads with an MLP of 3072, a final LayerNorm and a 1000-way head:
about 86 M parameters and 17.6 GFLOPs per image. Named layers: ``patch_embed``,
``blocks.0`` .. ``blocks.11``, ``norm``, ``head``.
"""

from __future__ import annotations

import numpy as np


def build_vit_b16(*, image_size: int = 224, patch: int = 16, width: int = 768, depth: int = 12,
                  heads: int = 12, mlp: int = 3072, classes: int = 1000, seed: int = 0):
    """The model (eval mode, random weights from ``seed``); input (B, 3, H, W) float."""
    import torch
    import torch.nn as nn

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
            tokens = (image_size // patch) ** 2 + 1
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
            self.pos_embed = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
            self.blocks = nn.ModuleList([
                nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
                for _ in range(depth)])
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 196, width)
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
            for b in self.blocks:
                x = b(x)
            x = self.norm(x)
            return self.head(x[:, 0])

    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = ViT()
    return model.eval()


class RandomImages:
    """``n`` seeded random images (3, size, size) float32, built a batch at a time."""

    def __init__(self, n: int, *, seed: int = 0, size: int = 224):
        self.n, self.seed, self.size = int(n), int(seed), int(size)
        self.fingerprint = f"random_images:n={n}:seed={seed}:size={size}"

    def __len__(self) -> int:
        return self.n

    def _make(self, ids):
        import torch

        out = np.empty((len(ids), 3, self.size, self.size), np.float32)
        for j, i in enumerate(ids):
            out[j] = np.random.default_rng([self.seed, int(i)]).standard_normal(
                (3, self.size, self.size), dtype=np.float32)
        return torch.from_numpy(out)

    def __getitem__(self, i):
        return self._make([i])[0]

    def __getitems__(self, ids):
        return list(self._make(ids).unbind(0))
