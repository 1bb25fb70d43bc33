"""The timed training loops: Row (timing, load accounting, summary), OursRow (llmos_jax's real
train step on a mesh, with its in-script variants applied while it is built) and TorchRow (a Hugging
Face transformers + PyTorch loop of the same Llama). Each row also meters the CPU that other
processes use while it runs, since the benchmark usually shares a machine; wait_for_quiet lets the
entry point hold off until that load drops. jax, numpy and torch are imported inside the methods,
so importing this module starts no backend.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from presets import TORCH_REF
from variants import variants_applied


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy (user+nice+system+irq+softirq) since boot."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def _self_seconds() -> float:
    t = os.times()
    return t.user + t.system


class LoadMeter:
    """CPU this process used, and the share of all cores OTHER processes used, while running."""

    def __init__(self):
        self.other, self.wall, self.self_cpu = 0.0, 0.0, 0.0

    def start(self):
        self._b0, self._s0, self._w0 = _busy_seconds(), _self_seconds(), time.perf_counter()

    def stop(self):
        b1, s1, w1 = _busy_seconds(), _self_seconds(), time.perf_counter()
        self.wall += w1 - self._w0
        self.self_cpu += s1 - self._s0
        if b1 is not None and self._b0 is not None:
            self.other += max((b1 - self._b0) - (s1 - self._s0), 0.0)

    @property
    def other_share(self) -> float:
        return self.other / ((os.cpu_count() or 1) * self.wall) if self.wall else math.nan


def wait_for_quiet(threshold: float, timeout: float) -> float:
    """Waits (up to timeout s) until other processes use < threshold of the cores over 1 s."""
    share, deadline = math.nan, time.time() + timeout
    while True:
        b0, s0, w0 = _busy_seconds(), _self_seconds(), time.perf_counter()
        time.sleep(1.0)
        b1, s1, w1 = _busy_seconds(), _self_seconds(), time.perf_counter()
        if b0 is None or b1 is None:
            return math.nan
        share = max((b1 - b0) - (s1 - s0), 0.0) / ((os.cpu_count() or 1) * (w1 - w0))
        if share < threshold or time.time() > deadline:
            return share


class Row:
    """One timed training loop; subclasses provide setup() and step()."""

    impl = ""

    def __init__(self, preset: str, batch: int, seq_len: int, label: str = ""):
        self.preset, self.batch, self.seq_len, self.label = preset, batch, seq_len, label
        self.times: list[float] = []
        self.compile_s = math.nan
        self.params = 0
        self.flops_per_token = math.nan
        self.peak = math.nan  # FLOP/s of the devices this row runs on, in total
        self.load = LoadMeter()
        self.note = ""

    @property
    def name(self) -> str:
        return f"{self.impl} ({self.label})" if self.label else self.impl

    def run_steps(self, n: int):
        self.load.start()
        for _ in range(n):
            t0 = time.perf_counter()
            self.step()
            self.times.append(time.perf_counter() - t0)
        self.load.stop()

    def summary(self) -> dict:
        import numpy as np

        t = np.asarray(self.times)
        mean = float(t.mean())
        tps = self.batch * self.seq_len / mean
        return dict(
            impl=self.name,
            preset=self.preset,
            params=self.params,
            batch=self.batch,
            seq_len=self.seq_len,
            compile_s=self.compile_s,
            step_ms=1e3 * mean,
            median_ms=1e3 * float(np.median(t)),
            min_ms=1e3 * float(t.min()),
            std_ms=1e3 * float(t.std()),
            steps=len(t),
            tokens_per_s=tps,
            tokens_per_s_median=self.batch * self.seq_len / float(np.median(t)),
            mfu=tps * self.flops_per_token / self.peak,
            cpu_s_per_step=self.load.self_cpu / max(len(t), 1),
            other_load=self.load.other_share,
            loss=self.loss(),
        )


class OursRow(Row):
    impl = "llmos_jax"

    def __init__(self, preset, config, batch, seq_len, devices, variants=(), label=""):
        super().__init__(preset, batch, seq_len, label)
        self.config, self.devices, self.variants = config, devices, tuple(variants)

    def patched(self):
        return variants_applied(self.variants)

    def setup(self):
        with self.patched():
            self._setup()

    def _setup(self):
        import jax
        import numpy as np

        from llmos_jax import objectives, perf
        from llmos_jax.config import resolved_model
        from llmos_jax.config_checks import validate
        from llmos_jax.mesh import axis_rules, host_to_global, make_mesh
        from llmos_jax.models import build_model
        from llmos_jax.train.init import init_train_state
        from llmos_jax.train.optim import make_optimizer
        from llmos_jax.train.step import jit_train_step, make_train_step

        c = self.config
        validate(c, len(self.devices), 1)
        self.mesh = make_mesh(c, self.devices)
        self.rules = axis_rules(c)
        self.model = build_model(c, deterministic=False)  # as the train loop does
        self.tx, self.schedule = make_optimizer(c)
        self.state, self.shardings = init_train_state(
            build_model(c), self.tx, self.mesh, self.rules, self.seq_len, c.seed
        )
        self.loss_fn = objectives.get(c.objective.name)(c, self.model)
        step = make_train_step(self.loss_fn, self.tx, self.schedule, int(c.train.grad_accum_steps))
        self.step_fn = jit_train_step(step, self.shardings, self.mesh, self.rules)
        rng = np.random.default_rng(c.seed)
        b, t = self.batch, self.seq_len
        host = dict(
            tokens=rng.integers(0, c.model.vocab_size, (b, t), dtype=np.int32),
            segment_ids=np.ones((b, t), np.int32),
            positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
            loss_mask=np.ones((b, t), np.int32),
        )
        self.batch_arrays = host_to_global(host, self.mesh)
        self.params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
        model = resolved_model(c.model)
        self.expected_params = perf.total_params(model)
        self.flops_per_token = perf.train_flops_per_token(model, t)
        dev = self.devices[0]
        per_device, self.peak_source = perf.peak_flops(dev)
        if dev.platform == "cpu":
            # Virtual CPU devices share the same cores: the mesh has the whole machine's peak.
            self.peak = per_device * len(jax.local_devices(backend="cpu"))
        else:
            self.peak = per_device * len(self.devices)
        t0 = time.perf_counter()
        self.step()
        self.compile_s = time.perf_counter() - t0

    def step(self):
        import jax

        self.state, self.metrics = self.step_fn(self.state, self.batch_arrays)
        jax.block_until_ready((self.state, self.metrics))

    def loss(self) -> float:
        return float(self.metrics["train/loss"])


class TorchRow(Row):
    impl = "PyTorch + HF transformers"

    def __init__(self, preset, batch, seq_len, optim_cfg, threads: int, seed: int = 0):
        super().__init__(preset, batch, seq_len)
        self.optim_cfg, self.threads, self.seed = optim_cfg, threads, seed

    def setup(self):
        import numpy as np
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        cfg = LlamaConfig(**TORCH_REF, max_position_embeddings=max(self.seq_len, 256))
        self.model = LlamaForCausalLM(cfg).float().train()
        o = self.optim_cfg
        self.opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=float(o.lr),
            betas=(float(o.b1), float(o.b2)),
            eps=float(o.eps),
            weight_decay=float(o.weight_decay),
        )
        self.clip = float(o.clip_norm)
        rng = np.random.default_rng(self.seed)
        tokens = rng.integers(0, cfg.vocab_size, (self.batch, self.seq_len), dtype=np.int64)
        self.tokens = torch.from_numpy(tokens)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.note = (
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"attention {self.model.config._attn_implementation}"
        )
        t0 = time.perf_counter()
        self.step()
        self.compile_s = time.perf_counter() - t0  # eager: the first step, nothing to compile

    def step(self):
        import torch

        out = self.model(input_ids=self.tokens, labels=self.tokens)
        out.loss.backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._loss = out.loss.detach()

    def loss(self) -> float:
        return float(self._loss)
