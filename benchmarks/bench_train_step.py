"""Time one training step of the per-frame MLP head under four loss/optimizer settings.

    (a) ERM  + Adam                 plain mean of the per-sample cross-entropy
    (b) CVaR + Adam                 exact CVaR by top-k on the device
    (c) CVaR + SAM                  two forward/backward passes
    (d) CVaR (host search) + SAM    the seed code's CPU scalar search each pass

Prints the median milliseconds per step and the ratios (c)/(a) and (d)/(c).

    python benchmarks/bench_train_step.py --device cpu --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from affstream.heads.mlp import MLPHead
from affstream.runtime import resolve_device
from affstream.train.losses import cvar, cvar_host_search, expr_loss
from affstream.train.sam import SAM, sam_step


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per setting")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=768, help="feature width D")
    parser.add_argument("--alpha", type=float, default=0.3, help="CVaR level")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(setting: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    torch.manual_seed(0)
    head = MLPHead(args.dim, ("expr",), meaningful=False).to(device).train()
    x = torch.randn(args.batch, args.dim, device=device)
    y = torch.randint(0, 8, (args.batch,), device=device)

    def loss_with(reducer: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], torch.Tensor]:
        return lambda: reducer(expr_loss(head(x).expr_logits, y))

    if setting in ("a", "b"):
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        reducer = (lambda losses: losses.mean()) if setting == "a" else (lambda losses: cvar(losses, args.alpha))
        loss_fn = loss_with(reducer)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()

        return step
    sam = SAM(head.parameters(), torch.optim.Adam, rho=0.05, lr=1e-3)
    exact = setting == "c"
    loss_fn = loss_with((lambda losses: cvar(losses, args.alpha)) if exact
                        else (lambda losses: cvar_host_search(losses, args.alpha)))

    def sam_update() -> None:
        sam_step(head, loss_fn, sam)

    return sam_update


def _median_ms(steps: dict[str, Callable[[], None]], args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median wall time per step of each setting, in ms. The settings take turns step by
    step, so a change in machine load affects them all alike."""
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    _sync(device)
    times: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(args.steps):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[key].append((time.perf_counter() - start) * 1e3)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    args = _parse()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    names = {
        "a": "ERM + Adam",
        "b": "CVaR (top-k) + Adam",
        "c": "CVaR (top-k) + SAM",
        "d": "CVaR (host search) + SAM",
    }
    ms = _median_ms({key: _make_step(key, args, device) for key in names}, args, device)
    print(f"device={device} batch={args.batch} dim={args.dim} alpha={args.alpha} "
          f"steps={args.steps} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'setting':<32}{'median ms/step':>16}")
    for key, name in names.items():
        print(f"({key}) {name:<28}{ms[key]:>16.3f}")
    print(f"ratio (c)/(a): {ms['c'] / ms['a']:.2f}   ratio (d)/(c): {ms['d'] / ms['c']:.2f}")


if __name__ == "__main__":
    main()
