"""P3: NP-SemiSeg step time inside a 1-worker Ray Train ``TorchTrainer`` vs the plain loop, and 2-worker scaling.

    .venv/bin/python benchmarks/ray_train_overhead.py                  # configs/demo.yaml model, 1 thread a side
    .venv/bin/python benchmarks/ray_train_overhead.py --smoke-test     # seconds of steps (CI)

Same batch, same model, same torch thread count on both sides (Ray sets OMP_NUM_THREADS=1 in its workers; the
driver calls torch.set_num_threads to match). One TorchTrainer stays up for all repeats and the driver
interleaves: K plain steps in this process, then K steps in the Ray worker (signalled through files), repeated R
times; ratios are per round, then the median. Start-up (20-40 s here) is not part of the step time.

Scaling (phase 2): a 2-worker TorchTrainer (DDP over gloo, one thread each, banks all-gathered) against, in the
same interleaved rounds, the plain loop with 1 thread on the per-worker batch and with 2 threads on the global
batch (what one would do on this 2-core machine without Ray). Reported as images/s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from npsemiseg.config import Config, apply_overrides, config_from_dict, load_config
from npsemiseg.engine.context import RunContext

NUM_CLASSES = 21


def make_batches(cfg: Config, scale: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A fixed labelled + unlabelled batch (``scale`` x the per-worker batch sizes), deterministic from seed."""
    g = torch.Generator().manual_seed(seed)
    s, n_l, n_u = cfg.data.crop_size, cfg.data.batch_size_l * scale, cfg.data.batch_size_u * scale
    mask = torch.randint(0, NUM_CLASSES, (n_l, s, s), generator=g)
    mask[:, :, : s // 10] = 255
    box = torch.zeros(n_u, s, s, dtype=torch.int64)
    box[:, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
    bl = {"image": torch.randn(n_l, 3, s, s, generator=g), "mask": mask}
    bu = {"image_w": torch.randn(n_u, 3, s, s, generator=g), "image_s": torch.randn(n_u, 3, s, s, generator=g),
          "ignore": torch.zeros(n_u, s, s, dtype=torch.int64), "box": box}
    return bl, bu


def time_steps(state: Any, bl: dict, bu: dict, steps: int) -> tuple[float, float]:
    """Median (wall seconds, this thread's CPU seconds) per train_step over ``steps`` steps.

    With one torch thread the step's compute runs in the calling thread, so its CPU time measures the work done
    independently of how busy the machine is; wall time includes waiting for a core.
    """
    from npsemiseg.engine.step import train_step

    wall, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.thread_time()
        train_step(state, bl, bu)
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _build(cfg: Config, ctx: RunContext) -> Any:
    from npsemiseg.engine.checkpoint import seed_everything
    from npsemiseg.engine.step import build_state

    seed_everything(cfg.seed)
    return build_state(cfg, ctx, num_classes=NUM_CLASSES)


def _wait(path: Path, timeout: float = 900.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.01)


def ray_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Runs in each Ray Train worker: warm up, then time K steps whenever the driver drops ``go_<i>``."""
    import ray.train

    from npsemiseg.distributed.context import RayContext

    torch.set_num_threads(config["threads"])
    cfg = config_from_dict(config["cfg"])
    ctx = RayContext(cfg)
    state = _build(cfg, ctx)
    bl, bu = make_batches(cfg, 1, seed=1 + ctx.rank)
    time_steps(state, bl, bu, config["warmup"])
    sync = Path(config["sync_dir"])
    spaced = []
    for i in range(config["rounds"]):
        _wait(sync / f"go_{i}")
        t, c = time_steps(state, bl, bu, config["steps"])
        r = time.perf_counter()
        ray.train.report({"round": i})  # one metrics-only report after real work (a barrier over all ranks)
        spaced.append(time.perf_counter() - r)
        if ctx.rank == 0:  # temp file + rename: the driver never reads a half-written file
            tmp = sync / f".done_{i}.tmp"
            tmp.write_text(json.dumps({"step_s": t, "cpu_s": c, "threads": torch.get_num_threads()}))
            tmp.rename(sync / f"done_{i}.json")
    burst = []
    for k in range(config["reports"]):  # back to back: throttled by the controller draining its queue
        r = time.perf_counter()
        ray.train.report({"burst": k})
        burst.append(time.perf_counter() - r)
    return {"report_s": statistics.median(spaced), "burst_report_s": statistics.median(burst) if burst else 0.0}


def interleaved(cfg: Config, workers: int, args: argparse.Namespace, plain_sides: dict[str, tuple[int, int]]
                ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Start a ``workers``-rank TorchTrainer and alternate plain sides with Ray rounds; seconds per step."""
    from npsemiseg.distributed.trainer import build_trainer

    sync = Path(tempfile.mkdtemp(prefix="npss_bench_"))
    trainer = build_trainer(cfg, num_workers=workers, use_gpu=False, storage_path=str(sync / "store"),
                            name=f"bench{workers}", resources_per_worker={"CPU": args.threads}, train_fn=ray_worker)
    trainer.train_loop_config.update(threads=args.threads, sync_dir=str(sync), rounds=args.rounds,
                                     steps=args.steps, warmup=args.warmup, reports=args.reports)
    out: dict[str, Any] = {}
    fit = threading.Thread(target=lambda: out.update(result=trainer.fit()), daemon=True)
    fit.start()
    plain = {}
    for name, (threads, scale) in plain_sides.items():
        torch.set_num_threads(threads)
        st = _build(cfg, RunContext("cpu"))
        bl, bu = make_batches(cfg, scale, seed=1)
        time_steps(st, bl, bu, args.warmup)
        plain[name] = (st, bl, bu, threads)
    times: dict[str, list[float]] = {name: [] for name in plain} | {"ray": []}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    for i in range(args.rounds):
        for name, (st, bl, bu, threads) in plain.items():
            torch.set_num_threads(threads)
            t, c = time_steps(st, bl, bu, args.steps)
            times[name].append(t)
            cpu[name].append(c)
        torch.set_num_threads(args.threads)
        (sync / f"go_{i}").touch()
        _wait(sync / f"done_{i}.json")
        done = json.loads((sync / f"done_{i}.json").read_text())
        times["ray"].append(done["step_s"])
        cpu["ray"].append(done["cpu_s"])
        out["worker_threads"] = done["threads"]
    out["cpu"] = cpu
    fit.join()
    result = out["result"]
    out.update(result.return_value or {})
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml", help="recipe whose model/batch sizes are used")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side / per worker")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round (median taken)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reports", type=int, default=5, help="back-to-back metrics-only reports to time")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--smoke-test", action="store_true")
    args = ap.parse_args()
    if args.smoke_test:
        args.rounds, args.steps, args.warmup, args.reports = 2, 2, 1, 3
    cfg = apply_overrides(load_config(args.config), {"device": "cpu", "data.num_workers": 0})
    import ray

    ray.init(num_cpus=max(2, 2 * args.threads), include_dashboard=True, dashboard_host="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    b = cfg.data.batch_size_l + cfg.data.batch_size_u
    print(f"model {cfg.model.backbone} width {cfg.model.width}, head {cfg.model.head}, crop {cfg.data.crop_size}, "
          f"batch {cfg.data.batch_size_l}+{cfg.data.batch_size_u} per worker, {args.threads} thread(s) per side, "
          f"{args.rounds} rounds x {args.steps} steps")

    times, info = interleaved(cfg, 1, args, {"plain": (args.threads, 1)})
    ratios = [r / p for r, p in zip(times["ray"], times["plain"])]
    plain_s, ray_s = statistics.median(times["plain"]), statistics.median(times["ray"])
    print(f"[1 worker] plain loop {plain_s * 1e3:.1f} ms/step | TorchTrainer(1 worker, {info['worker_threads']} "
          f"thread) {ray_s * 1e3:.1f} ms/step | ratio median {statistics.median(ratios):.3f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target <= 1.05)")
    cpu_ratios = [r / p for r, p in zip(info["cpu"]["ray"], info["cpu"]["plain"])]
    print(f"[1 worker] CPU time of the stepping thread: plain {statistics.median(info['cpu']['plain']) * 1e3:.1f} "
          f"ms | Ray worker {statistics.median(info['cpu']['ray']) * 1e3:.1f} ms | ratio median "
          f"{statistics.median(cpu_ratios):.3f} (independent of machine load)")
    print(f"[1 worker] metrics-only ray.train.report: {info['report_s'] * 1e3:.1f} ms after a round of steps, "
          f"{info['burst_report_s'] * 1e3:.0f} ms each when back to back")
    summary = {"plain_ms": plain_s * 1e3, "ray1_ms": ray_s * 1e3, "ratio": statistics.median(ratios),
               "cpu_ratio": statistics.median(cpu_ratios), "report_ms": info["report_s"] * 1e3,
               "burst_report_ms": info["burst_report_s"] * 1e3}

    if not args.skip_scaling:
        sides = {"plain_1t": (args.threads, 1), "plain_2t_global": (2 * args.threads, 2)}
        times, info = interleaved(cfg, 2, args, sides)
        ips = {k: statistics.median([(b * (2 if k != "plain_1t" else 1)) / t for t in v]) for k, v in times.items()}
        print(f"[scaling] images/s: plain 1 thread {ips['plain_1t']:.1f} | plain {2 * args.threads} threads on the "
              f"global batch {ips['plain_2t_global']:.1f} | TorchTrainer 2 workers x {args.threads} thread "
              f"{ips['ray']:.1f} -> {ips['ray'] / ips['plain_1t']:.2f}x one worker, "
              f"{ips['ray'] / ips['plain_2t_global']:.2f}x the 2-thread plain loop")
        print(f"[scaling] metrics-only ray.train.report with 2 ranks: {info['report_s'] * 1e3:.1f} ms after a round")
        summary.update({f"ips_{k}": v for k, v in ips.items()})
    print("json: " + json.dumps({k: round(v, 3) for k, v in summary.items()}))
    ray.shutdown()


if __name__ == "__main__":
    main()
