"""A hyperoptimizer in the training frameworks people use: Lightning's Trainer and the Hugging Face Trainer, each
with its own schedule, gradient clipping and checkpoints. Lightning's training is checked against the same training
written as a plain loop; with each, a run stopped at a checkpoint and resumed against one that was not."""

import copy

import pytest
import torch
import torch.nn.functional as F

import hyperopt
from models import MLP

pytestmark = pytest.mark.slow  # each framework takes seconds to import and start

STACK, STEPS, CLIP = "Adam/SGD(1e-5)", 12, 0.5


def data(count=STEPS * 32):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, 784, generator=generator), torch.randint(10, (count,), generator=generator)


def warmup(step: int) -> float:
    return min(1.0, (step + 1) / 4)


def plain_loop(model, batches):
    """The reference for both frameworks: the stack, a warmup stepped every step, clipping by norm."""
    optimizer = hyperopt.stack(STACK, model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    for x, y in batches:
        optimizer.zero_grad()
        F.nll_loss(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        schedule.step()
    return optimizer


def test_lightning_trains_checkpoints_and_resumes_a_stack_as_a_plain_loop_does(tmp_path):
    lightning = pytest.importorskip("lightning.pytorch")

    class Module(lightning.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def training_step(self, batch, index):
            return F.nll_loss(self.model(batch[0]), batch[1])

        def configure_optimizers(self):
            optimizer = hyperopt.stack(STACK, self.parameters())
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # two epochs, stopped after the first: a checkpoint Lightning resumes exactly (torch.optim.Adam's too)
    x, y = data(STEPS // 2 * 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)

    def trainer(steps, **options):
        return lightning.Trainer(max_epochs=steps // (STEPS // 2), accelerator="cpu", logger=False,
                                 enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=CLIP, default_root_dir=tmp_path,
                                 **options)
    torch.manual_seed(0)
    model = MLP()
    straight, stopped, resumed = (Module(copy.deepcopy(model)) for _ in range(3))
    trainer(STEPS, enable_checkpointing=False).fit(straight, loader)
    ours = plain_loop(copy.deepcopy(model), list(zip(x.split(32), y.split(32))) * 2)
    for a, b in zip(straight.model.parameters(), ours.param_groups[0]["params"]):
        assert torch.equal(a, b)
    assert straight.trainer.optimizers[0].hyperparameters() == ours.hyperparameters()

    first = trainer(STEPS // 2)
    first.fit(stopped, loader)
    first.save_checkpoint(tmp_path / "half.ckpt")
    trainer(STEPS, enable_checkpointing=False).fit(resumed, loader, ckpt_path=tmp_path / "half.ckpt")
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_the_hugging_face_trainer_trains_and_resumes_a_stack_as_a_plain_loop_does(tmp_path):
    transformers = pytest.importorskip("transformers")

    class Classifier(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, inputs, labels):
            return {"loss": F.nll_loss(self.model(inputs), labels)}

    x, y = data()
    dataset = [{"inputs": a, "labels": b} for a, b in zip(x, y)]

    def train(model, steps, resume=False):
        optimizer = hyperopt.stack(STACK, model.parameters())
        arguments = transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=32, max_grad_norm=CLIP,
            lr_scheduler_type="constant_with_warmup", warmup_steps=3, report_to=[], use_cpu=True,
            save_steps=STEPS // 2, save_strategy="steps", logging_steps=1, seed=0, data_seed=0,
            dataloader_drop_last=True, disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=arguments, train_dataset=dataset,
                                       optimizers=(optimizer, None))
        trainer.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{STEPS // 2}") if resume else None)
        return trainer, optimizer

    torch.manual_seed(0)
    model = MLP()
    straight, optimizer = train(Classifier(copy.deepcopy(model)), STEPS)
    assert optimizer.hyperparameters()[0]["lr"] != 1e-3  # it learned
    # the trainer logs the schedule's value, group["lr"]: the warmup's factor times the step size made with
    logged = [entry["learning_rate"] for entry in straight.state.log_history if "learning_rate" in entry]
    assert logged[:5] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    resumed, _ = train(Classifier(copy.deepcopy(model)), STEPS, resume=True)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
