"""One GPU: the RL loop on a random-initialised Qwen2.5-VL-architecture VLM of about 0.5B parameters.

For a machine with one GPU (an H200 by default), at most about 8 minutes: builds the model from
``Qwen2_5_VLConfig`` (a 24-layer, 896-wide decoder as Qwen2-0.5B's, an 8-block vision tower as
Qwen2.5-VL's, 1280 wide, and a tokenizer trained here: nothing is downloaded), a short run
directory on the digits task (``jobs/tiny.yaml`` data sizes, one SFT epoch, the learned reward
model), then ``--steps`` steps of the RL stage with one rollout worker, one learner rank and one
reward replica sharing the GPU (fractional ``num_gpus``). Prints, as medians over the steps after
the first:
- the time split: generate / score / experience / update / sync (seconds per step);
- generation tokens/s, beside the memory-bandwidth bound of decoding (every new token of a
  batch reads all weights once: ``batch × bandwidth / weight bytes``);
- the learner's model FLOPs utilisation: ``6 × trainable parameters × tokens`` per update
  (Kaplan et al. 2020) over the update's seconds, against ``--peak-tflops``;
- weight sync GB/s (the policy's bytes over the sync's seconds, gather included).
The defaults are NVIDIA's H200 SXM datasheet figures (4.8 TB/s HBM3e, 989 dense BF16 TFLOPS);
the learner trains in fp32 here, whose peak is 67 TFLOPS, so say which one you compare with.

    python benchmarks/gpu_step.py [--steps 8] [--json out.json]
    python benchmarks/gpu_step.py --size tiny --cpu --steps 3     # the same path on a CPU, in minutes
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common
from rundir import prepared_run

SIZES = {  # text decoder, vision tower, image processor pixels
    "0.5b": ({"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "max_position_embeddings": 4096,
              "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12]}},  # 64-wide heads
             {"depth": 8, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 896,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
              "fullatt_block_indexes": [3, 7]},
             {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 112 * 112,
              "max_pixels": 112 * 112}),
    "tiny": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 512,
              "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
             {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
              "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 32,
              "fullatt_block_indexes": [0]},
             {"patch_size": 8, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 64 * 64,
              "max_pixels": 64 * 64}),
}
PHASES = ("time/generate", "time/score", "time/experience", "time/update", "time/sync")


def build_policy(size: str, out_dir: Path, seed: int = 0):
    """A random Qwen2.5-VL of ``size`` saved with its processor; (folder, parameter count, processor)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from mmrlhf.models.presets import save_random_policy
    from mmrlhf.models.qwen_preset import QWEN2_VL_CHAT_TEMPLATE, qwen_token_ids, qwen_tokenizer

    text, vision, pixels = SIZES[size]
    tokenizer = qwen_tokenizer()
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=QWEN2_VL_CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(text_config={**text, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                                           "bos_token_id": tokenizer.bos_token_id,
                                           "eos_token_id": tokenizer.eos_token_id},
                              vision_config=vision, **qwen_token_ids(tokenizer))
    folder = save_random_policy(Qwen2_5_VLForConditionalGeneration, config, processor, out_dir, seed)
    from mmrlhf.models.policy import load_policy

    model, loaded = load_policy(str(folder))  # the processor as the policy code uses it
    return folder, sum(p.numel() for p in model.parameters()), loaded


