"""Perturb the input of a certified and an uncertified model and compare the output deviation with the bound.

A model with an incremental certificate $\\gamma$ satisfies
$\\|G(u + \\delta) - G(u)\\| \\le \\gamma \\|\\delta\\|$ for every input $u$ and
perturbation $\\delta$. The script draws one input sequence, adds Gaussian
perturbations of growing norm and, at a few norms, perturbations found by a
gradient search for the worst case, and plots the output deviation of

* a certified model (default: core ``l2n`` and layer ``TLIP``, both incremental, with ``gamma``), and
* an uncertified one (core ``lru`` and layer ``GLU``), of the same size,

against $\\|\\delta\\|$, with the certified line $\\gamma \\|\\delta\\|$. Both
models are trained for a few steps on the same toy task first, so neither is
at its initialisation. The plot is saved as a PNG; the script also prints the
largest ratio $\\|G(u + \\delta) - G(u)\\| / \\|\\delta\\|$ each model reached.

Usage::

    python examples/robustness_demo.py --output robustness.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen before pyplot is imported)
import torch  # noqa: E402

from nssm_core import DeepSSM  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="robustness.png", help="PNG file to write (default: robustness.png).")
    parser.add_argument("--gamma", type=float, default=2.0, help="Certified incremental bound (default: 2).")
    parser.add_argument("--param", default="l2n", help="Core of the certified model (default: l2n).")
    parser.add_argument("--ff", default="TLIP", help="Incremental layer of the certified model (default: TLIP).")
    parser.add_argument("--length", type=int, default=200, help="Time steps of the input (default: 200).")
    parser.add_argument("--perturbations", type=int, default=40, help="Perturbations drawn (default: 40).")
    parser.add_argument("--train-steps", type=int, default=30, help="Training steps before the test (default: 30).")
    parser.add_argument(
        "--search-steps", type=int, default=60, help="Adam steps of the worst-case perturbation search (default: 60)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    return parser.parse_args(argv)


def fit_briefly(model: DeepSSM, u: torch.Tensor, target: torch.Tensor, steps: int) -> None:
    """Train ``model`` for ``steps`` Adam steps on ``(u, target)``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        prediction, _ = model(u)
        torch.nn.functional.mse_loss(prediction, target).backward()
        optimizer.step()
    model.eval()


def deviations(model: DeepSSM, u: torch.Tensor, perturbations: torch.Tensor) -> torch.Tensor:
    """Return $\\|G(u + \\delta_k) - G(u)\\|$ for each perturbation $\\delta_k$, ``(count,)``."""
    with torch.no_grad():
        reference, _ = model(u)
        perturbed, _ = model(u + perturbations)
    return (perturbed - reference).flatten(1).norm(dim=1)


def adversarial_deviations(model: DeepSSM, u: torch.Tensor, norms: torch.Tensor, steps: int) -> torch.Tensor:
    """Return the output deviation of a searched worst-case perturbation at each of ``norms``, ``(count,)``.

    For each norm, Adam ascends the deviation over the perturbation's
    direction, with the norm held fixed. The result is a lower bound of the
    worst case at that norm.
    """
    model.requires_grad_(False)
    with torch.no_grad():
        reference, _ = model(u)
    direction = torch.randn(norms.shape[0], *u.shape[1:], requires_grad=True)
    optimizer = torch.optim.Adam([direction], lr=0.05)
    best = torch.zeros(norms.shape[0])
    for _ in range(steps + 1):
        optimizer.zero_grad()
        unit = direction / direction.flatten(1).norm(dim=1).reshape(-1, 1, 1)
        perturbed, _ = model(u + unit * norms.reshape(-1, 1, 1))
        deviation = (perturbed - reference).flatten(1).norm(dim=1)
        best = torch.maximum(best, deviation.detach())
        (-deviation / norms).sum().backward()
        optimizer.step()
    model.requires_grad_(True)
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison, save the plot and return each model's largest deviation ratio."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    sizes = dict(d_model=8, d_state=8, n_layers=2)
    certified = DeepSSM(1, 1, param=args.param, ff=args.ff, gamma=args.gamma, **sizes)
    uncertified = DeepSSM(1, 1, param="lru", ff="GLU", **sizes)
    if certified.certificate().kind != "incremental":
        raise SystemExit(
            f"core {args.param!r} with layer {args.ff!r} gives a {certified.certificate().kind!r} certificate; "
            "this demo needs an incremental one (see `nssm plugins` for each entry's certificate)"
        )

    # A toy task: a smoothed, saturated response to a random input.
    train_u = torch.randn(8, args.length, 1)
    train_y = torch.tanh(torch.cumsum(train_u, dim=1) / 8)
    fit_briefly(certified, train_u, train_y, args.train_steps)
    fit_briefly(uncertified, train_u, train_y, args.train_steps)

    u = torch.randn(1, args.length, 1)
    directions = torch.randn(args.perturbations, args.length, 1)
    directions = directions / directions.flatten(1).norm(dim=1).reshape(-1, 1, 1)
    norms = torch.logspace(-2, 1.5, args.perturbations)
    perturbations = directions * norms.reshape(-1, 1, 1)

    searched_norms = torch.logspace(-2, 1.5, 8)

    bound = certified.certificate().bound
    results = {}
    figure, axis = plt.subplots(figsize=(7, 5))
    for label, model, color in (
        (f"certified ({args.param} + {args.ff})", certified, "tab:blue"),
        ("uncertified (lru + GLU)", uncertified, "tab:orange"),
    ):
        random_deviation = deviations(model, u, perturbations)
        searched_deviation = adversarial_deviations(model, u, searched_norms, args.search_steps)
        ratio = max(float((random_deviation / norms).max()), float((searched_deviation / searched_norms).max()))
        results[label] = ratio
        axis.loglog(norms, random_deviation, "o", color=color, markersize=4, label=f"{label}, random")
        axis.loglog(
            searched_norms, searched_deviation, "^-", color=color, markersize=6,
            label=f"{label}, searched worst case (max ratio {ratio:.2f})",
        )
        print(f"{label}: largest ||G(u + d) - G(u)|| / ||d|| = {ratio:.4f}")
    axis.loglog(norms, bound * norms, "k--", label=rf"certified bound $\gamma\|\delta\|$, $\gamma$ = {bound:.2f}")
    axis.set_xlabel(r"perturbation norm $\|\delta\|$")
    axis.set_ylabel(r"output deviation $\|G(u+\delta) - G(u)\|$")
    axis.set_title("Output deviation under input perturbations")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output, dpi=120)
    print(f"certified bound: {bound:.4f}; saved {args.output}")
    return results


if __name__ == "__main__":
    main()
