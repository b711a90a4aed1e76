"""What every variant shares: hyperparameters, networks, priors and the phase-by-phase training step.

A variant subclasses `AutoencoderBase`, names its phases and the data streams it consumes, builds its networks
in `build`, and overrides the few hooks where it differs (what is decoded, which codes are regularized, what
the extra phases do). Each phase has its own optimizer and runs, on every batch, in the order of `phases`:

- reconstruction: encoder and decoder minimise the reconstruction loss;
- regularization: the discriminator(s) learn to tell prior samples (real) from codes (fake);
- generator: the encoder learns to make its codes pass for prior samples;
- classification (semi-supervised): the encoder's class head minimises cross-entropy on labeled images.

Manual optimization means every `optimizer.step()` advances `trainer.global_step`: with three phases it
grows by three per batch. Schedules and checkpoints therefore count epochs, never global steps.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from aae_lightning.components import Decoder, Discriminator, Encoder
from aae_lightning.errors import UserError
from aae_lightning.hparams import (
    DeclaredHparams,
    Either,
    Ints,
    OneOf,
    Range,
    hparam,
    non_negative,
    positive,
    probability,
)
from aae_lightning.priors import Prior
from datamodules import IMAGE_SIZE

RECONSTRUCTION_LOSSES = ("bce", "half_sse")
OPTIMIZERS = ("adam", "sgd")
#: the phases that match codes to priors: they share one encoder pass and may have a momentum of their own
ADVERSARIAL_PHASES = ("regularization", "generator")


# Each field declares what it accepts (see hparams.py); a learning rate of 0 stays allowed: it switches a phase off.
@dataclass
class AutoencoderHparams(DeclaredHparams):
    hidden_sizes: tuple[int, ...] = hparam(
        (1000, 1000), "hidden layer widths of the encoder (the decoder mirrors them)", accepts=Ints(non_empty=True)
    )
    latent_dim: int = hparam(2, "width of the continuous code z", accepts=positive(int))
    dropout: float = hparam(0.0, "dropout before every linear layer of encoder and decoder", accepts=probability())
    hidden_dropout: float = hparam(
        0.0,
        "dropout on the output of every hidden layer of encoder, decoder and discriminators (keil555's Parzen "
        "model); unlike --dropout it leaves the pixels and the codes whole",
        accepts=probability(),
    )
    input_noise: float = hparam(
        0.0, "std of Gaussian noise added to the encoder's input while training", accepts=non_negative()
    )
    optimizer: str = hparam(
        "adam", "adam or sgd, one optimizer per phase, each with --momentum", accepts=OneOf(OPTIMIZERS)
    )
    momentum: float = hparam(0.9, "SGD momentum, or Adam's beta1", accepts=probability())
    reconstruction_loss: str = hparam(
        "bce",
        "bce: binary cross-entropy averaged over pixels; half_sse: the paper's half squared error of the "
        "sigmoid output, summed over pixels (its SGD learning rates assume this scale)",
        accepts=OneOf(RECONSTRUCTION_LOSSES),
    )
    reconstruction_lr: float = hparam(1e-3, "learning rate of the reconstruction phase", accepts=non_negative())
    init_std: float = hparam(
        0.0,
        "std of the N(0, std^2) draw of the weights of every linear layer of encoder, decoder and discriminators "
        "(biases 0), as the paper's 0.01; 0: PyTorch's default initialisation",
        accepts=non_negative(),
    )
    # milestones beyond --max-epochs are allowed: a run may be resumed with more epochs
    lr_milestones: tuple[int, ...] = hparam(
        (), "epochs at which every phase's learning rate is multiplied by --lr-gamma", accepts=Ints(increasing=True)
    )
    lr_gamma: float = hparam(0.1, "learning-rate factor applied at each milestone", accepts=positive())
    # train.py seeds everything with it too, and Lightning's seed_everything takes no other range
    seed: int = hparam(
        0,
        "seeds the prior samples and, under DDP, each rank's own noise and dropout (ranks above 0 derive theirs)",
        accepts=Range(int, 0, 2**32 - 1),
    )


@dataclass
class AdversarialHparams(AutoencoderHparams):
    disc_hidden_sizes: tuple[int, ...] = hparam(
        (1000, 1000), "hidden layer widths of the discriminator(s) (none: a linear discriminator)", accepts=Ints()
    )
    prior_std: float = hparam(
        5.0, "std of the Gaussian prior on z (the half-width for a uniform one)", accepts=positive()
    )
    regularization_lr: float = hparam(1e-4, "learning rate of the discriminator(s)", accepts=non_negative())
    generator_lr: float = hparam(1e-4, "learning rate of the encoder in the generator phase", accepts=non_negative())
    disc_input_noise: float = hparam(
        0.0,
        "std of Gaussian noise added to every input of the discriminators (prior samples and codes alike) in "
        "both adversarial phases: instance noise, so that a discriminator cannot win on exact one-hot vectors",
        accepts=non_negative(),
    )
    adversarial_momentum: float = hparam(
        -1.0,
        "SGD momentum (Adam's beta1) of the regularization and generator phases; -1: the same as "
        "--momentum (the paper uses 0.9 for reconstruction and 0.1 for the adversarial networks)",
        accepts=Either(Range(float, -1, -1), probability()),
    )


class NonFiniteLossError(RuntimeError):
    """A phase produced a NaN or infinite loss. Its optimizer step was skipped, so no parameter ever saw it."""


class AutoencoderBase(pl.LightningModule):
    """The shared training skeleton; on its own it is the plain autoencoder's behaviour."""

    Hparams: ClassVar[type[AutoencoderHparams]] = AutoencoderHparams
    #: phases run on every batch, in order; each has an optimizer and a `<phase>_phase(batch)` method
    phases: ClassVar[tuple[str, ...]] = ("reconstruction",)
    #: the datamodule streams a training batch must carry ("unlabeled" -> x, "labeled" -> labeled_x/_y)
    train_streams: ClassVar[tuple[str, ...]] = ("unlabeled",)
    #: which parameters each phase's optimizer owns, by child-module name
    phase_modules: ClassVar[dict[str, tuple[str, ...]]] = {
        "reconstruction": ("encoder", "decoder"),
        "regularization": ("discriminators",),
        "generator": ("encoder",),
        "classification": ("encoder",),
    }
    #: the validation metric that picks the best checkpoint, and its direction
    monitor: ClassVar[tuple[str, str]] = ("val/recon_loss", "min")
    #: whether `classify` scores classes: the variants with a class code y, and the label-regularized model,
    #: which reads the digit off z
    classifies: ClassVar[bool] = False
    #: whether `represent` gives the code z itself, which `latent_prior` describes; dimreduction's W_c y + z is not
    represents_z: ClassVar[bool] = True
    #: the `--variant` name, set by `registry.register`
    variant_name: ClassVar[str] = ""

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        # rejects unknown names, fills the defaults and checks every value (an HparamError) before anything is built
        self.config = self.Hparams(**hparams)
        self.save_hyperparameters(dataclasses.asdict(self.config))
        self.automatic_optimization = False
        self.priors: dict[str, Prior] = {}
        self.discriminators = nn.ModuleDict()
        self.build()
        if self.config.init_std > 0:
            for network in (self.encoder, self.decoder, self.discriminators):
                initialise_linear_layers(network, self.config.init_std)
        self.metrics = nn.ModuleDict({stage: nn.ModuleDict(self.make_metrics()) for stage in ("val", "test")})
        # made on first use: torch.multiprocessing cannot hand a torch.Generator's state to the processes
        # `ddp_spawn` starts ("unable to resize file")
        self._prior_generator: torch.Generator | None = None
        self._first_nonfinite: Tensor | None = None  # per phase, the first batch whose loss was not finite (-1: none)
        self._epoch_sums: dict[str, Tensor] = {}  # this epoch's training losses times batch sizes, by name
        self._epoch_images = 0
        self._adversarial_batch: dict[str, Tensor] | None = None  # the batch `_adversarial_codes` belong to
        self._adversarial_codes: dict[str, Tensor] = {}

    # ----- what a variant describes -------------------------------------------------------------------------
    def build(self) -> None:
        """Create encoder, decoder and, for adversarial variants, `self.priors` and `self.discriminators`."""
        self.encoder = self.make_encoder({"z": self.config.latent_dim})
        self.decoder = self.make_decoder(self.config.latent_dim)

    def make_encoder(self, heads: dict[str, int], encoder_class: type[Encoder] = Encoder, **options: Any) -> Encoder:
        """An encoder of images with the configured hidden layers and regularizers; `options` are what a variant's
        encoder has besides (the clustering encoder's input dropout and batch normalization, see `Encoder`)."""
        config = self.config
        return encoder_class(
            IMAGE_SIZE,
            config.hidden_sizes,
            heads,
            dropout=config.dropout,
            input_noise=config.input_noise,
            hidden_dropout=config.hidden_dropout,
            **options,
        )

    def make_decoder(self, code_dim: int) -> Decoder:
        return Decoder(code_dim, self.config.hidden_sizes, IMAGE_SIZE, self.config.dropout, self.config.hidden_dropout)

    def add_adversary(self, name: str, prior: Prior, input_dim: int | None = None) -> None:
        """Regularize the code `name` towards `prior` with a discriminator of its own."""
        self.priors[name] = prior
        self.discriminators[name] = Discriminator(
            input_dim or prior.dim, self.config.disc_hidden_sizes, hidden_dropout=self.config.hidden_dropout
        )

    def make_metrics(self) -> dict[str, Metric]:
        """Scalar metrics, each logged as `val/<name>` and `test/<name>` once per epoch."""
        return {"recon_loss": MeanMetric()}

    def training_images(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["x"]

    def decoder_input(self, codes: dict[str, Tensor], labels: Tensor | None) -> Tensor:
        """The decoder's input from the encoder's outputs (and labels, for conditioned decoders)."""
        return codes["z"]

    def regularized_codes(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The codes each discriminator sees as fake, by the name of its prior."""
        return self.encoder(self.training_images(batch))

    def adversarial_codes(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """This batch's `regularized_codes`, encoded once for both adversarial phases (see `training_step`)."""
        if self._adversarial_batch is not batch:
            self._adversarial_batch, self._adversarial_codes = batch, self.regularized_codes(batch)
        return self._adversarial_codes

    def prior_samples(self, batch: dict[str, Tensor], codes: dict[str, Tensor]) -> dict[str, Tensor]:
        """What each discriminator sees as real: as many prior samples as there are codes."""
        return {name: self.sample_prior(name, len(codes[name])) for name in self.priors}

    @property
    def latent_prior(self) -> Prior | None:
        """The prior of the code `encode` returns (None for the plain autoencoder): callbacks plot against it."""
        return self.priors.get("z")

    # ----- public API used by callbacks, notebooks and evaluate.py ------------------------------------------
    # Every variant has all of it; what a variant can do is declared by `latent_prior` (None: no prior),
    # `num_classes`, `classifies` and `represents_z`, so that no caller needs to probe for a method.
    @property
    def num_classes(self) -> int:
        """The width of the class code the decoder is conditioned on (0: it decodes z alone): the digits for the
        supervised and semi-supervised models, the categories for the clustering model. Where it is not 0,
        `decode` needs labels, and `reconstruct` too unless the encoder predicts the class (`classifies`)."""
        return 0

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The continuous code z of each image (the style, for variants with a class code)."""
        return self.encoder(images)["z"]

    @torch.no_grad()
    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images in [0, 1], shape (n, 784), from codes z (plus class labels for conditioned decoders)."""
        return torch.sigmoid(self.decoder(self.decoder_input({"z": z}, labels)))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.decoder(self.decoder_input(self.encoder(images), labels)))

    @torch.no_grad()
    def classify(self, images: Tensor) -> Tensor:
        """Class scores of each image, one column per class: `num_classes` columns, or the ten digits where the
        decoder is not conditioned on a class. Only for variants that declare `classifies`."""
        raise NotImplementedError(f"{type(self).__name__} does not classify (its `classifies` is False)")

    @torch.no_grad()
    def represent(self, images: Tensor) -> Tensor:
        """What plots show of each image: its code z, unless the variant declares `represents_z` False."""
        return self.encode(images)

    @property
    def prior_generator(self) -> torch.Generator:
        """The generator of the prior samples the discriminators see as real: on the CPU, seeded by `seed`, until
        `setup` puts one on the training device for this process."""
        if self._prior_generator is None:
            self.place_prior_generator("cpu")
        return self._prior_generator

    def sample_prior(self, name: str, n: int) -> Tensor:
        """n samples of the prior `name` on the module's device, in its dtype. Drawn on the device of
        `prior_generator` (the training device once `setup` ran): on a GPU, no copy from the host per phase."""
        return self.priors[name].sample(n, generator=self.prior_generator).to(self.device, self.dtype)

    # ----- the phases ---------------------------------------------------------------------------------------
    def reconstruction_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        images = self.training_images(batch)
        logits = self.decoder(self.decoder_input(self.encoder(images), batch.get("labeled_y")))
        loss = self.reconstruction_error(logits, images)
        return loss, {"recon_loss": loss}

    def reconstruction_error(self, logits: Tensor, images: Tensor) -> Tensor:
        """The training reconstruction loss of a batch, from the decoder's pixel logits."""
        if self.config.reconstruction_loss == "half_sse":
            # per image, then averaged over the batch: with a mean over pixels the paper's rates would be 784x too small
            return 0.5 * (torch.sigmoid(logits) - images).pow(2).sum(dim=1).mean()
        return F.binary_cross_entropy_with_logits(logits, images)

    def regularization_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        # the codes are data here: no gradient may reach the encoder
        fakes = {name: code.detach() for name, code in self.adversarial_codes(batch).items()}
        reals = self.prior_samples(batch, fakes)
        logs = {}
        for name, discriminator in self.discriminators.items():
            # one pass over reals and fakes together: on a CPU, two passes cost a second set of weight-gradient
            # products and a sum of the two gradients of every layer (measured ~8 % of an aae step)
            judged = self.discriminator_input(torch.cat([reals[name], fakes[name]]))
            real_logits, fake_logits = discriminator(judged).tensor_split([len(reals[name])])
            logs[f"disc_loss_{name}"] = adversarial_loss(real_logits, True) + adversarial_loss(fake_logits, False)
        return sum(logs.values()), logs

    def generator_phase(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        fakes = self.adversarial_codes(batch)
        logs = {
            f"gen_loss_{name}": adversarial_loss(d(self.discriminator_input(fakes[name])), True)
            for name, d in self.discriminators.items()
        }
        return sum(logs.values()), logs

    def discriminator_input(self, codes: Tensor) -> Tensor:
        """What a discriminator judges: the codes, plus instance noise when asked for. Added here rather than by
        a noise layer in the discriminator, which runs in eval mode during the generator phase (see
        `_set_train_modes`), so that both adversarial phases see the same noisy distributions."""
        if self.config.disc_input_noise > 0:
            return codes + self.config.disc_input_noise * torch.randn_like(codes)
        return codes

    # ----- the skeleton -------------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self._make_optimizer(phase) for phase in self.phases]

    def _phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return [p for name in self.phase_modules[phase] for p in getattr(self, name).parameters()]

    def _make_optimizer(self, phase: str) -> torch.optim.Optimizer:
        params, lr = self._phase_parameters(phase), getattr(self.config, f"{phase}_lr")
        momentum = self.config.momentum
        if phase in ADVERSARIAL_PHASES and self.config.adversarial_momentum >= 0:
            momentum = self.config.adversarial_momentum
        # fused kernels: on a CPU the default per-tensor Adam step over the 1000-unit layers costs about four
        # times the fused one
        if self.config.optimizer == "adam":
            if any(parameter.dtype == torch.float16 for parameter in params):
                # train.py refuses the flags before reading data (hardware.check_precision); this guards a Trainer
                # built in Python
                raise UserError(
                    "Adam cannot train float16 weights (precision 16-true): its eps (1e-8) is 0 in float16 and its "
                    "steps blow the weights up; use bfloat16 or mixed precision, or optimizer='sgd'"
                )
            return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), fused=True)
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, fused=True)  # the one other --optimizer allowed
        if momentum > 0:
            # Fused SGD allocates its momentum buffers on the first step and fills them in the kernel, which a
            # skipped step (`found_inf`) never runs: zeros up front give the same first step, and a defined one
            # after a skipped first step.
            for parameter in params:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
        return optimizer

    def setup(self, stage: str) -> None:
        # The same --seed on every rank, yet each rank draws its own prior samples, input noise and dropout. Rank 0
        # keeps the streams of a single-process run, so adding processes leaves rank 0's draws as they are.
        self.place_prior_generator(self.trainer.strategy.root_device, self.global_rank)
        if self.global_rank > 0:
            torch.manual_seed(rank_seed(self.config.seed, self.global_rank))

    def place_prior_generator(self, device: torch.device | str, rank: int = 0) -> None:
        """Draw the prior samples on `device` from now on (no copy from the host per phase on a GPU), from a
        generator seeded by `seed` and the process's `rank`."""
        self._prior_generator = torch.Generator(device)
        self._prior_generator.manual_seed(self.config.seed * 1_000 + rank)

    def on_train_start(self) -> None:
        self._first_nonfinite = None

    def on_train_epoch_start(self) -> None:
        self._epoch_sums, self._epoch_images = {}, 0
        # a stateless step schedule: the rate follows from the epoch alone, so resuming needs no scheduler state
        decay = self.config.lr_gamma ** sum(self.current_epoch >= m for m in self.config.lr_milestones)
        for phase, optimizer in zip(self.phases, self._optimizer_list(), strict=True):
            for group in optimizer.param_groups:
                group["lr"] = getattr(self.config, f"{phase}_lr") * decay

    def _optimizer_list(self) -> list:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    def _set_train_modes(self, phase: str) -> None:
        # A network runs in training mode (dropout, input noise) only in a phase that updates it, with one
        # exception: the encoder always does, because the aggregated posterior the adversarial phases match to
        # the prior is that of the noisy training-mode encoder, and the discriminator must learn the same code
        # distribution that the generator phase then moves. A discriminator judging in the generator phase is a
        # fixed critic: dropout there would only add noise to the encoder's gradient.
        updated = self.phase_modules[phase]
        for name, module in self.named_children():
            module.train(name in updated or name == "encoder")

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logs: dict[str, Tensor] = {}
        for index, (phase, optimizer) in enumerate(zip(self.phases, self._optimizer_list(), strict=True)):
            self._set_train_modes(phase)
            if phase == "regularization":
                # One encoder pass serves both adversarial phases. It runs before the discriminators' optimizer
                # is toggled, so it records the encoder's graph; the regularization step leaves the encoder as
                # it is, so the generator phase can backpropagate through this very pass (whose detached codes
                # the discriminators were just trained on) instead of encoding the batch a second time.
                self.adversarial_codes(batch)
            # toggling freezes every parameter this optimizer does not own: no gradient leaks across phases,
            # and none is computed for networks that only pass gradients through (the critic, for instance)
            self.toggle_optimizer(optimizer)
            loss, phase_logs = getattr(self, f"{phase}_phase")(batch)
            optimizer.zero_grad(set_to_none=True)
            # Each phase averages its own optimizer's gradients over the processes (`_reduce_gradients`); DDP's
            # hooks would all-reduce every gradient bucket after each phase's backward pass, more than twice the
            # traffic (docs/speed.md), and wait for the gradients of parameters the phase leaves unused.
            with self._without_ddp_gradient_sync():
                self.manual_backward(loss)
            self._skip_step_unless_finite(optimizer, index, loss, batch_idx)
            optimizer.step()
            self.untoggle_optimizer(optimizer)
            logs.update(phase_logs)
        self._adversarial_batch, self._adversarial_codes = None, {}  # frees the graph
        logged = self._logs_this_batch()
        if logged:  # the host waits for the device here anyway, to hand the step losses to the loggers
            self._stop_if_nonfinite()
        self._log_train(logs, batch_size=len(self.training_images(batch)), logged=logged)

    def _skip_step_unless_finite(self, optimizer: Any, phase_index: int, loss: Tensor, batch_idx: int) -> None:
        """Make the coming step a no-op if this phase's loss is not finite, on this or any other process, without
        the host waiting for the device: the fused optimizers skip a step whose `found_inf` flag is 1 (the
        protocol `torch.amp.GradScaler` drives them with). The flag is kept per phase until `_stop_if_nonfinite`
        reads it on the next logged batch."""
        nonfinite = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(())  # GradScaler's shape
        if self.trainer.world_size > 1:
            nonfinite = self._reduce_gradients(optimizer, nonfinite)
        # under 16-bit mixed precision the gradient scaler sets and clears this flag itself
        optimizer.optimizer.found_inf = nonfinite
        if self._first_nonfinite is None:
            self._first_nonfinite = torch.full((len(self.phases),), -1, dtype=torch.long, device=nonfinite.device)
        first = self._first_nonfinite[phase_index]
        self._first_nonfinite[phase_index] = torch.where((nonfinite > 0) & (first < 0), batch_idx, first)

    def _without_ddp_gradient_sync(self) -> Any:
        strategy = self.trainer.strategy
        return strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext()

    def _reduce_gradients(self, optimizer: Any, nonfinite: Tensor) -> Tensor:
        """Average this phase's gradients over the processes in one all-reduce, with the non-finite flag riding
        along; returns the flag of all processes together (1: any process had a non-finite loss). Only the
        phase's own parameters travel: a phase's optimizer owns a part of the model."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        flat = torch.cat([*(grad.reshape(-1) for grad in grads), nonfinite.reshape(1).to(grads[0].dtype)])
        # torch's all-reduce itself: Lightning's `strategy.reduce` puts a barrier before it, a second collective
        dist.all_reduce(flat)
        flat /= self.trainer.world_size
        for grad, reduced in zip(grads, flat[:-1].split([grad.numel() for grad in grads]), strict=True):
            grad.copy_(reduced.view_as(grad))
        return (flat[-1] > 0).to(torch.float32)

    def _logs_this_batch(self) -> bool:
        """Whether the loggers write this batch's step values: Lightning's rule for `log_every_n_steps`, which
        counts batches since the start of training."""
        batches = self.trainer.fit_loop.epoch_loop.total_batch_idx + 1
        return batches % self.trainer.log_every_n_steps == 0 or bool(self.trainer.fast_dev_run)

    def _stop_if_nonfinite(self) -> None:
        """Raise if a phase had a non-finite loss since training started. Every process holds the same flags
        (they travel with the gradients), so all of them stop together and none waits for a peer that is gone."""
        if self._first_nonfinite is None or not bool((self._first_nonfinite >= 0).any()):
            return
        first = self._first_nonfinite.tolist()
        phase_index = min((batch, index) for index, batch in enumerate(first) if batch >= 0)[1]
        raise NonFiniteLossError(
            f"{self.phases[phase_index]} loss is not finite at epoch {self.current_epoch}, batch "
            f"{first[phase_index]}; its optimizer step and any later one with a non-finite loss were skipped, "
            "training stopped and the last checkpoint is untouched"
        )

    def _log_train(self, logs: dict[str, Tensor], batch_size: int, logged: bool) -> None:
        # Step values are this rank's own (syncing them would cost an all-reduce per loss per step); epoch means
        # are synced over ranks once, when the epoch ends. Those means are summed here rather than by a second
        # self.log per loss: Lightning's bookkeeping costs most of a millisecond per logged name and batch, 5-10 %
        # of a CPU step. For the same reason step values reach Lightning only on the batches whose values its
        # loggers write (`logged`).
        logs = {name: value.detach() for name, value in logs.items()}
        if logged:
            self.log_dict(
                {f"train/{name}_step": value for name, value in logs.items()},
                on_step=True,
                on_epoch=False,
                batch_size=batch_size,
            )
        for name, value in logs.items():
            self._epoch_sums[name] = self._epoch_sums.get(name, 0) + value * batch_size
        self._epoch_images += batch_size

    def on_train_epoch_end(self) -> None:
        self._stop_if_nonfinite()
        if self._epoch_images:
            means = {f"train/{name}_epoch": total / self._epoch_images for name, total in self._epoch_sums.items()}
            self.log_dict(means, on_step=False, on_epoch=True, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate("val", *batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate("test", *batch)

    def update_metrics(self, metrics: nn.ModuleDict, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Feed one evaluation batch to this stage's metrics and return the encoder's raw outputs (`z`, and the
        class logits `y` where there is a class code) for callbacks. Variants add their own metrics on top."""
        codes = self.encoder(images)
        logits = self.decoder(self.decoder_input(codes, labels))
        per_image = F.binary_cross_entropy_with_logits(logits, images, reduction="none").mean(dim=1)
        metrics["recon_loss"].update(per_image)
        return codes

    def _evaluate(self, stage: str, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        metrics = self.metrics[stage]
        outputs = self.update_metrics(metrics, images, labels)
        for name, metric in metrics.items():
            # Metric objects sum their state over ranks when computed: each image counts once, on any
            # number of devices, without per-step synchronisation
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True)
        return outputs

    # ----- checkpoint extras --------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning saves no random states; a resumed run needs every process's to continue exactly where it
        # stopped. Every process calls this hook and rank 0 writes the file, so the states are gathered here.
        checkpoint["aae_rng"] = {"ranks": self._gather_rng_states()}
        checkpoint["aae_variant"] = self.variant_name

    def _gather_rng_states(self) -> list[dict[str, Tensor]]:
        mine = {"prior_generator": self.prior_generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.trainer.world_size == 1:
            return [mine]
        # NCCL gathers device tensors only; every process's states have the same shapes
        gathered = {name: self.all_gather(state.to(self.device)).cpu() for name, state in mine.items()}
        # clones: torch.set_rng_state reads a state's storage from its start, whatever the view's offset
        return [
            {name: states[rank].clone() for name, states in gathered.items()} for rank in range(self.trainer.world_size)
        ]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("aae_rng")
        if states is None:
            return
        ranks = states.get("ranks", [states])  # one process's states at the top: a checkpoint of an older version
        rank = self.global_rank
        if rank >= len(ranks):
            rank_zero_warn(
                f"the checkpoint holds the random states of {len(ranks)} process(es); processes from rank "
                f"{len(ranks)} on continue with fresh streams seeded from --seed"
            )
            return
        mine = ranks[rank]
        # generators take their states as CPU tensors, and `load_from_checkpoint(map_location="cuda")` hands them
        # over on the GPU
        torch.set_rng_state(mine["torch"].cpu())
        prior_state = mine["prior_generator"].cpu()
        # A generator's state fits only a generator of the kind of device that saved it. Outside training the
        # prior generator is on the CPU, so a GPU run's checkpoint leaves it as seeded; so does resuming a run on
        # another kind of device, whose samples then restart from --seed.
        if prior_state.numel() == self.prior_generator.get_state().numel():
            self.prior_generator.set_state(prior_state)
        cuda = mine.get("cuda")
        if isinstance(cuda, list):  # an older checkpoint: every GPU of the machine that saved it
            for index, state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state.cpu(), index)
        elif cuda is not None and self.device.type == "cuda":  # Lightning sets the device before it restores
            torch.cuda.set_rng_state(cuda.cpu(), self.device)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a DDP process's global torch generator (ranks above 0): distinct for every (seed, rank) and
    unrelated to the prior generator's."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0])


def initialise_linear_layers(module: nn.Module, std: float) -> None:
    """Every nn.Linear inside `module`: weights drawn from N(0, std^2), biases zero (the paper's scheme)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def adversarial_loss(logits: Tensor, real: bool) -> Tensor:
    """Binary cross-entropy on logits: stable where log(sigmoid(x) + tiny) is not."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)
