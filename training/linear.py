"""Simple linear regression, y = b + w*x, on the tutorial's data: y = 7x + 5 + N(0, 2), 100 points.

The tutorial's SGD (lr 0.001, 20 epochs) stops far from the optimum (b=2.2, w=2.4). Ten times the
learning rate and five times the epochs reach the sample's own least-squares fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from training.common import Trained, epochs_bar, plot_losses, rounded, save_figure


@dataclass
class Recipe:
    epochs: int = 100
    lr: float = 0.01  # the tutorial's 0.001 does not converge in any sensible number of epochs
    batch_size: int = 10  # the tutorial's mini-batches
    n: int = 100


class LinearRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # (B, 1) -> (B, 1)


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn((n, 1))
    y = 7 * x + 5 + torch.normal(0, 2, (n, 1))
    return x, y


def least_squares(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Closed-form (b, w) of the same sample, in float64."""
    a = np.hstack([np.ones((len(x), 1)), x.double().numpy()])
    (b, w), *_ = np.linalg.lstsq(a, y.double().numpy().ravel(), rcond=None)
    return float(b), float(w)


def train(seed: int, recipe: Recipe, out: Path) -> Trained:
    x, y = make_data(recipe.n)
    model = LinearRegression()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    # Cosine decay to zero: constant-lr SGD keeps jittering around the optimum by ~0.005.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    losses = []
    for _ in epochs_bar(recipe.epochs, "linear"):
        order = torch.randperm(recipe.n)
        epoch_loss = 0.0
        for i in range(0, recipe.n, recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(idx) / recipe.n
        schedule.step()
        losses.append(epoch_loss)

    b, w = model.linear.bias.item(), model.linear.weight.item()
    b_ls, w_ls = least_squares(x, y)
    with torch.no_grad():
        mse = nn.functional.mse_loss(model(x), y).item()
    metrics = rounded({"b": b, "w": w, "b_least_squares": b_ls, "w_least_squares": w_ls, "train_mse": mse})
    _plot(x, y, model, losses, out / "linear.png")
    return Trained(
        name="linear",
        examples=[1.0, 2.0],  # the OpenAPI document's example request, as the README sends it
        module=model,
        task="regression",
        description="Simple linear regression y = b + w*x fitted to y = 7x + 5 + N(0, 2) noise.",
        input_shape=(1,),
        output_name="y",
        output_shape=(1,),
        parity_inputs=lambda n: np.linspace(-3, 3, n, dtype=np.float32).reshape(n, 1),
        preprocessing={"x": "raw value, float32; no scaling"},
        recipe={"optimizer": "SGD", "schedule": "cosine", "loss": "MSE"} | asdict(recipe),
        data={"source": "y = 7x + 5 + N(0, 2), x ~ N(0, 1)", "train_rows": recipe.n},
        metrics=metrics,
        seed=seed,
        losses=losses,
    )


def _plot(x: torch.Tensor, y: torch.Tensor, model: nn.Module, losses: list[float], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    grid = torch.linspace(float(x.min()), float(x.max()), 50).reshape(-1, 1)
    with torch.no_grad():
        fitted = model(grid)
    left.scatter(x.numpy(), y.numpy(), s=12, alpha=0.6, label="data")
    left.plot(grid.numpy(), fitted.numpy(), color="C1", label="fitted")
    left.plot(grid.numpy(), 7 * grid.numpy() + 5, "--", color="gray", label="truth: 7x + 5")
    left.set_xlabel("x")
    left.set_ylabel("y")
    left.legend()
    left.set_title("linear regression")
    plot_losses(right, losses)
    save_figure(fig, path)
