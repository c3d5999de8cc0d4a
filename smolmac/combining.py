"""Combining adapters into one, exactly as PEFT's `LoraModel.add_weighted_adapter` does
(peft/tuners/lora/model.py, methods `linear`, `cat` and `svd`):

    smolmac adapters combine math=runs/math style=runs/style --weights 0.7,0.3 --method cat --to out/mix

For each adapted module, adapter i has factors A_i (r_i, in) and B_i (out, r_i) in PEFT's
orientation, scaling s_i = alpha_i / r_i (alpha_i / sqrt(r_i) with rsLoRA) and weight w_i:

- `linear` (equal ranks r): A = Σ sign(w_i s_i) √|w_i s_i| A_i and B = Σ √|w_i s_i| B_i, rank r.
  BA is not Σ w_i s_i B_i A_i (the cross terms B_i A_j stay): PEFT calls it a rough approximation.
- `cat`: A = [w_1 s_1 A_1; w_2 s_2 A_2; ...] stacked along the rank, B = [B_1, B_2, ...] side by
  side, rank Σ r_i; BA = Σ w_i s_i B_i A_i exactly.
- `svd`: ΔW = Σ w_i s_i B_i A_i, U S Vᵀ = svd(ΔW), B = U[:, :R] diag(S[:R]), A = Vᵀ[:R], rank R
  (default: the largest r_i); exact when R >= rank(ΔW), e.g. R >= Σ r_i.

The result has alpha = rank, so its scaling is 1 (the weights and scalings are folded into the
factors). An adapter that does not adapt a module contributes nothing there (`cat` pads it with
zero rows, as PEFT does). smolmac holds factors in mlx-lm's orientation (lora_a = Aᵀ, lora_b = Bᵀ)
and computes in float32 (the SVD in float64). The combined adapter is an ordinary `Adapter`:
written by the exporters (PEFT or mlx-lm layout), attached, fused or combined again.

Where smolmac differs from PEFT (each a case where PEFT's result is not the weighted combination):
DoRA adapters are refused (PEFT keeps lora_A/lora_B only and resets the magnitude vector to the
base's row norms, dropping what each adapter learned), the combined adapter covers the union of
the adapted modules (PEFT's takes the first adapter's `layers_to_transform`, which drops the
others' modules in other blocks), and it never uses rsLoRA scaling (PEFT copies the first
adapter's `use_rslora`, which rescales the combination by √rank).
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import numpy as np

from smolmac.adapters import Adapter
from smolmac.errors import UserError, did_you_mean

METHODS = ("linear", "cat", "svd")


def _identities(ad: Adapter) -> set[str]:
    """What names the adapter's base model: its Hub id, its paths (resolved), its HF-cache repo."""
    out = set()
    for spec in (ad.base, ad.base_path):
        if not spec:
            continue
        spec = str(spec)
        path = Path(spec).expanduser()
        out.add(str(path.resolve()) if path.exists() else spec)
        cached = next((p[len("models--"):].replace("--", "/") for p in path.parts if p.startswith("models--")), None)
        if cached:  # a snapshot in the Hugging Face cache is its Hub id
            out.add(cached)
    return out


def check_same_base(adapters: dict[str, Adapter]) -> None:
    """UserError when two adapters were trained on different base models: another recorded base,
    another number of blocks, or a module of another shape."""
    names = list(adapters)
    first, ad0 = names[0], adapters[names[0]]
    shapes: dict[str, tuple[str, tuple]] = {}  # module -> (adapter name, (in, out))
    for name, ad in adapters.items():
        ids0, ids = _identities(ad0), _identities(ad)
        if ids0 and ids and not ids0 & ids:
            raise UserError(f"combine: '{first}' and '{name}' were trained on different base models ({ad0.base} and {ad.base}); combine adapters of one base model.")
        if ad0.n_blocks and ad.n_blocks and ad0.n_blocks != ad.n_blocks:
            raise UserError(f"combine: '{first}' is for a base with {ad0.n_blocks} blocks and '{name}' for one with {ad.n_blocks}; combine adapters of one base model.")
        for module in ad.modules():
            shape = (ad.weights[f"{module}.lora_a"].shape[0], ad.weights[f"{module}.lora_b"].shape[1])
            other = shapes.setdefault(module, (name, shape))
            if other[1] != shape:
                raise UserError(f"combine: '{module}' is {other[1][0]}->{other[1][1]} in '{other[0]}' but {shape[0]}->{shape[1]} in '{name}', so they were trained on different base models; combine adapters of one base model.")


def _factors(ad: Adapter, module: str) -> tuple[mx.array, mx.array]:
    """(lora_a (in, r), lora_b (r, out)) of one module in float32."""
    return ad.weights[f"{module}.lora_a"].astype(mx.float32), ad.weights[f"{module}.lora_b"].astype(mx.float32)


