"""The training loop: one object that owns a run from start-up to the final evaluation.

    config -> data loaders (our own per-rank split) -> model (plain module) -> parallelize
    -> per optimizer step: grad_accum x [batch -> mixup -> autocast forward -> loss -> backward]
       -> unscale (fp16) -> global grad norm -> clip -> AdamW (skipped if not finite) -> lr
       schedule -> EMA
    -> every logging.every steps: metrics (the only host-device sync of the loop; on CUDA,
       train.sync_debug=warn|error checks that the steps between them never wait for the GPU)
    -> every eval.every steps / epoch end: exactly-once evaluation (and of the EMA)
    -> every checkpoint.every steps / epoch end / the end: atomic checkpoint

Every rank runs the same sequence of collectives: logging, evaluation and checkpoints happen
at step numbers all ranks agree on, and the data loader gives every rank the same number of
batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from ..checkpoint import store as ckpt
from ..checkpoint.rundir import claim_output_dir
from ..checkpoint.state import (
    JobDataCounts,
    JobDataPosition,
    RngState,
    Stateful,
    TrainState,
    load_components,
)
from ..checkpoint.weights import export_checkpoint
from ..core import atomic, notices
from ..core.config import Config, OptimSection, dump_config
from ..core.errors import CheckpointError, ConfigError, DataError, Preempted, TrainingError
from ..core.files import load_json_object
from ..core.hub import is_hub_ref, parse_ref, preprocessing_differences, read_config
from ..data import MixupCutmix, ShardLoader, build_loader, loader_config
from ..metrics import (
    InputBoundAdvisor,
    RunLogger,
    StepTimer,
    check_tensorboard,
    max_memory_mb,
    mfu,
    peak_flops,
    raised_peak,
)
from ..metrics.runlog import FINAL_EVAL_FILE
from ..models import build_model, flops_per_image
from ..runtime.distributed import DistEnv, all_gather_object, all_reduce, barrier, broadcast_object
from ..runtime.parallel import is_fsdp, local_tensor, no_grad_sync, parallelize, unwrap
from ..runtime.precision import DTYPES, LossScaler, autocast
from ..testing import faults
from .distill import distillation_loss, frozen_teacher
from .ema import ModelEma
from .exact_eval import evaluate_model
from .losses import classification_loss
from .optim import LrSchedule, RunLength, Schedule, build_optimizer, param_groups
from .preemption import PreemptionWatch
from .sync_debug import sync_guard

if TYPE_CHECKING:
    from ..models.protocol import VitDistModule

log = logging.getLogger(__name__)


def _all_warmup(warmup: int, total: int, in_steps: bool) -> str:
    """The warning for a run that never leaves warmup (it ends at the peak lr, never decays)."""
    asked = "optim.warmup_steps" if in_steps else "optim.warmup_epochs"
    return (
        f"warning: warmup ({warmup} steps, from {asked}) is at least the whole run ({total} steps): "
        f"the lr rises for the whole run and ends at its peak, without the cosine decay; set "
        f"{asked} lower (or train longer)"
    )


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv, settings_from: dict[str, str] | None = None):
        self.cfg, self.env = cfg, env
        # Where precision and the parallel keys came from (config, default or accelerate's
        # flags: launch_env), for run_info.json.
        self.settings_from = dict(settings_from or {})
        self.device = env.device
        self.out = Path(cfg.output_dir)
        if cfg.logging.tensorboard:
            check_tensorboard()  # every rank, before any work: one ConfigError line if it is missing
        # Before anything is written: this job's lock on output_dir, and the refusal of a new
        # run into a directory that holds another (rundir). Nothing is written until the
        # checkpoint to resume, if any, has been loaded and the run is known to have work left.
        self.claim = claim_output_dir(self.out, env, resume=cfg.resume)
        self.run_id = self.claim.run_id
        # From the claim to the loop a preemption notice stops the set-up at once (core.notices).
        try:
            notices.interrupting(True)
            self._set_up()
        except Preempted as e:
            self._preempted_in_set_up(e)
        finally:
            notices.interrupting(False)  # from here the loop acts on notices at step boundaries

    def _preempted_in_set_up(self, e: Preempted) -> None:
        """A notice before the first step: nothing trained, nothing to save. preempted.json names
        the newest checkpoint (or none), so a requeue script requeues; then exit 75."""
        latest = ckpt.latest_checkpoint(self.out)
        if self.env.is_main:
            atomic.write_json(
                self.out / "preempted.json",
                {
                    "step": ckpt.checkpoint_step(latest) if latest else None,
                    "checkpoint": str(latest) if latest else None,
                    "signal": notices.received(),
                },
                indent=None,
            )
        self.claim.release()
        where = f"the newest checkpoint is {latest}" if latest else "no checkpoint yet"
        raise Preempted(
            f"{e}, before the first step: nothing trained; {where}; resume with resume=auto"
        ) from None

    def _set_up(self) -> None:
        cfg, env = self.cfg, self.env
        # Same seed on every rank for the model init (DDP and FSDP then start from identical
        # weights); per-rank seeds for everything random after that (drop path, mixup).
        torch.manual_seed(cfg.train.seed)
        self._build_data()
        self._build_model()
        torch.manual_seed(cfg.train.seed * 1000 + 1 + env.rank)
        self._build_optimization()

        self.state = TrainState(skipped_steps=torch.zeros((), device=self.device))
        self._name_components()
        self.peak = peak_flops(self.device, DTYPES[cfg.precision])
        self._resume()
        # Resumed at the step its end was recorded at: fit() reports the result and writes
        # nothing (a longer train.steps / train.epochs makes total_steps larger: it trains on).
        self.already_complete = (
            self.state.step >= self.total_steps and self.claim.finished_step == self.state.step
        )
        if not self.already_complete:
            self._start_writing()
        self.logger = RunLogger.create(
            cfg.output_dir,
            cfg.logging,
            is_main=env.is_main and not self.already_complete,
            total_steps=self.total_steps,
            config=cfg.to_dict(),
            start_step=self.state.step,
            # An epoch axis on the curves for runs whose length is given in epochs.
            epoch_axis=cfg.train.steps is None and cfg.train.epochs is not None,
        )
        self.timer = StepTimer()
        self.input_advisor = InputBoundAdvisor(cfg.data.workers)
        self._dtypes_logged = False
        self.preemption = PreemptionWatch(env)

    @property
    def step(self) -> int:
        """Optimizer steps taken (train.py reports it)."""
        return self.state.step

    def _build_data(self) -> None:
        cfg, env = self.cfg, self.env

        def loader(train: bool, batch_size: int) -> ShardLoader:
            settings = loader_config(
                cfg.data,
                cfg.augment,
                train=train,
                batch_size=batch_size,
                seed=cfg.train.seed,
                device=self.device,
            )
            return build_loader(settings, env.rank, env.world_size)

        self.train_loader = loader(True, cfg.train.batch_size)
        self.val_loader = loader(False, cfg.eval.batch_size or cfg.train.batch_size) if cfg.data.val else None
        self.num_classes = self.train_loader.num_classes
        if self.val_loader is not None:  # before the first step, not at the first evaluation
            self._check_val_classes()
        self.mixup = MixupCutmix.for_training(cfg.augment, self.num_classes, cfg.train.label_smoothing)

    def _mfu(self, ips: float) -> float:
        """MFU of this window; above 1 against a measured peak, the peak is measured again (and
        raised to what the model achieved if need be), so the figure never exceeds 1."""
        value = mfu(self.flops_per_image, ips, self.env.world_size, self.peak)
        if value > 1.0:
            achieved = value * self.peak  # the model's FLOP/s per device
            self.peak = raised_peak(self.device, DTYPES[self.cfg.precision], achieved)
            value = mfu(self.flops_per_image, ips, self.env.world_size, self.peak)
        return value

    def _check_val_classes(self) -> None:
        """The val labels must mean the training classes: the same list, or mapped onto it as
        ``data.val_class_map`` says."""
        cfg, train, val = self.cfg, self.train_loader, self.val_loader
        assert val is not None
        problem = val.align_classes(
            train.classes, self.num_classes, expected_what=f"data.train={cfg.data.train}"
        )
        if problem:
            raise DataError(
                f"data.val={cfg.data.val} does not have the training data's classes ({problem}); "
                "evaluate on a split of the same data set, or say how its classes map: "
                "data.val_class_map=names or a JSON file {val name: training name}"
            )

    def _build_model(self) -> None:
        """The plain model, parallelized (``self.model`` trains; ``self.plain_model`` is the
        module under any DDP wrapper, which checkpoints, EMA and export use), and the teacher."""
        cfg = self.cfg
        model = build_model(cfg.model, cfg.data, self.num_classes)
        if self.env.is_main and is_hub_ref(cfg.model.pretrained):
            self._compare_preprocessing(cfg.model.pretrained)
        self.flops_per_image = flops_per_image(model)
        self.num_params = sum(p.numel() for p in model.parameters())
        model.to(self.device)
        self.model = parallelize(model, self.env, cfg.parallel, precision=cfg.precision)
        self.plain_model = cast("VitDistModule", unwrap(self.model))  # the model build_model made
        self.fsdp = is_fsdp(self.model)
        self.teacher = (
            frozen_teacher(cfg.distill, cfg.data, cfg.precision, self.num_classes, self.env, fsdp=self.fsdp)
            if cfg.distill.type != "none"
            else None
        )

    def _compare_preprocessing(self, ref: str) -> None:
        """Warn once when the run normalises or resizes its inputs unlike the hub weights it
        fine-tunes (read from their config.json: a small file, through the same hub cache)."""
        d = self.cfg.data
        try:
            hc = read_config(parse_ref(ref, "model.pretrained"))
        except CheckpointError:  # a repository without a timm config.json: nothing to compare
            return
        diffs = preprocessing_differences(hc, d.mean, d.std, d.interpolation)
        if diffs:
            log.warning(
                "model.pretrained=%s: the run's inputs differ from the weights' own: %s; set them to "
                "the weights' values unless you mean it",
                ref,
                "; ".join(diffs),
            )

    def _build_optimization(self) -> None:
        """Run length, lr schedule, optimizer, loss scaler and EMA."""
        cfg, t, o = self.cfg, self.cfg.train, self.cfg.optim
        self.accum = t.grad_accum
        self.global_batch = t.batch_size * t.grad_accum * self.env.world_size
        self.steps_per_epoch = len(self.train_loader) // self.accum
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"an epoch has {len(self.train_loader)} batches per rank, fewer than train.grad_accum={self.accum}"
            )
        # What the config asks for; a resume with another number of steps per epoch changes
        # total_steps (not this) so that train.epochs still holds (optim.resume_schedule).
        if t.steps:
            planned_steps = t.steps
        elif t.epochs is not None:
            planned_steps = t.epochs * self.steps_per_epoch
        else:  # a bug: config validation asks for one of them
            raise RuntimeError("neither train.steps nor train.epochs survived config validation")
        self.length = RunLength(
            planned_steps=planned_steps,
            steps_per_epoch=self.steps_per_epoch,
            in_steps=bool(t.steps),
            epochs=t.epochs,
        )
        self.total_steps = self.length.planned_steps
        warmup = (
            o.warmup_steps if o.warmup_steps is not None else round(o.warmup_epochs * self.steps_per_epoch)
        )
        self.warmup_steps = min(warmup, self.total_steps)
        if warmup >= self.total_steps and self.total_steps > 0 and self.env.is_main:
            log.warning(_all_warmup(warmup, self.total_steps, o.warmup_steps is not None))
        self.lr = o.lr * (self.global_batch / o.base_batch_size if o.base_batch_size else 1.0)

        core = self.plain_model
        groups = param_groups(
            core, o.weight_decay, core.no_weight_decay(), o.layer_decay, core.transformer_blocks()
        )
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(
            groups,
            self.lr,
            self.device,
            name=o.name,
            betas=o.betas,
            eps=o.eps,
            momentum=o.momentum,
            nesterov=o.nesterov,
        )
        self.lr_schedule = LrSchedule(self.optimizer, self._schedule(o), self.lr, self.length)
        self.scaler = LossScaler(self.device, enabled=cfg.precision == "fp16")
        self.ema = ModelEma(core, cfg.ema.decay) if cfg.ema.decay > 0 else None

    def _schedule(self, o: OptimSection) -> Schedule:
        """This run's lr schedule, in optimizer steps (``optim.*_epochs`` times steps per epoch,
        unless the ``*_steps`` key is set); the cooldown fits in what warmup leaves."""
        spe = self.steps_per_epoch
        cooldown = o.cooldown_steps if o.cooldown_steps is not None else round(o.cooldown_epochs * spe)
        decay_every = o.decay_steps if o.decay_steps is not None else max(1, round(o.decay_epochs * spe))
        return Schedule(
            self.total_steps,
            self.warmup_steps,
            min(1.0, o.min_lr / self.lr) if self.lr > 0 else 0.0,
            kind=o.schedule,
            warmup_ratio=min(1.0, o.warmup_lr / self.lr) if self.lr > 0 else 0.0,
            cooldown=min(cooldown, self.total_steps - self.warmup_steps),
            decay_every=decay_every,
            decay_rate=o.decay_rate,
        )

    def _start_writing(self) -> None:
        """The run's first files: run.json (a new run), config.yaml and run_info.json."""
        if self.env.is_main:
            self.claim.write_marker()
            dump_config(self.cfg, self.out / "config.yaml")
        self._write_run_info()
        barrier()

    def _write_run_info(self) -> None:
        """run_info.json: how the run is laid out, including how many parameter elements each
        rank holds (under FSDP about 1/world_size of the total each)."""
        local = sum(local_tensor(p).numel() for p in self.plain_model.parameters())
        per_rank = all_gather_object(local)
        if self.env.is_main:
            info = {
                "world_size": self.env.world_size,
                "backend": self.env.backend,
                "device": str(self.device),
                "strategy": self.cfg.parallel.strategy,
                "sharded": self.fsdp,
                "precision": self.cfg.precision,
                "params_total": self.num_params,
                "params_local_per_rank": per_rank,
                "flops_per_image": self.flops_per_image,
                "num_classes": self.num_classes,
                "settings_from": self.settings_from,
            }
            atomic.write_json(self.out / "run_info.json", info)

    # ------------------------------------------------------------------ checkpoints

    def _name_components(self) -> None:
        """The training state a checkpoint saves and a resume restores, by name
        (``checkpoint/state.py``: a new piece of state is one line here), and the tensors it
        saves beside them (``checkpoint/store.py``: ``TensorState``)."""
        self.run_components: dict[str, Stateful] = {
            "train": self.state,
            "schedule": self.lr_schedule,
            "scaler": self.scaler,
        }
        if self.ema is not None:
            self.run_components["ema"] = self.ema  # the update count; the weights are tensors
        self.rank_components: dict[str, Stateful] = {"data": self.train_loader, "rng": RngState()}
        # In place of the rank components on another world size.
        self.data_counts = JobDataCounts(self.train_loader, self.device, self.env.is_main)
        self.job_components: dict[str, Stateful] = {
            "data": JobDataPosition(self.train_loader),
            "data_counts": self.data_counts,
        }
        self.tensors = ckpt.TensorState(
            model=self.plain_model,
            optimizer=self.optimizer,
            ema=self.ema.params if self.ema is not None else None,
            fsdp=self.fsdp,
        )

    def _checkpoint_meta(self) -> dict:
        """What describes the run beside its state: the model (``check_compatible``, the weights
        loader and the teacher rebuild it from these), the config and the run lineage."""
        return {
            "model_name": self.cfg.model.name,
            "model_kwargs": dict(self.plain_model.model_kwargs),
            "num_classes": self.num_classes,
            "classes": self.train_loader.classes,  # the names travel with the weights (export, predict)
            "config": self.cfg.to_dict(),
            "run_id": self.run_id,  # the run that wrote it (rundir): pruning keeps to its own
        }

    def save(self, *, best: bool = False) -> Path:
        return ckpt.save_checkpoint(
            self.out,
            self.env,
            step=self.state.step,
            tensors=self.tensors,
            meta=self._checkpoint_meta(),
            state={**self.run_components, **self.job_components},
            rank_state=self.rank_components,
            keep=self.cfg.checkpoint.keep,
            best=best,
        )

    def _resume(self) -> None:
        path = ckpt.resolve_resume(self.cfg.resume, self.out, self.env)
        if path is None:
            return
        ckpt.check_compatible(
            path,
            ckpt.read_meta(path),
            model_name=self.cfg.model.name,
            num_classes=self.num_classes,
            model_kwargs=dict(self.plain_model.model_kwargs),
        )
        meta, rank_state = ckpt.load_checkpoint(path, self.env, self.tensors)
        saved = meta.get("state", {})
        load_components(self.run_components, saved, path)
        if rank_state is not None:
            load_components(self.rank_components, rank_state, path)
        else:
            # Another world size: the job's position and counts stand in for the ranks' own.
            self._warn_main(
                "world size changed since %s (%s -> %d): the rest of epoch %d is re-planned for it",
                path,
                meta.get("world_size"),
                self.env.world_size,
                self.state.epoch,
            )
            load_components(self.job_components, saved, path)
        self._resume_peak_lr(path)
        self._resume_run_length(path)
        self._warn_main("resumed from %s at step %d (epoch %d)", path, self.state.step, self.state.epoch)

    def _resume_peak_lr(self, path: Path) -> None:
        """This run's peak lr (optim.lr, scaled by the global batch when optim.base_batch_size
        is set) replaces the checkpoint's, with a warning when they differ."""
        saved_peak = self.lr_schedule.set_peak(self.lr)
        if saved_peak is not None:
            self._warn_main(
                "peak lr %.4g in %s, %.4g for this run (optim.lr, global batch %d): the schedule goes on "
                "at the new peak",
                saved_peak,
                path,
                self.lr,
                self.global_batch,
            )

    def _resume_run_length(self, path: Path) -> None:
        """The checkpoint's lr schedule fitted to this run's length (optim.resume_schedule);
        with it, the number of steps the run trains to."""
        if self.claim.finished_step == self.state.step >= self.length.planned_steps:
            return  # a finished run asked for no more steps than it ran: nothing to fit (train.py says so)
        warning = self.lr_schedule.fit_length(
            self.length, step=self.state.step, steps_left=self._steps_left_in_configured_epochs
        )
        if warning:
            self._warn_main("%s (since %s)", warning, path)
        self.total_steps = self.lr_schedule.schedule.last_step

    def _steps_left_in_configured_epochs(self) -> int:
        """Optimizer steps from here to the end of ``train.epochs`` (the data position loaded)."""
        left = self.train_loader.batches_left() // self.accum
        epochs = self.cfg.train.epochs
        if epochs is None:  # a bug: only a length in epochs asks (optim.resume_schedule)
            raise RuntimeError("steps left in train.epochs asked of a run whose length is in steps")
        return left + max(0, epochs - self.state.epoch - 1) * self.steps_per_epoch

    def _warn_main(self, msg: str, *args) -> None:
        if self.env.is_main:
            log.warning(msg, *args)

    # ------------------------------------------------------------------ steps

    def _optimizer_step(self, found_inf: torch.Tensor) -> None:
        if getattr(self.optimizer, "_step_supports_amp_scaling", False) and self.device.type == "cuda":
            # Fused AdamW skips the update on device when found_inf is 1: no host sync.
            # torch's GradScaler protocol: an attribute the fused kernels read, on any optimizer.
            self.optimizer.found_inf = found_inf  # type: ignore[attr-defined]
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf  # type: ignore[attr-defined]
        elif found_inf.item() == 0:  # CPU: reading a CPU tensor costs nothing
            self.optimizer.step()

    def train_step(self, it) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns the mean loss (device)."""
        cfg, model = self.cfg, self.model
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.accum):
            self.timer.data_start()
            batch = next(it)
            self.timer.data_end()
            x = self.train_loader.images(batch, self.device)  # (B, C, H, W) float32, normalised
            y = batch["label"].to(self.device, non_blocking=True)  # (B,)
            if self.mixup is not None:
                x, y = self.mixup(x, y)  # y: (B, num_classes) soft targets, smoothing included
            sync = micro == self.accum - 1
            with no_grad_sync(model, enabled=not sync and self.env.world_size > 1):
                with autocast(self.device, cfg.precision):
                    out = model(x)
                    if self.teacher is not None:
                        d = cfg.distill
                        t_logits = self.teacher(x)  # the same (mixed) batch the student sees
                        loss = distillation_loss(
                            out,
                            y,
                            t_logits,
                            d.type,
                            d.alpha,
                            d.tau,
                            cfg.train.label_smoothing,
                            cfg.train.loss,
                        )
                    else:
                        loss = classification_loss(out, y, cfg.train.label_smoothing, cfg.train.loss)
                if faults.armed("nan", self.state.step + 1, self.env.rank):
                    loss = loss * float("nan")
                self.scaler.scale_loss(loss / self.accum).backward()
            loss_sum += loss.detach()
        grads = [p.grad for p in self.params if p.grad is not None]
        self.scaler.unscale_([local_tensor(g) for g in grads])
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP: the norm of all shards together
            norm = norm.full_tensor()
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grads_with_norm_(self.params, cfg.optim.clip_grad, norm, foreach=True)
        found_inf = (~torch.isfinite(norm) | ~torch.isfinite(loss_sum)).float()
        self._optimizer_step(found_inf)
        self.scaler.update(found_inf)
        self.lr_schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and (self.state.step + 1) % cfg.ema.every == 0:
            self.ema.update(self.plain_model)
        self.state.skipped_steps += found_inf
        self.last_grad_norm = norm.detach()
        self.last_found_inf = found_inf
        self.state.step += 1
        self.state.step_in_epoch += 1
        self.state.samples_seen += self.global_batch
        return loss_sum / self.accum

    # ------------------------------------------------------------------ evaluation

    def _evaluate_once(self) -> dict:
        return evaluate_model(
            self.model,
            self.val_loader,
            self.device,
            self.cfg.precision,
            plain_model=self.plain_model,
            teacher=self.teacher,
        )

    def evaluate(self) -> dict:
        rec = {"step": self.state.step, "epoch": self.state.epoch, **self._evaluate_once()}
        if self.ema is not None:
            with self.ema.swapped_in(self.plain_model):
                e = self._evaluate_once()
            rec.update(
                {f"ema_{k}": v for k, v in e.items() if k != "num_samples" and not k.startswith("teacher")}
            )
        return rec

    # ------------------------------------------------------------------ logging

    def _log_dtypes(self) -> None:
        p = self.params[0]
        grad_dtype = p.grad.dtype if p.grad is not None else p.dtype
        state = self.optimizer.state.get(p, {})
        opt_dtype = state["exp_avg"].dtype if "exp_avg" in state else "n/a"
        compute = DTYPES[self.cfg.precision]
        self.logger.info(
            f"world size {self.env.world_size} ({self.env.backend or 'single process'}), device {self.device}, "
            f"global batch {self.global_batch} = {self.cfg.train.batch_size} x {self.accum} accum x "
            f"{self.env.world_size}; parameters {p.dtype} (master), compute {compute}, gradients {grad_dtype}, "
            f"optimizer state {opt_dtype}; {self.cfg.parallel.strategy}"
            f"{' (sharded)' if self.fsdp else ''}; {self.num_params / 1e6:.2f}M params, "
            f"{self.flops_per_image / 1e9:.3f} GFLOPs/image"
        )

    def _log_step(self, loss_window: torch.Tensor, n_window: int) -> None:
        """Collective: every rank calls it at the same steps."""
        stats = torch.stack([loss_window.detach().float().to(self.device), self.state.skipped_steps.float()])
        all_reduce(stats)
        loss = stats[0].item() / (n_window * self.env.world_size)
        skipped = int(stats[1].item() / self.env.world_size)
        bad, seen = self.data_counts.totals()
        self.train_loader.check_bad_fraction(bad, seen)  # the same sums on every rank: all stop
        t = self.timer.summary(sync_fn=torch.cuda.synchronize if self.device.type == "cuda" else None)
        steps = max(t["steps"], 1)
        ips = self.global_batch * steps / max(t["step_time"] * steps, 1e-9)
        self._check_nonfinite(skipped)
        advice = self.input_advisor.update(t["data_wait_frac"])
        if advice:
            self._warn_main("%s", advice)
        self.logger.log_train(
            {
                "step": self.state.step,
                "epoch": self.state.epoch,
                "samples_seen": self.state.samples_seen,
                "loss": loss,
                "lr": self.optimizer.param_groups[-1]["lr"] / self.optimizer.param_groups[-1]["lr_scale"],
                "grad_norm": float(self.last_grad_norm.item()),
                "images_per_sec": ips,
                "mfu": self._mfu(ips),
                "max_memory_mb": max_memory_mb(self.device),
                "data_wait_frac": t["data_wait_frac"],
                "bad_samples": bad,
                "skipped_steps": skipped,
                "loss_scale": float(self.scaler.scale.item()),
                "world_size": self.env.world_size,
            }
        )

    def _check_nonfinite(self, skipped: int) -> None:
        limit = self.cfg.train.max_skipped_steps
        if self.cfg.precision == "fp16":
            # Overflow is routine with fp16 (the scaler backs off); only a scale collapse is fatal.
            if float(self.scaler.scale.item()) < 2.0**-24:
                raise TrainingError(
                    "fp16 loss scale collapsed below 2^-24: the loss or gradients are NaN/Inf"
                )
            return
        if skipped > limit:
            raise TrainingError(
                f"{skipped} optimizer steps had a non-finite loss or gradient (limit train.max_skipped_steps="
                f"{limit}); lower optim.lr, set optim.clip_grad, or use bf16 instead of fp16"
            )

    # ------------------------------------------------------------------ preemption

    def _preempt(self) -> None:
        path = self.save()
        if self.env.is_main:
            atomic.write_json(
                self.out / "preempted.json",
                {
                    "step": self.state.step,
                    "checkpoint": str(path),
                    "signal": self.preemption.signal_name or "peer",
                },
                indent=None,
            )
        barrier()  # no rank exits (and gets the job torn down) before the marker is written
        self.logger.finish(None)
        raise Preempted(
            f"preemption signal: checkpoint saved at step {self.state.step} ({path}); resume with resume=auto"
        )

    # ------------------------------------------------------------------ the loop

    def _at_multiple_of(self, every: int) -> bool:
        """Whether this step is one of every ``every`` steps (never when ``every`` is 0)."""
        return every > 0 and self.state.step % every == 0

    def fit(self) -> dict:
        if self.already_complete:
            return self._completed_result()
        cfg = self.cfg
        self.preemption.install()
        if self.env.is_main and (self.out / "preempted.json").exists():
            (self.out / "preempted.json").unlink()
        self.logger.info(
            f"training {cfg.model.name} for {self.total_steps} steps ({self.steps_per_epoch} per epoch), "
            f"lr {self.lr:.3g}, warmup {self.warmup_steps} steps, output {self.out}"
        )
        loss_window = torch.zeros((), device=self.device)
        n_window = 0
        final_eval = None
        # The first steps of a process compile, allocate and warm up (and may synchronise).
        guarded_from = self.state.step + 2
        if cfg.train.sync_debug != "off" and self.device.type != "cuda":
            self._warn_main(
                "train.sync_debug=%s applies to CUDA only; ignored on %s", cfg.train.sync_debug, self.device
            )
        while self.state.step < self.total_steps:
            self.train_loader.set_epoch(self.state.epoch)
            # The epoch's steps left: after a re-plan for other settings this is not
            # steps_per_epoch - step_in_epoch (the rest of the epoch was cut another way).
            left = self.train_loader.batches_left() // self.accum
            it = iter(self.train_loader)
            todo = min(left, self.total_steps - self.state.step)
            for _ in range(todo):
                mode = cfg.train.sync_debug if self.state.step >= guarded_from else "off"
                with sync_guard(mode, self.device, self.state.step + 1):
                    loss_window += self.train_step(it)
                n_window += 1
                self.timer.step_end()
                if not self._dtypes_logged:
                    self._log_dtypes()
                    self._dtypes_logged = True
                if self._at_multiple_of(cfg.logging.every) or self.state.step == self.total_steps:
                    self._log_step(loss_window, n_window)
                    loss_window.zero_()
                    n_window = 0
                if self.val_loader is not None and self._at_multiple_of(cfg.eval.every):
                    final_eval = self._eval_and_track()
                if self._at_multiple_of(cfg.checkpoint.every) and self.state.step < self.total_steps:
                    self.save()
                faults.maybe_kill("kill", self.state.step, self.env.rank)
                faults.maybe_kill_node(self.state.step, self.env.rank)
                faults.maybe_signal(self.state.step, self.env.rank)
                if self.preemption.requested():
                    self._preempt()
            del it  # stops this epoch's loader workers
            if todo == left:  # the epoch ran to its end (not cut by total_steps)
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                if self.state.step < self.total_steps:
                    if self.val_loader is not None and cfg.eval.every == 0:
                        final_eval = self._eval_and_track()
                    if cfg.checkpoint.every == 0:
                        self.save()
        if self.val_loader is not None and (final_eval is None or final_eval["step"] != self.state.step):
            final_eval = self._eval_and_track(save_best=False)
        final = self.save(best=final_eval is not None and final_eval["top1"] >= self.state.best_top1)
        self._export(final)
        self.logger.finish(final_eval)
        if self.env.is_main:
            # Last: a run killed before this line is not finished, and a resume completes it.
            self.claim.record_finished(self.state.step)
        barrier()
        self.claim.release()
        return final_eval or {}

    def _completed_result(self) -> dict:
        """The final evaluation of a run that had ended before this job (its eval.json; {}
        without one). Nothing is trained or written."""
        self.claim.release()
        path = self.out / FINAL_EVAL_FILE
        if not path.is_file():
            return {}
        return load_json_object(path, limit=1024 * 1024, error=CheckpointError, what="final evaluation")

    def _export(self, final: Path) -> None:
        """Consolidated weights-only files for inference and fine-tuning (export/model.safetensors
        and, with EMA, model_ema.safetensors; timm-loadable where timm has the architecture).
        Rank 0 reads the final checkpoint back on its own; the others wait."""
        failure = None
        if self.env.is_main:
            try:
                for ema in (False, True) if self.ema is not None else (False,):
                    path = export_checkpoint(
                        final, self.out / "export" / f"model{'_ema' if ema else ''}.safetensors", ema=ema
                    )
                    self.logger.info(f"exported {'EMA ' if ema else ''}weights: {path}")
            except CheckpointError as e:  # disk full: every rank stops with the same line
                failure = str(e)
        failure = broadcast_object(failure)  # also the barrier: the others wait for the export
        if failure:
            raise CheckpointError(failure)

    def _eval_and_track(self, save_best: bool = True) -> dict:
        rec = self.evaluate()
        self.logger.log_eval(rec)
        improved = rec["top1"] > self.state.best_top1
        if improved:
            self.state.best_top1 = rec["top1"]
            if save_best and self.state.step < self.total_steps:
                self.save(best=True)
        return rec
