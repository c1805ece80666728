"""Seconds per training epoch of ResNet-20 on CIFAR-shaped data (50,000 images, batch 128): plain
torch.optim.SGD with momentum in our pipeline, our SGD(α, μ)/SGD hyperoptimizer in the same pipeline (eager and
compiled), the reference code's wrapper fed by our pipeline, and a conventional loop (torchvision transforms on PIL
images in a DataLoader, then torch.optim.SGD), side by side in one process. Prints JSON (writes it with --out).

    python scripts/bench_cifar.py --out results/bench_cifar_cpu.json      # a few steps each on a CPU
    python scripts/bench_cifar.py --steps 100 --rounds 5 --out results/bench_cifar_h200.json   # on a GPU

Method: each loop trains its own copy of one model on the same random uint8 images; rounds interleave the loops
(so drift in the machine's speed hits all alike) and time `--steps` consecutive steps each, data pipeline included;
the figure is the median over rounds of the mean step time, times the 391 steps of a 50,000-image epoch
(evaluation and the DataLoader's worker start-up at each epoch are not included). Ratios are against our plain loop.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy
import torch

import hyperopt
from experiments.benchmark import Loop, interleaved
from experiments.cifar import MEAN, STD, AugmentedImages
from experiments.provenance import provenance
from experiments.reports import publish
from experiments.step import train_step
from models import resnet20

IMAGES, BATCH = 50_000, 128
STACK = "SGD(0.1, 0.9, 1e-4)/SGD({α: 1e-5, μ: 1e-5})"  # the (0.1, 0.9) cell of Figure 2, κ as its config's auto


def endless(epoch_batches):
    """Batches of one epoch after another, forever (a new shuffle each epoch)."""
    while True:
        yield from epoch_batches()


def our_batches(data: AugmentedImages, memory_format):
    generator = torch.Generator().manual_seed(0)
    return endless(lambda: ((x.contiguous(memory_format=memory_format), y)
                            for x, y in data.batches(BATCH, generator)))


def dataloader_batches(images: numpy.ndarray, labels: numpy.ndarray, workers: int, pin: bool):
    """torchvision.datasets.CIFAR10's way: an HWC uint8 image to PIL, then the standard transforms, per sample."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    class PILImages(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, index):
            return transform(Image.fromarray(images[index])), int(labels[index])

    loader = torch.utils.data.DataLoader(PILImages(), batch_size=BATCH, shuffle=True, num_workers=workers,
                                         pin_memory=pin, drop_last=True, persistent_workers=workers > 0)
    return endless(lambda: iter(loader))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per loop per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first (compilation)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional loop")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="of our loops' forward")
    parser.add_argument("--channels-last", action="store_true", help="our loops' memory layout")
    parser.add_argument("--no-reference", action="store_true", help="leave out the reference code")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--page", type=Path, help="also put the Markdown table into this documentation page's block")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (IMAGES, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (IMAGES,), generator=generator)
    data = AugmentedImages(images.to(device), labels.to(device), images[:0].to(device), labels[:0].to(device))
    torch.manual_seed(0)
    base_model = resnet20().to(device)

    def model_copy(ours: bool):
        return copy.deepcopy(base_model).to(memory_format=memory_format if ours else torch.contiguous_format)

    def ours(name, make_optimizer):
        model = model_copy(True)
        optimizer = make_optimizer(model.parameters())
        return Loop(name, our_batches(data, memory_format),
                    lambda x, y: train_step(model, optimizer, x, y, args.precision))

    loops = [
        ours("plain torch.optim.SGD, our pipeline",
             lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4)),
        ours("ours SGD(α, μ)/SGD", lambda p: hyperopt.stack(STACK, p)),
        ours("ours SGD(α, μ)/SGD, compiled", lambda p: hyperopt.stack(STACK, p, compile=True)),
    ]
    if not args.no_reference:
        from experiments.reference import reference_step

        _, step = reference_step("SGD(0.1, 0.9)/SGD(1e-5)", model_copy(False))
        loops.append(Loop("reference SGD(0.1, 0.9)/SGD(1e-5), our pipeline", our_batches(data, torch.contiguous_format),
                          step))
    conventional_model = model_copy(False)
    conventional = torch.optim.SGD(conventional_model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loops.append(Loop("conventional DataLoader loop, torch.optim.SGD",
                      dataloader_batches(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), args.workers,
                                         device.type == "cuda"),
                      lambda x, y: train_step(conventional_model, conventional, x, y)))

    median = interleaved(loops, args.steps, args.rounds, args.warmup, device)
    steps_per_epoch = -(-IMAGES // BATCH)
    plain = median[loops[0].name]
    results = [{"loop": name, "ms_per_step": seconds * 1e3, "seconds_per_epoch": seconds * steps_per_epoch,
                "vs_our_plain": seconds / plain} for name, seconds in median.items()]
    report = {
        "benchmark": "seconds per training epoch of ResNet-20, 50,000 random CIFAR-shaped images, batch 128",
        "method": f"median over {args.rounds} interleaved rounds of the mean of {args.steps} steps (data pipeline "
                  f"included) × {steps_per_epoch} steps; our loops: precision {args.precision}, "
                  f"{'channels_last' if args.channels_last else 'contiguous'}; weight decay 1e-4 except in the "
                  f"reference (it has none); DataLoader with {args.workers} workers",
        "stack": STACK, **provenance(device), "results": results,
    }
    publish(report, args.out, args.page)


if __name__ == "__main__":
    main()
