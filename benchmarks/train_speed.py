"""Training speed: our jitted train step against `transformers`' LlamaForCausalLM training step
in PyTorch at the same shapes, batch and optimizer, and our achieved FLOP/s against a large
matmul measured in the same process (CPU) or the chip's datasheet peak (GPU/TPU).

    python benchmarks/train_speed.py                          # tiny preset, CPU, fp32, vs PyTorch
    python benchmarks/train_speed.py --experiment-shapes      # the experiments' tiny scale
    python benchmarks/train_speed.py --preset llama3.2-1b --dtype bfloat16 --batch 4 \
        --seq 2048 --no-torch                                 # one H100: MFU against 989 TFLOP/s

FLOPs per token = 6 N_matmul + 12 L d T (PaLM appendix B; attention counted non-causal).
Both frameworks run the same number of timed steps after warm-up, interleaved in rounds so
that a noisy neighbour slows both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax

from llm_jax.config import load_config
from llm_jax.parallel.mesh import make_mesh
from llm_jax.train.build import build_training
from llm_jax.train.flops import flops_per_token, measured_matmul_flops, peak_flops_per_device
from llm_jax.train.synthetic import synthetic_batch


def experiment_model() -> list[str]:
    """The model and fused-loss settings of experiments/scales.py's tiny scale (its batch and
    length are set by --experiment-shapes itself)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from scales import TINY

    return [o for o in TINY if (o.startswith("model.") and "max_seq_len" not in o)
            or o.startswith("train.loss_chunk=")]


class JaxRunner:
    def __init__(self, config):
        devices = jax.devices()[:1]
        self.training = build_training(config, make_mesh(config, devices))
        batch = synthetic_batch(config.train.batch_size, config.data.seq_len,
                                config.model.vocab_size)
        self.batch = self.training.put_batch(batch)
        self.state = self.training.state

    def steps(self, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            self.state, metrics = self.training.step(self.state, self.batch)
        float(metrics["loss"])
        return time.perf_counter() - start


class TorchRunner:
    """The same model in transformers, AdamW with the same hyper-parameters and clipping."""

    def __init__(self, config):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from llm_jax.convert.hf_config import hf_config_from_model

        self.torch = torch
        hf = hf_config_from_model(config.model)
        hf.pop("architectures")
        hf.pop("model_type")
        hf_config = LlamaConfig(**hf, attn_implementation="sdpa")
        self.model = LlamaForCausalLM(hf_config)
        if config.model.dtype == "bfloat16":
            self.model = self.model.to(torch.bfloat16)
        opt = config.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.lr,
                                           betas=(opt.b1, opt.b2), eps=opt.eps,
                                           weight_decay=opt.weight_decay)
        self.clip = opt.clip_norm
        batch = synthetic_batch(config.train.batch_size, config.data.seq_len,
                                config.model.vocab_size)
        self.inputs = torch.tensor(batch["inputs"], dtype=torch.long)
        self.labels = torch.tensor(batch["targets"], dtype=torch.long)

    def steps(self, count: int) -> float:
        torch = self.torch
        start = time.perf_counter()
        for _ in range(count):
            logits = self.model(self.inputs).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), self.labels.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - start

    def matmul_flops(self, size: int = 2048, repeats: int = 5) -> float:
        """FLOP/s of the same fp32 matmul as the JAX peak, in PyTorch: where the two
        libraries' matmuls differ, so do their steps."""
        a = self.torch.ones(size, size)
        a @ a
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        return 2 * size**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--attention", help="model.attention (default: the preset's)")
    parser.add_argument("--remat", help="model.remat (default: the preset's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--experiment-shapes", action="store_true",
                        help="the model and batch of experiments/scales.py's tiny scale "
                             "(d_model 128, 2 layers, batch 16 x 128)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.experiment_shapes:
        args.batch, args.seq = 16, 128
        args.overrides = [*experiment_model(), *args.overrides]

    config = load_config(args.preset, [
        f"train.batch_size={args.batch}", f"data.seq_len={args.seq}",
        f"model.max_seq_len={max(args.seq, 1)}" if args.preset == "tiny" else "seed=0",
        f"model.dtype={args.dtype}", "mesh.fsdp=1", "train.steps=100000",
        *([f"model.attention={args.attention}"] if args.attention else []),
        *([f"model.remat={args.remat}"] if args.remat else []), *args.overrides])
    tokens = args.batch * args.seq
    model_flops = flops_per_token(config.model, args.seq)
    device = jax.devices()[0]
    print(f"{args.preset}: {config.model.num_layers} layers, d_model {config.model.d_model}, "
          f"batch {args.batch} x {args.seq}, {args.dtype}, attention {config.model.attention}, "
          f"remat {config.model.remat}, scan_unroll {config.model.scan_unroll}, "
          f"loss_chunk {config.train.loss_chunk}; "
          f"{device.device_kind} ({device.platform}), "
          f"{os.cpu_count()} CPU cores; {model_flops / 1e6:.1f} MFLOPs/token")

    runners = {"llm_jax (JAX)": JaxRunner(config)}
    if not args.no_torch:
        import torch

        runners[f"transformers {__import__('transformers').__version__} (PyTorch "
                f"{torch.__version__}, {torch.get_num_threads()} threads)"] = TorchRunner(config)
    for runner in runners.values():
        runner.steps(2)  # compile / warm up
    seconds = {name: 0.0 for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            seconds[name] += runner.steps(args.steps)
    timed = args.steps * args.rounds

    if device.platform == "cpu":
        peak, source = measured_matmul_flops(), "fp32 2048x2048 matmul measured in this process"
    else:
        peak, source = peak_flops_per_device()
    print(f"peak for MFU: {peak / 1e12:.3f} TFLOP/s ({source})")
    for runner in runners.values():
        if device.platform == "cpu" and isinstance(runner, TorchRunner):
            print(f"the same matmul in PyTorch: {runner.matmul_flops() / 1e12:.3f} TFLOP/s")
    print()
    print("| implementation | step time (ms) | tokens/s | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|")
    rates = {}
    for name, total in seconds.items():
        rate = tokens * timed / total
        rates[name] = rate
        achieved = rate * model_flops
        print(f"| {name} | {1e3 * total / timed:.1f} | {rate:,.0f} | {achieved / 1e12:.4f} | "
              f"{achieved / peak:.1%} |")
    if len(rates) == 2:
        ours, theirs = rates.values()
        print(f"\nllm_jax / PyTorch tokens/s: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
