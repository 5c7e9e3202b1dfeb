"""VMamba's SS2D (2-D selective scan), as ConvMambaSR and HAT's HATM use it (forward "v2" / CrossScan-CrossMerge).

in_proj -> depthwise conv -> SiLU -> four directional selective scans (row-major, column-major and both reversed;
each with its own x_proj, dt_proj, A, D) summed back in row-major order -> LayerNorm -> * SiLU(z) -> out_proj.
Key names match VMamba's (`x_proj_weight`, `dt_projs_weight`, `dt_projs_bias`, `A_logs`, `Ds`, `out_norm`), so
checkpoints load strictly. The scan is `archs.ops.selective_scan` (a compiled kernel on CUDA, else the reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.selective_scan import selective_scan

__all__ = ["SS2D"]


class SS2D(nn.Module):
    """2-D selective scan: in_proj -> depthwise conv -> SiLU -> four directional selective scans (K=4, each with
    its own x_proj, dt_proj, A, D) summed -> LayerNorm -> * SiLU(z) -> out_proj. Input and output (B, H, W, C)."""

    def __init__(
        self,
        *,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: float = 2.0,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        dropout: float = 0.0,
        conv_bias: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        k, di, n, r = 4, self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, di * 2, bias=bias)
        self.conv2d = nn.Conv2d(di, di, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=di, bias=conv_bias)
        self.act = nn.SiLU()
        # Per direction k: x_proj (dt_rank + 2N, d_inner), dt_proj weight (d_inner, dt_rank) and bias (d_inner).
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, di))
        self.A_logs = nn.Parameter(torch.empty(k * di, n))  # A = -exp(A_logs), rows: direction-major channels
        self.Ds = nn.Parameter(torch.empty(k * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None
        self._init_ssm(dt_scale, dt_init, dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_scale: float, dt_init: str, dt_min: float, dt_max: float, floor: float) -> None:
        """Mamba's initialisation: x_proj like nn.Linear, dt_proj weight uniform/constant at dt_rank^-0.5 * scale,
        dt bias = softplus^-1 of a log-uniform dt in [dt_min, dt_max], S4D-real A = -(1..N), D = 1."""
        bound = self.d_inner**-0.5
        self.x_proj_weight.uniform_(-bound, bound)
        std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            self.dt_projs_weight.fill_(std)
        elif dt_init == "random":
            self.dt_projs_weight.uniform_(-std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', not {dt_init!r}")
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        states = torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, d_inner, H, W) -> the four directions' scan outputs, back in row-major order and summed."""
        b, c, h, w = x.shape
        length = h * w
        rows = x.reshape(b, c, length)
        cols = x.transpose(2, 3).reshape(b, c, length)
        xs = torch.stack([rows, cols], dim=1)
        xs = torch.cat([xs, xs.flip(-1)], dim=1)  # (B, 4, C, L): row, column, reversed row, reversed column
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        # The scan works in float32 whatever the inputs' dtype; A, D and the dt bias are passed as float32.
        ys = selective_scan(
            xs.reshape(b, -1, length), dts.reshape(b, -1, length), -torch.exp(self.A_logs.float()), Bs, Cs,
            self.Ds.float(), z=None, delta_bias=self.dt_projs_bias.float().reshape(-1), delta_softplus=True,
        )
        ys = ys.reshape(b, 4, c, length)
        back = ys[:, 2:4].flip(-1)  # reversed scans, back in forward order
        col_sum = (ys[:, 1] + back[:, 1]).reshape(b, c, w, h).transpose(2, 3).reshape(b, c, length)
        return ys[:, 0] + back[:, 0] + col_sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self.forward_core(x).to(z.dtype)
        y = self.out_norm(y.transpose(1, 2).reshape(b, h, w, -1)) * F.silu(z)
        out = self.out_proj(y)
        return self.dropout(out) if self.dropout is not None else out
