"""Memory of the Mult-VAE's training process by the number of items it models.

The Mult-VAE trains on the driver (``train.vae``, up to ``max_interactions`` pairs); its network
has an input and an output row per item, so its memory grows with the items it models, which
``train.vae.max_items`` bounds. For each ``--items`` count this script trains the default
network (``conf/base.yaml``: hidden 256, latent 64, text conditioning on 384-d vectors, batches of
256 users) for ``--steps`` Adam steps on synthetic pairs (``--users`` users with 2 items each, at
random), each size in a fresh Python process, and prints the process's RSS after the imports, its
peak (``ru_maxrss``) and the difference, per item, and the marginal cost per item between
consecutive sizes (what ``max_items`` multiplies)::

    .venv/bin/python benchmarks/vae_memory.py --items 2000 11060 50000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, nargs="+", default=[2000, 11060, 50000, 100000])
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--steps", type=int, default=20, help="Adam steps per size (memory peaks in the first)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    return p.parse_args(argv)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(n_items: int, n_users: int, steps: int) -> dict[str, float]:
    """Train ``steps`` steps of the default network on ``n_items`` items in this process."""
    import resource

    import numpy as np
    import torch

    from longtail.core.config import load_config
    from longtail.ml import vae as V

    cfg = load_config().train.vae
    torch.set_num_threads(1)
    base = _rss_mb()
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(n_users), 2)
    cols = rng.integers(0, n_items, len(rows))
    text = rng.standard_normal((n_items, 384)).astype(np.float32) if cfg.text else None
    net = V.network(n_items, cfg.hidden, cfg.latent, cfg.dropout, text)
    data = V.UserRows(rows, cols, n_items)
    V.train_steps(net, net, data, cfg, total=steps, batch_size=cfg.batch_size, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    return {"items": n_items, "base_mb": base, "peak_mb": peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.users, args.steps)))
        return 0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")])),
    }
    print(
        f"host: {platform.node()} ({os.cpu_count()} cores), torch on CPU, one thread; {args.steps} steps per size"
    )
    print("| items | RSS after imports MB | peak RSS MB | training MB | KB per item | marginal KB per item |")
    print("|---:|---:|---:|---:|---:|---:|")
    last: dict[str, float] | None = None
    for n in sorted(args.items):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--users",
                str(args.users),
                "--steps",
                str(args.steps),
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        grown = r["peak_mb"] - r["base_mb"]
        marginal = "-"
        if last is not None:
            marginal = f"{(r['peak_mb'] - last['peak_mb']) * 1024 / (n - last['items']):.1f}"
        print(
            f"| {n:,} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {grown:.0f} | {grown * 1024 / n:.1f} | {marginal} |",
            flush=True,
        )
        last = r
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
