"""mmrlhf: distributed actor-learner RLHF for multimodal models on Ray."""

__version__ = "0.1.0"
