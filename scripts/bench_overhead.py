"""Per-step time of hyperoptimizer stacks of height 0..H against the same plain torch.optim optimizer, and the
reference code's, side by side in one process. Prints JSON (and writes it with --out).

Method: every configuration trains the same model on the same fixed batches; rounds interleave the configurations
(so drift in the machine's speed hits all of them alike) and each round times `--steps` steps after a warm-up;
the times reported are medians over rounds of the mean step time, the ratios medians over rounds of each round's
ratio (paired, so that the machine's drift between rounds cancels). A step is forward, backward and the
optimizer's update, as in a training loop. Ratios are against the plain torch.optim optimizer of the family.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import hyperopt
from experiments.benchmark import Loop, interleaved_rounds, paired_ratio
from experiments.provenance import provenance
from experiments.reports import publish
from models import MLP, CharRNN, resnet20


def classification_loss(output, y):
    return F.nll_loss(output, y)


def language_model_loss(output, y):
    log_probabilities, _ = output
    return F.nll_loss(log_probabilities.flatten(0, 1), y.flatten())


def image_batch(generator, batch_size):
    return torch.rand(batch_size, 1, 28, 28, generator=generator), torch.randint(0, 10, (batch_size,),
                                                                                generator=generator)


def cifar_batch(generator, batch_size):
    return torch.rand(batch_size, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch_size,),
                                                                                generator=generator)


def text_batch(generator, batch_size, vocabulary=83, length=100):
    tokens = torch.randint(0, vocabulary, (batch_size, length + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


MODELS = {
    # model: (factory, batch maker, loss of (output, targets), default batch size, the families it is timed with)
    "mlp": (MLP, image_batch, classification_loss, 256, {
        # family: (plain torch.optim factory, bottom of the stack, each further level)
        "SGD": (lambda params: torch.optim.SGD(params, lr=0.01), "SGD(0.01)", "SGD(0.01)"),
        "Adam": (lambda params: torch.optim.Adam(params, lr=1e-3), "Adam", "SGD(1e-5)"),
        # torch's with the reference's initial accumulator and ε (its RMSprop adds ε outside the root, a timing
        # counterpart all the same)
        "AdaGrad": (lambda params: torch.optim.Adagrad(params, lr=0.01, initial_accumulator_value=0.1, eps=1e-10),
                    "AdaGrad", "SGD(0.01)"),
        "RMSProp": (lambda params: torch.optim.RMSprop(params, lr=0.01, alpha=0.99, eps=1e-8), "RMSProp",
                    "SGD(1e-4)"),
    }),
    "resnet20": (resnet20, cifar_batch, classification_loss, 128, {
        "SGD(α, μ)": (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), "SGD(0.1, 0.9)", "SGD(1e-5)"),
        "Adam": (lambda params: torch.optim.Adam(params, lr=1e-3), "Adam", "SGD(1e-5)"),
    }),
    "char_rnn": (lambda: CharRNN(83), text_batch, language_model_loss, 128, {
        "Adam^α": (lambda params: torch.optim.Adam(params, lr=2e-3), "Adam^α(2e-3)", "Adam(0.01)"),
    }),
}


DESCRIPTIONS = {"mlp": "MNIST MLP 784-128-10, batch 256",
                "resnet20": "ResNet-20 on CIFAR-10-sized images, batch 128",
                "char_rnn": "character-level LSTM (2 × 128, embedding 64, 83 symbols), batch 128 × 100"}


def spec_of(families: dict, family: str, height: int) -> str:
    _, bottom, above = families[family]
    return "/".join([bottom] + [above] * height)


def torch_trainer(name, model, optimizer, batches, loss):
    def step(x, y):
        value = loss(model(x), y)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    loop = Loop(name, itertools.cycle(batches), step)
    loop.optimizer = optimizer
    return loop


def state_bytes(optimizer) -> int:
    """The optimizer's persistent state: every tensor it keeps between steps, at every level of a stack."""
    levels = optimizer.levels() if isinstance(optimizer, hyperopt.Hyperoptimizer) else [optimizer]
    return sum(value.numel() * value.element_size() for level in levels for state in level.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


def peak_bytes(loop: Loop, device: torch.device, steps: int = 3) -> int | None:
    """The device's peak allocated memory over a few steps of this loop alone (a GPU only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    loop.run(steps, device)
    return torch.cuda.max_memory_allocated(device)


def reference_trainer(name, model, spec, batches, loss):
    from experiments.reference import reference_step

    return Loop(name, itertools.cycle(batches), reference_step(spec, model, loss)[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp", choices=sorted(MODELS),
                        help="the MNIST MLP, ResNet-20 (Figure 2) or the character-level LSTM of the RNN experiment")
    parser.add_argument("--heights", default="0,1,2,3,4", help="stack heights to time, comma-separated")
    parser.add_argument("--families", nargs="+", metavar="FAMILY",
                        help="by default every family timed with the model (the MLP: SGD Adam AdaGrad RMSProp; "
                             "ResNet-20: 'SGD(α, μ)' Adam; the LSTM: Adam^α)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--batch-size", type=int, help="by default 256 for the MLP, 128 for the LSTM")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-reference", action="store_true", help="leave out the reference code")
    parser.add_argument("--no-compiled", action="store_true",
                        help="leave out compile=True (compiling costs a minute on a CPU: the GPU suite's dry run)")
    parser.add_argument("--page", type=Path, help="also put the Markdown table into this documentation page's block")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    device = torch.device(args.device)

    factory, make_batch, loss, default_batch_size, all_families = MODELS[args.model]
    batch_size = args.batch_size or default_batch_size
    unknown = sorted(set(args.families or ()) - set(all_families))
    if unknown:
        parser.error(f"--families: {', '.join(unknown)} not timed with {args.model}; its families: "
                     + ", ".join(all_families))
    families = {name: all_families[name] for name in args.families or all_families}
    torch.manual_seed(0)
    base_model = factory().to(device)
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(t.to(device) for t in make_batch(generator, batch_size)) for _ in range(20)]

    trainers = []
    heights = [int(height) for height in args.heights.split(",")]
    for family, (plain, _, _) in families.items():
        model = copy.deepcopy(base_model)
        trainers.append(torch_trainer(f"{family}/torch.optim", model, plain(model.parameters()), batches, loss))
        for height in heights:
            spec = spec_of(families, family, height)
            for who, options in (("ours", {}), ("ours_compiled", {"compile": True}))[:1 if args.no_compiled else 2]:
                model = copy.deepcopy(base_model)
                trainers.append(torch_trainer(f"{family}/{who}/{height}", model,
                                              hyperopt.stack(spec, model.parameters(), **options), batches, loss))
            if not args.no_reference:
                trainers.append(reference_trainer(f"{family}/reference/{height}", copy.deepcopy(base_model),
                                                  spec, batches, loss))

    times = interleaved_rounds(trainers, args.steps, args.rounds, warmup=5, device=device)
    median = {name: statistics.median(values) for name, values in times.items()}
    memory = {loop.name: (state_bytes(loop.optimizer) if hasattr(loop, "optimizer") else None,
                          peak_bytes(loop, device) if loop.diverged is None else None) for loop in trainers}
    diverged = {loop.name: loop.diverged for loop in trainers if loop.diverged is not None}

    results = []
    for family in families:
        plain = f"{family}/torch.optim"
        plain_state, plain_peak = memory[f"{family}/torch.optim"]
        for height in heights:
            row = {"family": family, "height": height, "stack": spec_of(families, family, height),
                   "torch_optim_ms": median[plain] * 1e3}
            for who in ("ours", "ours_compiled", "reference"):
                name = f"{family}/{who}/{height}"
                if name in median:
                    row[f"{who}_ms"] = median[name] * 1e3
                    row[f"{who}_vs_torch_optim"] = paired_ratio(times[name], times[plain])
                elif name in diverged:
                    row[f"{who}_diverged"] = diverged[name]
            ours_state, ours_peak = memory[f"{family}/ours/{height}"]
            row.update(torch_optim_state_MB=plain_state / 2 ** 20, ours_state_MB=ours_state / 2 ** 20,
                       ours_state_vs_torch_optim=ours_state / plain_state if plain_state else None)
            if plain_peak is not None:
                row.update(torch_optim_peak_MB=plain_peak / 2 ** 20,
                           ours_peak_MB=None if ours_peak is None else ours_peak / 2 ** 20)
            results.append(row)
    report = {
        "benchmark": f"per-step time of hyperoptimizer stacks, {DESCRIPTIONS[args.model]}, random inputs",
        "model": args.model, "batch_size": batch_size,
        "method": f"median over {args.rounds} interleaved rounds of the mean of {args.steps} steps; ratios: median "
                  "over rounds of each round's ratio; "
                  "ours_compiled is compile=True (the whole step under torch.compile, from its third step); "
                  "state_MB is every tensor the optimizer keeps between steps (all levels), peak_MB the device's "
                  "peak allocation over 3 steps of that configuration alone (a GPU only)",
        **provenance(device),
        "results": results,
    }
    publish(report, args.out, args.page)


if __name__ == "__main__":
    main()