def _svd(delta_t: np.ndarray, rank: int, module: str) -> tuple[np.ndarray, np.ndarray]:
    """Rank-R factors of ΔW = delta_tᵀ (out, in): (lora_a (in, R), lora_b (R, out))."""
    delta = delta_t.T.astype(np.float64)  # PEFT's orientation (out, in)
    if rank > min(delta.shape):
        raise UserError(f"--rank: {rank} is larger than '{module}' allows ({delta.shape[1]}->{delta.shape[0]}, at most rank {min(delta.shape)}); choose a smaller --rank.")
    u, s, vh = np.linalg.svd(delta, full_matrices=False)
    b = u[:, :rank] * s[:rank]  # (out, R): U diag(S)
    a = vh[:rank]  # (R, in)
    return a.T.astype(np.float32), b.T.astype(np.float32)


def combine(adapters: dict[str, Adapter], weights, method: str = "svd", rank: int | None = None) -> Adapter:
    """One adapter from several, with PEFT's `add_weighted_adapter` definitions (module docstring).

    Args:
        adapters: {name: Adapter}, two or more, in order (the first one's dropout and base are kept).
        weights: one number per adapter (negative values subtract an adapter).
        method: "linear" (equal ranks), "cat" (rank = sum of ranks) or "svd" (rank `rank`).
        rank: the rank of an `svd` combination (default: the largest rank); only for svd.
    """
    names, ads = list(adapters), list(adapters.values())
    if method not in METHODS:
        raise UserError(f"--method: '{method}' is not a combination method{did_you_mean(method, METHODS)}; choose linear, cat or svd.")
    if len(ads) < 2:
        raise UserError(f"combine: give two adapters or more (got {len(ads)}).")
    weights = [float(w) for w in weights]
    if len(weights) != len(ads):
        raise UserError(f"--weights: {len(weights)} weight(s) for {len(ads)} adapters; give one weight per adapter, e.g. --weights {','.join(['0.5'] * len(ads))}.")
    dora = [n for n, ad in adapters.items() if ad.dora]
    if dora:
        raise UserError(f"combine: '{dora[0]}' is a DoRA adapter, and PEFT's combination keeps only lora_A/lora_B and resets the DoRA magnitudes to the base's (dropping what they learned); combine LoRA adapters, or export each DoRA adapter fused (--format hf).")
    check_same_base(adapters)
    ranks = [ad.rank for ad in ads]
    if method != "svd" and rank is not None:
        raise UserError(f"--rank: only --method svd takes a rank (linear keeps the rank, {ranks[0]}; cat adds the ranks up, {sum(ranks)}).")
    if method == "linear" and len(set(ranks)) != 1:
        raise UserError(f"--method linear: the adapters have different ranks ({', '.join(f'{n} {r}' for n, r in zip(names, ranks))}) and linear needs equal ranks; use --method cat or --method svd --rank R.")
    if rank is not None and rank < 1:
        raise UserError(f"--rank: {rank} must be a positive integer.")
    new_rank = {"linear": ranks[0], "cat": sum(ranks), "svd": rank or max(ranks)}[method]

    out = {}
    for module in sorted({m for ad in ads for m in ad.modules()}):
        here = [(w * ad.scale, *_factors(ad, module)) for w, ad in zip(weights, ads) if f"{module}.lora_a" in ad.weights]
        if method == "linear":
            # PEFT: the sign goes on A only, so a negative weight subtracts the adapter
            a = sum(math.copysign(math.sqrt(abs(ws)), ws) * la for ws, la, _ in here)
            b = sum(math.sqrt(abs(ws)) * lb for ws, _, lb in here)
        elif method == "cat":
            d_in, d_out = here[0][1].shape[0], here[0][2].shape[1]
            pad = new_rank - sum(la.shape[1] for _, la, _ in here)  # adapters absent here: zeros
            a = mx.concatenate([ws * la for ws, la, _ in here] + [mx.zeros((d_in, pad))], axis=1)
            b = mx.concatenate([lb for _, _, lb in here] + [mx.zeros((pad, d_out))], axis=0)
        else:
            delta_t = sum(ws * (np.array(la, np.float64) @ np.array(lb, np.float64)) for ws, la, lb in here)  # ΔWᵀ (in, out)
            a, b = (mx.array(x) for x in _svd(delta_t, new_rank, module))
        out[f"{module}.lora_a"], out[f"{module}.lora_b"] = a, b
    mx.eval(out)
    ad0 = ads[0]
    return Adapter(weights=out, rank=new_rank, alpha=float(new_rank), scale=1.0, dropout=ad0.dropout,
                   base=ad0.base, base_path=ad0.base_path, n_blocks=next((ad.n_blocks for ad in ads if ad.n_blocks), None))


def parse_weights(text) -> list[float]:
    """`0.7,0.3` (or a list of numbers) as floats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            raise UserError(f"--weights: '{str(item).strip()}' is not a number; give one number per adapter, e.g. --weights 0.7,0.3.") from None
    return out
