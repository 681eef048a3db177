"""SoftActorCritic: the policy's full next-token distribution, zero-start twin Q heads, frozen targets."""

import numpy as np
import torch

from mmrlhf.algorithms.sac import polyak_update, sac_loss
from mmrlhf.models import SoftActorCritic, build_policy_preset, encode_prompts, encode_responses, load_policy
from mmrlhf.models.policy import response_logprobs


def test_soft_actor_critic_gives_policy_distribution_and_trains_only_online_heads(tmp_path):
    model, processor = load_policy(build_policy_preset("tiny", tmp_path / "tiny"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(2)]
    batch = encode_prompts(processor, images, ["What number is written?", "What number is written in the image?"])
    response_ids, response_mask = encode_responses(processor, ["four one seven", "two"], max_len=8)
    sac = SoftActorCritic(model)
    logp, q1, q2, target_q1, target_q2 = sac(batch.input_ids, batch.attention_mask, batch.vision,
                                             response_ids, response_mask, temperature=0.8)
    vocab = model.get_output_embeddings().weight.shape[0]
    assert logp.shape == q1.shape == target_q2.shape == (*response_ids.shape, vocab)
    taken, _, _ = response_logprobs(model, batch, response_ids, response_mask, temperature=0.8)
    torch.testing.assert_close(logp.gather(-1, response_ids[..., None]).squeeze(-1), taken)
    assert all(torch.equal(q, torch.zeros_like(q)) for q in (q1, q2, target_q1, target_q2))

    rewards = torch.zeros(response_ids.shape)
    rewards[:, 0] = 1.0
    loss, _ = sac_loss(logp, q1, q2, target_q1, target_q2, response_ids, rewards, response_mask.float(), alpha=0.1,
                       ref_logp=logp.detach())
    loss.backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in sac.q_heads)
    assert all(p.grad is None and not p.requires_grad for p in sac.target_q_heads.parameters())
    before = [p.clone() for p in sac.target_q_heads.parameters()]
    with torch.no_grad():
        for p in sac.q_heads.parameters():
            p.add_(1.0)
    polyak_update(sac.target_q_heads.parameters(), sac.q_heads.parameters(), 0.5)
    for old, new, online in zip(before, sac.target_q_heads.parameters(), sac.q_heads.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * online)
