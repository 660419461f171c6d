"""Multivariate linear regression on the tutorial's five exam rows: three quiz scores -> final score.

On raw scores SGD is hopelessly ill-conditioned (the tutorial's lr 1e-5 x 1000 epochs leaves MSE ~3;
least squares reaches ~0.01). Standardising x and y makes it easy; the scaling is then folded back into
one `Linear(3, 1)`, so the exported model takes raw scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from training.common import Trained, epochs_bar, plot_losses, rounded, save_figure

X_TRAIN = [[73, 80, 75], [93, 88, 93], [89, 91, 80], [96, 98, 100], [73, 66, 70]]
Y_TRAIN = [[152], [185], [180], [196], [142]]


@dataclass
class Recipe:
    epochs: int = 2000
    lr: float = 0.1  # full-batch SGD on standardised data


class MultivariateLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # (B, 3) -> (B, 1)


def least_squares_mse(x: np.ndarray, y: np.ndarray) -> float:
    a = np.hstack([np.ones((len(x), 1)), x])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(np.mean((a @ coef - y) ** 2))


def fold_standardisation(
    model: MultivariateLinear, mx: np.ndarray, sx: np.ndarray, my: float, sy: float
) -> MultivariateLinear:
    """y = sy * (W (x - mx) / sx + b) + my  ==  W' x + b', computed in float64."""
    w = model.linear.weight.detach().double().numpy()[0]
    b = float(model.linear.bias.detach().double().numpy()[0])
    w_raw = sy * w / sx
    b_raw = sy * (b - float(np.sum(w * mx / sx))) + my
    folded = MultivariateLinear()
    with torch.no_grad():
        folded.linear.weight.copy_(torch.tensor(w_raw, dtype=torch.float32).reshape(1, 3))
        folded.linear.bias.copy_(torch.tensor([b_raw], dtype=torch.float32))
    return folded


def train(seed: int, recipe: Recipe, out: Path) -> Trained:
    x = np.array(X_TRAIN, dtype=np.float64)
    y = np.array(Y_TRAIN, dtype=np.float64)
    mx, sx, my, sy = x.mean(0), x.std(0), float(y.mean()), float(y.std())
    xs = torch.tensor((x - mx) / sx, dtype=torch.float32)
    ys = torch.tensor((y - my) / sy, dtype=torch.float32)

    model = MultivariateLinear()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    losses = []
    for _ in epochs_bar(recipe.epochs, "multilinear"):
        loss = nn.functional.mse_loss(model(xs), ys)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() * sy**2)  # in raw units, so the curve reads as the real MSE

    folded = fold_standardisation(model, mx, sx, my, sy)
    with torch.no_grad():
        pred = folded(torch.tensor(x, dtype=torch.float32)).double().numpy()
    mse = float(np.mean((pred - y) ** 2))
    mse_ls = least_squares_mse(x, y)
    metrics = rounded({"train_mse": mse, "train_mse_least_squares": mse_ls, "mse_ratio": mse / mse_ls})
    _plot(y, pred, losses, out / "multilinear.png")
    return Trained(
        name="multilinear",
        examples=[
            [73.0, 80.0, 75.0],
            [93.0, 88.0, 93.0],
        ],  # the OpenAPI document's example request, as the README sends it
        module=folded,
        task="regression",
        description="Multivariate linear regression: three exam scores -> final score (the 5 exam rows).",
        input_shape=(3,),
        output_name="y",
        output_shape=(1,),
        parity_inputs=lambda n: np.random.default_rng(n).uniform(60, 100, (n, 3)).astype(np.float32),
        preprocessing={"x": "three raw exam scores (about 0-100), float32; standardisation is folded in"},
        recipe={"optimizer": "SGD", "loss": "MSE", "standardised": True} | asdict(recipe),
        data={"source": "the tutorial's 5 exam-score rows", "train_rows": len(x)},
        metrics=metrics,
        seed=seed,
        losses=losses,
    )


def _plot(y: np.ndarray, pred: np.ndarray, losses: list[float], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.scatter(y, pred)
    lo, hi = float(y.min()) - 5, float(y.max()) + 5
    left.plot([lo, hi], [lo, hi], "--", color="gray")
    left.set_xlabel("true final score")
    left.set_ylabel("predicted")
    left.set_title("multivariate regression (training rows)")
    plot_losses(right, losses, "training MSE (raw units)")
    save_figure(fig, path)
