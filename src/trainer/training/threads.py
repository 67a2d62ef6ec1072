"""How many CPU threads one job's torch may use, when a launcher runs several jobs side by side."""

from __future__ import annotations

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from trainer.utils.cpus import usable_cpus


def parallel_jobs(n_jobs: int, cores: int) -> int:
    """joblib's reading of `n_jobs`: -1 is every core, -2 all but one, and so on."""
    return max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)


def job_threads(cfg: DictConfig) -> int | None:
    """`threads` when set; else this job's share of the cores under a launcher that runs jobs side by side.

    torch takes one thread per core in every process: two joblib jobs on two cores would each spin two
    threads on the same cores. joblib (`hydra.launcher.n_jobs`): cores // parallel jobs; submitit
    (`hydra.launcher.cpus_per_task`, which SLURM also enforces): that many. None keeps torch's default.
    """
    if cfg.get("threads"):
        return int(cfg.threads)
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    cores = usable_cpus()
    if "joblib" in target:
        return max(1, cores // parallel_jobs(int(launcher.get("n_jobs") or -1), cores))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return min(cores, int(launcher.cpus_per_task))
    return None


def apply_cpu_threads(cfg: DictConfig) -> None:
    """Set torch's intra-op threads from `threads`, or this job's share of the cores under a parallel
    launcher (null otherwise keeps torch's default of one per core)."""
    threads = job_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
