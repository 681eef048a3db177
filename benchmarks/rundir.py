"""A run directory with an SFT policy and a reward model for the benchmarks, and a local Ray cluster.

``prepared_run(run_dir, dest, config)`` copies ``run_dir`` (without its RL, eval and TensorBoard
outputs, so the original is never written) to ``dest``; without ``run_dir`` it builds one in
``dest`` with the real stages (``mmrlhf data``, ``sft``, ``feedback``, ``reward train``) from
``config`` (saved as ``dest/config.yaml``) (default ``jobs/tiny.yaml``: a minute on a CPU), so that a fresh clone can run every
script. ``local_ray(num_cpus)`` starts a local cluster with token auth on and a fresh token, as
``tests/conftest.py`` does, and stops it afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

from mmrlhf.config import RunConfig, load_config, save_config

TINY = Path(__file__).resolve().parents[1] / "jobs" / "tiny.yaml"


def prepared_run(run_dir: str | None, dest: Path, config: str | None = None,
                 overrides: list[str] | None = None) -> RunConfig:
    """The config of a fresh run directory at ``dest`` (emptied first) with an SFT policy and a reward model.

    ``run_dir``: copied (its own ``config.yaml`` is used unless ``config`` is given); None: built
    here with ``config`` (default jobs/tiny.yaml). ``overrides``: ``key=value`` applied on top.
    Raises FileNotFoundError when ``run_dir`` has no ``config.yaml`` and no ``config`` is given.
    """
    dest = Path(dest).resolve()
    shutil.rmtree(dest, ignore_errors=True)
    extra = [*(overrides or []), f"run_dir={dest}"]
    if run_dir is not None:
        source = config or Path(run_dir) / "config.yaml"
        if not Path(source).exists():
            raise FileNotFoundError(f"{run_dir}: no config.yaml; pass --config")
        shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("rl", "eval", "tensorboard"))
        return load_config(source, extra)
    from mmrlhf.stages.data import prepare_data
    from mmrlhf.stages.feedback import run_feedback_simulation
    from mmrlhf.stages.reward_train import run_reward_training
    from mmrlhf.stages.sft import run_sft

    cfg = load_config(config or TINY, extra)
    dest.mkdir(parents=True)
    save_config(cfg, dest / "config.yaml")
    prepare_data(cfg)
    run_sft(cfg)
    run_feedback_simulation(cfg)
    run_reward_training(cfg)
    return cfg


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A local Ray cluster of ``num_cpus`` logical CPUs, no dashboard, token auth on; stopped on exit."""
    from mmrlhf.cluster import fresh_auth_token_env, init_ray, shutdown_ray

    with fresh_auth_token_env():
        init_ray(num_cpus=num_cpus, include_dashboard=False)
        try:
            yield
        finally:
            shutdown_ray()
