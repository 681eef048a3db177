"""RLHF for control agents: RLlib PPO/SAC on gymnasium environments whose reward is a frame
reward model on Ray Serve, trained from preferences over clips (Christiano et al. 2017)."""
