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

import dataclasses
import json
import logging
import math
import signal
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import faults
from .amp import DTYPES, LossScaler, autocast
from .config import Config, dump_config
from .data import AugmentConfig, DataConfig, EvalSums, MixupCutmix, build_loader, global_bad_samples
from .distill import FrozenTeacher, Renormalize, build_teacher, distillation_loss
from .distributed import DistEnv, all_gather_object, all_reduce, barrier
from .ema import ModelEma
from .errors import Preempted, TrainingError
from .losses import classification_loss
from .metrics import InputBoundAdvisor, RunLogger, StepTimer, max_memory_mb, mfu, peak_flops
from .models import create_model, flops_per_image, load_pretrained
from .optim import Schedule, build_optimizer, build_scheduler, param_groups
from .parallel import is_fsdp, local_tensor, no_grad_sync, parallelize, shard_frozen, unwrap
from .sync_debug import sync_guard

log = logging.getLogger(__name__)


def data_config(cfg: Config, train: bool, device: torch.device) -> DataConfig:
    d = cfg.data
    aug = AugmentConfig(
        img_size=d.img_size,
        scale=tuple(d.scale),
        ratio=tuple(d.ratio),
        hflip=d.hflip,
        randaugment_ops=d.randaugment_ops,
        randaugment_magnitude=d.randaugment_magnitude,
        trivial_augment=d.trivial_augment,
        color_jitter=d.color_jitter,
        random_erasing=d.random_erasing,
        crop_pct=d.crop_pct,
        mean=tuple(d.mean),
        std=tuple(d.std),
    )
    # auto: uint8 to an accelerator (a quarter of the bytes to copy), floats from the workers on CPU
    auto_place = "worker" if device.type == "cpu" else "device"
    return DataConfig(
        shards=d.train if train else d.val,
        split="train" if train else "val",
        train=train,
        batch_size=cfg.train.batch_size if train else (cfg.eval.batch_size or cfg.train.batch_size),
        num_workers=d.workers,
        epoch_mode=d.mode if train else "exact",
        samples_per_epoch=d.samples_per_epoch if train else None,
        shuffle_buffer=d.shuffle_buffer if train else 0,
        seed=cfg.train.seed,
        num_classes=d.num_classes,
        meta=d.meta,
        augment=aug,
        pin_memory=d.pin_memory and device.type == "cuda",
        prefetch_factor=d.prefetch,
        max_bad_fraction=d.max_bad_fraction,
        normalize_in_workers=(d.normalize_on if d.normalize_on != "auto" else auto_place) == "worker",
    )


def build_model(cfg: Config, num_classes: int):
    """The plain model with data-derived defaults (image size, classes) and pretrained weights."""
    kwargs = dict(cfg.model.kwargs)
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("img_size", cfg.data.img_size)
    kwargs.setdefault("in_chans", cfg.data.in_chans)
    if kwargs["img_size"] != cfg.data.img_size:
        raise ValueError(
            f"model.img_size={kwargs['img_size']} differs from data.img_size={cfg.data.img_size}"
        )
    model = create_model(cfg.model.name, **kwargs)
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained)
    return model


