"""A checkpoint of a module trained in this process comes back as it was saved: onto the device it was trained on,
and onto the CPU (`load_trained`). Checked on every `device` (conftest.py): the CPU, and CUDA where there is one."""

from __future__ import annotations

from pathlib import Path

import torch

from aae_lightning import get_variant
from aae_lightning.checkpoint_io import load_trained
from datamodules.mnist import MNISTDataModule
from tests.helpers import assert_same_tensors, make_trainer


def test_a_checkpoint_loads_back_onto_its_device_and_onto_the_cpu(
    device: str, tiny_mnist_dir: Path, tmp_path: Path
) -> None:
    """Weights, prior generator and outputs of a model trained on `device` come back from its checkpoint: onto that
    device (`load_from_checkpoint` with `map_location`), and onto the CPU (`load_trained`, where the notebooks and
    evaluate.py start)."""
    model = get_variant("semi")(hidden_sizes=(32,), disc_hidden_sizes=(16,), dropout=0.1)
    datamodule = MNISTDataModule(
        str(tiny_mnist_dir),
        num_labels=100,
        val_size=100,
        batch_size=50,
        download=False,
        train_streams=model.train_streams,
    )
    trainer = make_trainer(2, accelerator=device)
    trainer.fit(model, datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    generator_state = model.prior_generator.get_state()
    model.to(device).eval()  # Lightning moved it back to the CPU when fitting ended
    images = datamodule.validation_data()[0][:20].to(device)
    expected = model.reconstruct(images)

    again = type(model).load_from_checkpoint(path, map_location=device, weights_only=False).eval()
    assert again.device.type == device
    assert_same_tensors(model.state_dict(), again.state_dict(), "state_dict")
    # a module loaded outside training draws its prior samples on the CPU: a CPU run's generator state fits it, a
    # GPU run's does not and the generator stays as `seed` left it
    prior_state_restored = device == "cpu"
    assert torch.equal(again.prior_generator.get_state(), generator_state) == prior_state_restored
    assert torch.equal(again.reconstruct(images), expected)

    on_cpu, _ = load_trained(path)
    assert on_cpu.device.type == "cpu"
    assert_same_tensors(model.cpu().state_dict(), on_cpu.state_dict(), "state_dict on the CPU")
    assert torch.equal(on_cpu.prior_generator.get_state(), generator_state) == prior_state_restored
    # the same weights; the arithmetic of another device may round differently
    assert torch.allclose(on_cpu.reconstruct(images.cpu()), expected.cpu(), atol=1e-5)
