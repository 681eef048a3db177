"""Reward scoring: `RewardScorer` (plain class); the Ray Serve wrapper lives in `serve_app.py`."""

from mmrlhf.reward.scorer import RewardScorer

__all__ = ["RewardScorer"]