def prompt_length(cfg, processor) -> int:
    """Tokens of the first feedback prompt, image tokens included, as ``processor`` encodes it."""
    from mmrlhf.models.policy import encode_prompts
    from mmrlhf.stages.data import decode_images, load_split

    table = load_split(cfg, "feedback").slice(0, 1)
    batch = encode_prompts(processor, decode_images(table, cfg.data.media), table.column("prompt").to_pylist())
    return int(batch.attention_mask.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--cpu", action="store_true", help="no GPU: the same path on the CPU (a smoke run)")
    parser.add_argument("--bandwidth-tbs", type=float, default=4.8, help="GPU memory bandwidth, TB/s")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak TFLOPS to compare with")
    parser.add_argument("--root", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    gpu = 0.0 if args.cpu else 1.0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        policy, n_params, processor = build_policy(args.size, Path(tmp) / "policy")
        cfg = prepared_run(None, Path(tmp) / "run", overrides=[
            f"model.policy={policy}", "sft.epochs=1", "sft.vision_warmup_epochs=0",
            'reward.sources=[{name: model, weight: 1.0}]',
            f"rl.steps={args.steps}", f"rl.prompts_per_step={args.prompts}", f"rl.samples_per_prompt={args.samples}",
            f"rl.max_new_tokens={args.max_new_tokens}", "rl.algorithm=ppo", "rl.advantage_estimator=grpo",
            "rl.ppo_epochs=1", f"rl.minibatch_size={args.prompts * args.samples}", "rl.freeze_vision_tower=true",
            "rl.rollout_workers=1", "rl.learner_ranks=1", "rl.checkpoint_every=0",
            f"resources.rollout_gpus={0.4 * gpu}", f"resources.learner_gpus={0.4 * gpu}",
            f"resources.reward_gpus={0.2 * gpu}", "resources.rollout_cpus=1", "resources.learner_cpus=1",
            "resources.reward_cpus=1"])
        prepared = time.perf_counter() - started
        from mmrlhf.stages.rl import run_rl

        prompt_tokens = prompt_length(cfg, processor)
        history = run_rl(cfg, force=True)
    steps = history[1:] or history
    med = {key: statistics.median(m[key] for m in steps) for key in (*PHASES, "time/step_seconds")}
    batch = args.prompts * args.samples
    new_tokens = statistics.median(m["rollout/response_tokens"] for m in steps) * batch
    weight_bytes = 4 * n_params  # fp32
    tokens_s = new_tokens / med["time/generate"]
    bound = batch * args.bandwidth_tbs * 1e12 / weight_bytes
    # the update's teacher-forced pass runs each prompt once (prefix sharing) and every response
    flops = 6 * n_params * (args.prompts * prompt_tokens + new_tokens)
    rows = [[f"Qwen2.5-VL random, {n_params / 1e6:.1f}M params", batch, med["time/step_seconds"],
             *(med[p] for p in PHASES), tokens_s, tokens_s / bound]]
    notes = [f"{args.steps} steps of critic-free PPO, {args.prompts} prompts x {args.samples} samples, up to "
             f"{args.max_new_tokens} new tokens, learned reward on Serve; median over the steps after the first. "
             f"Run directory built in {prepared:.0f} s.",
             f"decoding bound: batch x {args.bandwidth_tbs} TB/s / {weight_bytes / 1e9:.2f} GB of fp32 weights "
             f"per token step; ratio = measured / bound",
             f"weight sync: {weight_bytes / 1e9 / med['time/sync']:.2f} GB/s ({weight_bytes / 1e9:.2f} GB in "
             f"{med['time/sync']:.3f} s, gather + publish + load)",
             f"learner: {flops / med['time/update'] / 1e12:.2f} TFLOPS, MFU {flops / med['time/update'] / 1e12 / args.peak_tflops:.1%} "
             f"of {args.peak_tflops} TFLOPS (6 x parameters x ({args.prompts} prompts x {prompt_tokens} prompt tokens + "
             f"{new_tokens:.0f} response tokens) per update; the vision tower is frozen, so an upper bound)"]
    common.report(f"The RL loop on one {'CPU' if args.cpu else 'GPU'}: a random Qwen2.5-VL ({args.size})",
                  ["model", "batch", "step s", "generate s", "score s", "experience s", "update s", "sync s",
                   "generated tokens/s", "x decoding bound"], rows, notes, args.json)


if __name__ == "__main__":
    main()
