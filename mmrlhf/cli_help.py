"""What each ``mmrlhf`` subcommand reads and writes, its config sections and how to recover from Ctrl-C.

One entry per command; ``--help`` adds the keys of its sections, generated from the config
dataclasses (:func:`mmrlhf.config.keys_help`), so nothing is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmrlhf.config import keys_help

_RERUN = "outputs are written atomically, so nothing half-written is left: re-run `{command}`"


@dataclass(frozen=True)
class CommandHelp:
    """``reads``/``writes``: run-directory paths; ``sections``: the config sections it uses."""

    command: str
    summary: str
    reads: str
    writes: str
    sections: tuple[str, ...]
    on_interrupt: str = _RERUN

    def epilog(self) -> str:
        """The text after argparse's usage: reads, writes, default config, config keys."""
        return "\n".join([
            f"reads:  {self.reads}",
            f"writes: {self.writes}",
            "config: the defaults below, then --config FILE (e.g. jobs/tiny.yaml), then key=value overrides",
            "", keys_help(["run_dir", "seed", *self.sections])])

    def interrupted(self) -> str:
        """The one line printed on Ctrl-C: what is kept and how to go on."""
        return f"mmrlhf {self.command}: interrupted; " + self.on_interrupt.format(command=f"mmrlhf {self.command}")


_ALL = ("data", "model", "sft", "feedback", "reward", "rl", "resources", "eval")
COMMANDS = {
    "data": CommandHelp("data", "build the data splits as Parquet in the run directory",
                        "data.path (a manifest, COCO captions or LLaVA JSON) or the built-in digits task",
                        "<run_dir>/data/{sft,feedback,val,test}.parquet, data/lineage.json", ("data",)),
    "sft": CommandHelp("sft", "supervised fine-tuning of the policy on the labeled records",
                       "<run_dir>/data/sft.parquet; model.policy", "<run_dir>/sft/policy, sft/lineage.json",
                       ("data", "model", "sft")),
    "feedback simulate": CommandHelp(
        "feedback simulate", "sample K responses per prompt; a simulated annotator picks (digits task only)",
        "<run_dir>/data/feedback.parquet, <run_dir>/sft/policy",
        "<run_dir>/feedback/pairs.parquet, feedback/lineage.json", ("data", "sft", "feedback")),
    "feedback import": CommandHelp(
        "feedback import", "preference pairs from a file of human judgements (.jsonl, .csv, .parquet)",
        "FILE; <run_dir>/data/feedback.parquet", "<run_dir>/feedback/pairs.parquet, feedback/lineage.json",
        ("data",)),
    "reward train": CommandHelp(
        "reward train", "Bradley–Terry training on the preference pairs",
        "<run_dir>/feedback/pairs.parquet, data/{feedback,sft}.parquet; model.reward",
        "<run_dir>/reward/model, reward/metrics.json, reward/lineage.json", ("data", "model", "reward")),
    "rl": CommandHelp(
        "rl", "the distributed RL stage alone (PPO or SAC on Ray + Serve + DeepSpeed)",
        "<run_dir>/sft/policy, reward/model, data/feedback.parquet",
        "<run_dir>/rl/policy, rl/checkpoints, rl/metrics.jsonl, rl/consumed.jsonl, rl/lineage.json, TensorBoard",
        ("data", "rl", "reward", "resources"),
        "the last complete checkpoint in <run_dir>/rl/checkpoints is kept: `{command} --resume` continues from it"),
    "agent train": CommandHelp(
        "agent train", "RLlib PPO or SAC on a gymnasium env whose reward is the Serve frame reward model, "
        "learned from simulated preferences over clips (jobs/agent_cartpole.yaml, jobs/agent_pendulum.yaml)",
        "the job YAML (an AgentConfig: run_dir, seed, reward, env, rl, preferences)",
        "<run_dir>/agent/{config.yaml,metrics.jsonl,curves.png,reward/v<k>/,clips/}", (),
        "nothing is resumed: re-run `{command}` (metrics.jsonl is appended to)"),
    "eval": CommandHelp(
        "eval", "held-out exact match, BLEU, ROUGE-L, CIDEr, reward and gold score, retrieval recall@K",
        "<run_dir>/data/<eval.split>.parquet, the --policy, reward/model when trained",
        "<run_dir>/eval/<policy>/{metrics.json,samples.parquet,samples.csv,review.html,images/,lineage.json}",
        ("data", "eval")),
    "retrieve": CommandHelp(
        "retrieve", "cross-modal retrieval with the reward model's joint embedding: a text's top-k images "
        "or an image's top-k texts in a data split, by cosine",
        "<run_dir>/data/<split>.parquet, reward/model (or the untrained model.reward), the --image file",
        "<run_dir>/retrieve/results.jsonl (or --out)", ("data", "model")),
    "train": CommandHelp(
        "train", "the whole recipe: data, sft, feedback, reward, rl, eval",
        "what each stage reads (see `mmrlhf <stage> --help`)",
        "every stage's outputs, <run_dir>/config.yaml, stages.jsonl, results.md", _ALL,
        "finished stages are kept: `{command} --resume` skips them and continues the RL stage from its "
        "last checkpoint"),
}
