"""Training-step speed of every registered model, side by side in one run.

One Adam step (forward, BCE + auxiliary loss, backward) on a random batch shaped like Amazon
Beauty (k = 6, d = 18, L = 20), median of several steps after a warm-up. Ratios to DIN are the
numbers to quote: absolute times depend on the machine and its load.

    python benchmarks/model_speed.py [--batch 2048] [--steps 5] [--device cpu] [--models a,b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from camn.models import FeatureSpec, build_model, model_names

BEAUTY_VOCAB = (12_103, 8, 42, 247, 2_078, 12)


def random_batch(spec: FeatureSpec, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, spec.max_len + 1, (size,), generator=generator)
    mask = torch.arange(spec.max_len)[None] < lengths[:, None]

    def ids(*shape: int) -> torch.Tensor:
        return torch.stack(
            [torch.randint(2, n, shape, generator=generator) for n in spec.vocab_sizes], -1
        )

    batch = {
        "history": ids(size, spec.max_len) * mask[..., None],
        "history_negative": ids(size, spec.max_len) * mask[..., None],
        "mask": mask,
        "target": ids(size),
        "label": torch.randint(0, 2, (size,), generator=generator).float(),
    }
    return {key: value.to(device) for key, value in batch.items()}


def step_seconds(name: str, batch: dict, spec: FeatureSpec, steps: int, device) -> float:
    torch.manual_seed(0)
    model = build_model(name, spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    times = []
    for _ in range(steps + 1):  # the first step is a warm-up
        start = time.perf_counter()
        output = model(batch, extra_losses=True)  # as the trainer asks
        loss = F.binary_cross_entropy_with_logits(output.logits, batch["label"]) + output.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="all")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = FeatureSpec(tuple(f"attribute_{i}" for i in range(6)), BEAUTY_VOCAB, 20)
    names = model_names() if args.models == "all" else args.models.split(",")
    batch = random_batch(spec, args.batch, device)
    seconds = {name: step_seconds(name, batch, spec, args.steps, device) for name in names}
    reference = seconds.get("din")
    print(f"batch {args.batch}, device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"{'model':<12} {'ms/step':>9} {'samples/s':>10} {'x DIN':>7}")
    for name, value in seconds.items():
        ratio = f"{value / reference:7.2f}" if reference else "      -"
        print(f"{name:<12} {value * 1000:9.1f} {args.batch / value:10,.0f} {ratio}")
    print(json.dumps({name: round(args.batch / value) for name, value in seconds.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