class Trainer:
    def __init__(self, cfg: Config, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.device = env.device
        self.out = Path(cfg.output_dir)
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
        barrier()

        # Same seed on every rank for the model init (DDP and FSDP then start from identical
        # weights); per-rank seeds for everything random after that (drop path, mixup).
        torch.manual_seed(cfg.train.seed)
        self.train_loader = build_loader(data_config(cfg, True, self.device), env.rank, env.world_size)
        self.val_loader = (
            build_loader(data_config(cfg, False, self.device), env.rank, env.world_size)
            if cfg.data.val
            else None
        )
        self.num_classes = self.train_loader.num_classes
        model = build_model(cfg, self.num_classes)
        self.flops_per_image = flops_per_image(model)
        self.num_params = sum(p.numel() for p in model.parameters())
        model.to(self.device)
        self.model = parallelize(
            model,
            env,
            strategy=cfg.parallel.strategy,
            precision=cfg.precision,
            compile=cfg.parallel.compile,
            activation_checkpointing=cfg.parallel.activation_checkpointing,
            reshard_after_forward=cfg.parallel.reshard_after_forward,
        )
        self.core = unwrap(self.model)
        self.fsdp = is_fsdp(self.model)
        self.teacher = self._build_teacher() if cfg.distill.type != "none" else None
        self._write_run_info()
        torch.manual_seed(cfg.train.seed * 1000 + 1 + env.rank)

        # Schedule lengths
        t = cfg.train
        self.accum = t.grad_accum
        self.global_batch = t.batch_size * t.grad_accum * env.world_size
        self.steps_per_epoch = len(self.train_loader) // self.accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"an epoch has {len(self.train_loader)} batches per rank, fewer than train.grad_accum={self.accum}"
            )
        # What the config asks for; a resume with another number of steps per epoch changes
        # total_steps (not this) so that train.epochs still holds (_resume_schedule).
        self.planned_steps = t.steps or t.epochs * self.steps_per_epoch
        self.total_steps = self.planned_steps
        o = cfg.optim
        warmup = (
            o.warmup_steps if o.warmup_steps is not None else round(o.warmup_epochs * self.steps_per_epoch)
        )
        self.warmup_steps = min(warmup, self.total_steps)
        self.lr = o.lr * (self.global_batch / o.base_batch_size if o.base_batch_size else 1.0)

        groups = param_groups(
            self.core,
            o.weight_decay,
            self.core.no_weight_decay(),
            o.layer_decay,
            self.core.transformer_blocks(),
        )
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = build_optimizer(groups, self.lr, o.betas, o.eps, self.device)
        min_ratio = min(1.0, o.min_lr / self.lr) if self.lr > 0 else 0.0
        self.schedule = Schedule(self.total_steps, self.warmup_steps, min_ratio)
        self.scheduler = build_scheduler(self.optimizer, self.schedule)
        self.scaler = LossScaler(self.device, enabled=cfg.precision == "fp16")
        self.ema = ModelEma(self.core, cfg.ema.decay) if cfg.ema.decay > 0 else None
        d = cfg.data
        self.mixup = (
            MixupCutmix(self.num_classes, d.mixup, d.cutmix, d.switch_prob, d.mixup_prob, t.label_smoothing)
            if (d.mixup > 0 or d.cutmix > 0) and d.mixup_prob > 0
            else None
        )

        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.samples_seen = 0
        self.best_top1 = -1.0
        self.skipped_steps = torch.zeros((), device=self.device)
        self.consecutive_overflow = 0
        self.peak = peak_flops(self.device, DTYPES[cfg.precision])
        self._resume()
        self.logger = RunLogger(
            str(self.out),
            is_main=env.is_main,
            total_steps=self.total_steps,
            config=cfg.to_dict(),
            wandb_enabled=cfg.logging.wandb,
            wandb_mode=cfg.logging.mode,
            project=cfg.logging.project,
            entity=cfg.logging.entity,
            run_name=cfg.logging.name,
            progress=cfg.logging.progress,
            start_step=self.step,
        )
        self.timer = StepTimer()
        self.input_advisor = InputBoundAdvisor(cfg.data.workers)
        self._dtypes_logged = False
        self._signal = None  # name of a preemption signal received by this process
        # The preemption flag is reduced over a CPU (gloo) group: agreeing on it each step
        # costs no host-device synchronisation, also when the training backend is NCCL.
        self._flag_group = None
        if torch.distributed.is_initialized() and env.world_size > 1:
            self._flag_group = (
                torch.distributed.new_group(backend="gloo")
                if env.backend != "gloo"
                else torch.distributed.group.WORLD
            )

    def _build_teacher(self) -> FrozenTeacher:
        cfg, d = self.cfg, self.cfg.data
        model, what = build_teacher(cfg.distill, self.num_classes, d.img_size, d.in_chans)
        renorm = Renormalize(
            d.mean, d.std, cfg.distill.teacher_mean or d.mean, cfg.distill.teacher_std or d.std
        )
        teacher = FrozenTeacher(model, renorm).to(self.device)
        gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
        sharded = self.fsdp and gb > cfg.distill.shard_teacher_above_gb
        if sharded:  # see distill.py: replicated unless it is too big to hold on every rank
            shard_frozen(model, self.env, cfg.precision)
        if self.env.is_main:
            log.info(
                "distill (%s, alpha %s, tau %s): teacher %s, %.2f GB, %s",
                cfg.distill.type,
                cfg.distill.alpha,
                cfg.distill.tau,
                what,
                gb,
                "FSDP-sharded" if sharded else "replicated on every rank",
            )
        return teacher

    def _write_run_info(self) -> None:
        """run_info.json: how the run is laid out, including how many parameter elements each
        rank holds (under FSDP about 1/world_size of the total each)."""
        local = sum(local_tensor(p).numel() for p in self.core.parameters())
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
            }
            (self.out / "run_info.json").write_text(json.dumps(info, indent=1))

    # ------------------------------------------------------------------ checkpoints

    def _meta(self, data_counts: tuple[int, int]) -> dict:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            # The data position (the same on every rank but for its bad-sample counts): what a
            # resume on another world size re-plans the rest of the epoch from.
            "data": self.train_loader.state_dict(),
            # (bad samples, samples read) of all ranks: the counts a resume on another world
            # size carries on from (per-rank counts mean nothing there).
            "data_counts": list(data_counts),
            "samples_seen": self.samples_seen,
            "best_top1": self.best_top1,
            "scheduler": self.scheduler.state_dict(),
            "schedule": dataclasses.asdict(self.schedule),
            "peak_lr": self.lr,
            "planned_steps": self.planned_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "scaler": self.scaler.state_dict(),
            "ema_updates": self.ema.updates if self.ema else 0,
            "model_name": self.cfg.model.name,
            "model_kwargs": getattr(self.core, "model_kwargs", {}),
            "num_classes": self.num_classes,
            "config": self.cfg.to_dict(),
        }

    def save(self, best: bool = False) -> Path:
        counts = global_bad_samples(self.train_loader, self.device)  # a collective, like the save
        return ckpt.save_checkpoint(
            self.out,
            self.env,
            step=self.step,
            model=self.core,
            optimizer=self.optimizer,
            fsdp=self.fsdp,
            ema=self.ema.state_dict() if self.ema else None,
            meta=self._meta(counts),
            rank_state={"data": self.train_loader.state_dict()},
            keep=self.cfg.checkpoint.keep,
            best=best,
        )

    def _resume(self) -> None:
        path = ckpt.resolve_resume(self.cfg.resume, self.out, self.env)
        if path is None:
            return
        meta = ckpt.read_meta(path)
        mine = {"model_name": self.cfg.model.name, "num_classes": self.num_classes}
        for k, v in mine.items():
            if meta.get(k) != v:
                raise ckpt.CheckpointError(f"{path} was written for {k}={meta.get(k)!r}, this run has {v!r}")
        theirs = json.loads(json.dumps(meta.get("model_kwargs", {})))
        ours = json.loads(json.dumps(getattr(self.core, "model_kwargs", {})))
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if diff:
            detail = ", ".join(
                f"model.{k}: checkpoint {theirs.get(k)!r}, this run {ours.get(k)!r}" for k in diff
            )
            raise ckpt.CheckpointError(f"{path} is from another model ({detail})")
        meta, rank_state = ckpt.load_checkpoint(
            path,
            self.env,
            model=self.core,
            optimizer=self.optimizer,
            fsdp=self.fsdp,
            ema=self.ema.state_dict() if self.ema else None,
        )
        self.step = int(meta["step"])
        self.epoch = int(meta["epoch"])
        self.step_in_epoch = int(meta["step_in_epoch"])
        self.samples_seen = int(meta["samples_seen"])
        self.best_top1 = float(meta["best_top1"])
        self.scheduler.load_state_dict(meta["scheduler"])
        self._resume_peak_lr(meta, path)
        if self.scaler.enabled and meta["scaler"].get("enabled"):
            self.scaler.load_state_dict(meta["scaler"])
        if self.ema:
            self.ema.updates = int(meta["ema_updates"])
        if rank_state is not None:
            # Other loader workers or batch size: the loader re-plans the rest of the epoch.
            self.train_loader.load_state_dict(rank_state["data"])
            ckpt.set_rng_state(rank_state["rng"])
        elif "data" in meta:
            # Another world size: the rest of the interrupted epoch is re-planned for it, every
            # sample still once. Rank 0 carries the job's bad-sample counts on (the others
            # start at 0), so the all-rank sums, and the limit on them, go on where they were.
            self._warn_main(
                "world size changed since %s (%s -> %d): the rest of epoch %d is re-planned for it",
                path,
                meta.get("world_size"),
                self.env.world_size,
                self.epoch,
            )
            self.train_loader.load_state_dict(meta["data"], counters=False)
            if self.env.is_main and "data_counts" in meta:
                self.train_loader.bad_samples, self.train_loader.samples_seen = map(int, meta["data_counts"])
        else:
            # A checkpoint from before re-planning existed: go on from the next epoch.
            if self.step_in_epoch:
                self.epoch += 1
                self.step_in_epoch = 0
            self._warn_main(
                "world size changed since %s: data resumes at the start of epoch %d", path, self.epoch
            )
        self._resume_schedule(meta, path)
        self._warn_main("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)

    def _resume_peak_lr(self, meta: dict, path: Path) -> None:
        """The scheduler's state carries the checkpoint's peak lr. This run's (optim.lr, scaled
        by the global batch when optim.base_batch_size is set) wins: a changed optim.lr, or a
        world size that changes the scaled lr, must not be silently ignored."""
        old = meta.get("peak_lr")
        if old is None or math.isclose(old, self.lr, rel_tol=1e-12):
            return
        ratio = self.lr / old
        self.scheduler.base_lrs = [b * ratio for b in self.scheduler.base_lrs]
        for g in self.optimizer.param_groups:
            g["lr"] *= ratio
            if "initial_lr" in g:
                g["initial_lr"] *= ratio
        self._warn_main(
            "peak lr %.4g in %s, %.4g for this run (optim.lr, global batch %d): the schedule goes on "
            "at the new peak",
            old,
            path,
            self.lr,
            self.global_batch,
        )

    def _warn_main(self, msg: str, *args) -> None:
        if self.env.is_main:
            log.warning(msg, *args)

    def _resume_schedule(self, meta: dict, path: Path) -> None:
        """The lr schedule and run length after a resume (the data position is loaded)."""
        t, old = self.cfg.train, meta.get("schedule")
        if old is None:
            return  # a checkpoint from before schedules were saved: the schedule as configured
        if meta.get("planned_steps") == self.planned_steps:
            # The same plan: go on with the checkpoint's schedule, re-anchored or not.
            vars(self.schedule).update(old)
        elif not t.steps and meta.get("steps_per_epoch") != self.steps_per_epoch:
            # Another world size or batch size: the steps per epoch changed, train.epochs did
            # not. Finish the epochs asked for, and continue the lr from where it was.
            vars(self.schedule).update(old)
            left = self.train_loader.batches_left() // self.accum
            left += max(0, t.epochs - self.epoch - 1) * self.steps_per_epoch
            self.schedule.reanchor(self.step, self.step + left)
            self._warn_main(
                "steps per epoch changed since %s (%s -> %d): %d steps left to the end of "
                "train.epochs=%d; the lr schedule goes on from %.1f%% of its length",
                path,
                meta.get("steps_per_epoch"),
                self.steps_per_epoch,
                left,
                t.epochs,
                100.0 * self.schedule.anchor_position / max(1, self.schedule.total),
            )
        else:
            # train.steps or train.epochs changed: the schedule of the new length, as configured.
            self._warn_main(
                "train.steps/train.epochs changed since %s (%s -> %d steps): the lr schedule is the "
                "one for the new length",
                path,
                meta.get("planned_steps"),
                self.planned_steps,
            )
        self.total_steps = self.schedule.last_step

    # ------------------------------------------------------------------ steps

    def _optimizer_step(self, found_inf: torch.Tensor) -> None:
        if getattr(self.optimizer, "_step_supports_amp_scaling", False) and self.device.type == "cuda":
            # Fused AdamW skips the update on device when found_inf is 1: no host sync.
            self.optimizer.found_inf = found_inf
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
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
                            out, y, t_logits, d.type, d.alpha, d.tau, cfg.train.label_smoothing
                        )
                    else:
                        loss = classification_loss(out, y, cfg.train.label_smoothing)
                if faults.armed("nan", self.step + 1, self.env.rank):
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
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and (self.step + 1) % cfg.ema.every == 0:
            self.ema.update(self.core)
        self.skipped_steps += found_inf
        self.last_grad_norm = norm.detach()
        self.last_found_inf = found_inf
        self.step += 1
        self.step_in_epoch += 1
        self.samples_seen += self.global_batch
        return loss_sum / self.accum

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def _evaluate_once(self) -> dict:
        """Top-1/top-5/loss of the model (for a distilled DeiT: of the mean of its heads, plus
        each head's top-1), and with a teacher: the teacher's top-1 and how often the
        distillation head agrees with it. Exactly once per sample, summed over ranks."""
        self.model.eval()
        two_heads = hasattr(self.core, "return_both_heads")
        sums = {"": EvalSums(self.device)}
        if two_heads:
            sums.update(cls_=EvalSums(self.device), dist_=EvalSums(self.device))
        if self.teacher is not None:
            sums["teacher_"] = EvalSums(self.device)
        agree = torch.zeros(2, dtype=torch.float64, device=self.device)  # (agreements, samples)
        self.val_loader.set_epoch(0)
        try:
            if two_heads:
                self.core.return_both_heads = True
            for batch in self.val_loader:
                x = self.val_loader.images(batch, self.device)
                y = batch["label"].to(self.device, non_blocking=True)
                valid = batch["valid"].to(self.device)
                with autocast(self.device, self.cfg.precision):
                    out = self.model(x)
                    t_logits = self.teacher(x) if self.teacher is not None else None
                if two_heads:
                    cls_logits, dist_logits = out
                    sums["cls_"].update(cls_logits, y, valid)
                    sums["dist_"].update(dist_logits, y, valid)
                    out = (cls_logits + dist_logits) / 2
                sums[""].update(out, y, valid)
                if t_logits is not None:
                    sums["teacher_"].update(t_logits, y, valid)
                    student = dist_logits if two_heads else out
                    same = (student.argmax(-1) == t_logits.argmax(-1)) & valid
                    agree += torch.stack([same.sum(), valid.sum()]).double()
        finally:
            if two_heads:
                self.core.return_both_heads = False
        rec = {}
        for prefix, s in sums.items():
            r = s.reduce()
            if prefix:
                rec[f"{prefix}top1"] = r["top1"]
            else:
                rec.update(top1=r["top1"], top5=r["top5"], loss=r["loss"], num_samples=r["count"])
        if self.teacher is not None:
            all_reduce(agree)
            rec["teacher_agreement"] = (agree[0] / agree[1].clamp(min=1)).item()
        return rec

    def evaluate(self) -> dict:
        rec = {"step": self.step, "epoch": self.epoch, **self._evaluate_once()}
        if self.ema is not None:
            with self.ema.swapped_in(self.core):
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
        stats = torch.stack([loss_window.detach().float().to(self.device), self.skipped_steps.float()])
        all_reduce(stats)
        loss = stats[0].item() / (n_window * self.env.world_size)
        skipped = int(stats[1].item() / self.env.world_size)
        bad, seen = global_bad_samples(self.train_loader, self.device)
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
                "step": self.step,
                "epoch": self.epoch,
                "samples_seen": self.samples_seen,
                "loss": loss,
                "lr": self.optimizer.param_groups[-1]["lr"] / self.optimizer.param_groups[-1]["lr_scale"],
                "grad_norm": float(self.last_grad_norm.item()),
                "images_per_sec": ips,
                "mfu": mfu(self.flops_per_image, ips, self.env.world_size, self.peak),
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

    def _on_signal(self, signum, frame) -> None:
        self._signal = signal.Signals(signum).name  # acted on at the next step boundary

    def _install_signal_handlers(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _preempt_requested(self) -> bool:
        """True on every rank when any rank received a preemption signal (a collective)."""
        flag = torch.tensor([1.0 if self._signal else 0.0])
        if self._flag_group is not None:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._flag_group)
        return bool(flag.item())

    def _preempt(self) -> None:
        path = self.save()
        if self.env.is_main:
            (self.out / "preempted.json").write_text(
                json.dumps({"step": self.step, "checkpoint": str(path), "signal": self._signal or "peer"})
            )
        barrier()  # no rank exits (and gets the job torn down) before the marker is written
        self.logger.finish(None)
        raise Preempted(
            f"preemption signal: checkpoint saved at step {self.step} ({path}); resume with resume=auto"
        )

    # ------------------------------------------------------------------ the loop

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def fit(self) -> dict:
        cfg = self.cfg
        self._install_signal_handlers()
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
        guarded_from = self.step + 2
        if cfg.train.sync_debug != "off" and self.device.type != "cuda":
            self._warn_main(
                "train.sync_debug=%s applies to CUDA only; ignored on %s", cfg.train.sync_debug, self.device
            )
        while self.step < self.total_steps:
            self.train_loader.set_epoch(self.epoch)
            # The epoch's steps left: after a re-plan for other settings this is not
            # steps_per_epoch - step_in_epoch (the rest of the epoch was cut another way).
            left = self.train_loader.batches_left() // self.accum
            it = iter(self.train_loader)
            todo = min(left, self.total_steps - self.step)
            for _ in range(todo):
                mode = cfg.train.sync_debug if self.step >= guarded_from else "off"
                with sync_guard(mode, self.device, self.step + 1):
                    loss_window += self.train_step(it)
                n_window += 1
                self.timer.step_end()
                if not self._dtypes_logged:
                    self._log_dtypes()
                    self._dtypes_logged = True
                if self._due(cfg.logging.every) or self.step == self.total_steps:
                    self._log_step(loss_window, n_window)
                    loss_window.zero_()
                    n_window = 0
                if self.val_loader is not None and self._due(cfg.eval.every):
                    final_eval = self._eval_and_track()
                if self._due(cfg.checkpoint.every) and self.step < self.total_steps:
                    self.save()
                faults.maybe_kill("kill", self.step, self.env.rank)
                faults.maybe_signal(self.step, self.env.rank)
                if self._preempt_requested():
                    self._preempt()
            del it  # stops this epoch's loader workers
            if todo == left:  # the epoch ran to its end (not cut by total_steps)
                self.epoch += 1
                self.step_in_epoch = 0
                if self.step < self.total_steps:
                    if self.val_loader is not None and cfg.eval.every == 0:
                        final_eval = self._eval_and_track()
                    if cfg.checkpoint.every == 0:
                        self.save()
        if self.val_loader is not None and (final_eval is None or final_eval["step"] != self.step):
            final_eval = self._eval_and_track(save_best=False)
        final = self.save(best=final_eval is not None and final_eval["top1"] >= self.best_top1)
        self._export(final)
        self.logger.finish(final_eval)
        return final_eval or {}

    def _export(self, final: Path) -> None:
        """Consolidated weights-only files for inference and fine-tuning (export/model.safetensors
        and, with EMA, model_ema.safetensors; timm-loadable where timm has the architecture).
        Rank 0 reads the final checkpoint back on its own; the others wait."""
        if self.env.is_main:
            from .export import export_checkpoint

            for ema in (False, True) if self.ema is not None else (False,):
                path = export_checkpoint(
                    final, self.out / "export" / f"model{'_ema' if ema else ''}.safetensors", ema
                )
                self.logger.info(f"exported {'EMA ' if ema else ''}weights: {path}")
        barrier()

    def _eval_and_track(self, save_best: bool = True) -> dict:
        rec = self.evaluate()
        self.logger.log_eval(rec)
        improved = rec["top1"] > self.best_top1
        if improved:
            self.best_top1 = rec["top1"]
            if save_best and self.step < self.total_steps:
                self.save(best=True)
        return rec


def run_summary(result: dict) -> str:
    if not result:
        return "no evaluation data (data.val unset)"
    s = f"held-out top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, loss {result['loss']:.4f}"
    s += f" on {result['num_samples']} samples"
    if "ema_top1" in result:
        s += f" (EMA top-1 {result['ema_top1']:.4f})"
    return s if math.isfinite(result["top1"]) else s + " (non-finite!)"
