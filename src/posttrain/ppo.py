"""PPO for language models (Ouyang et al. 2022; the "N implementation details of RLHF" of Huang et al. 2024), lean,
on accelerate. Written here because TRL 1.16 no longer ships a PPOTrainer (the last one was TRL 1.12's
`trl.experimental.ppo`); generation, model loading and checkpointing come from transformers and accelerate.

One step:
1. **rollout**: a batch of prompts (chat template, left padding), one sampled answer each from the policy;
2. **score**: the reward function (a learned reward model, `preferences.RewardScorer`, or any callable) on each
   answer, minus `missing_eos_penalty` when the answer never ended; the gold reward (the factuality grade against
   the world) is computed beside it and logged, never trained on;
3. **per-token rewards**: −kl_coef · (log π − log π_ref) at every answer token (a KL penalty to the frozen reference
   policy), plus the score at the answer's last token;
4. **advantages**: GAE (γ, λ) over the value model's per-token values; advantages whitened;
5. **update**: `num_ppo_epochs` passes over mini-batches, clipped policy loss + vf_coef × clipped value loss.

The math (steps 3-5) is small functions below, unit-tested against hand-computed values. The value model is a
sequence classifier (by default the reward model, as in InstructGPT) read at every token: its backbone's hidden
states through its `score` head.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from trl.distributed import DistributedBackend

from posttrain import checkpoint

# ---------------------------------------------------------------------------------------------------------------
# The math (tensors are [batch, answer tokens]; `mask` is 1 on answer tokens, 0 on padding after the end)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the masked entries (unbiased variance); shift_mean=False keeps the mean."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_penalized_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: −kl_coef · (log π − log π_ref) on every answer token, plus the sequence score on its last
    answer token. Returns (rewards, per-token KL estimate)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, right to left: δ_t = r_t + γ V_{t+1} − V_t, A_t = δ_t + γλ A_{t+1},
    with V and A zero after the answer's end. Returns (advantages, returns = A + V)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean over answer tokens of max(−A·r, −A·clip(r, 1−ε, 1+ε)), r = π/π_old.
    Returns (loss, share of tokens where the clipped term was the larger)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """½ · mean over answer tokens of max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


# ---------------------------------------------------------------------------------------------------------------
# Model passes


def answer_mask(answer_ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 on answer tokens up to and including the first stop token, 0 after (generation pads finished rows)."""
    is_stop = torch.isin(answer_ids, torch.tensor(stop_ids, device=answer_ids.device))
    after_stop = (is_stop.cumsum(1) - is_stop.long()) > 0
    return (~after_stop).float()


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only


def answer_logprobs(model, input_ids, attention_mask, prompt_len: int, temperature: float) -> torch.Tensor:
    """log π(answer token | everything before), for the tokens after `prompt_len`, at the sampling temperature."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)).logits
    logits = logits[:, prompt_len - 1 : -1].float() / temperature
    return torch.gather(F.log_softmax(logits, -1), 2, input_ids[:, prompt_len:, None]).squeeze(-1)


def token_values(value_model, input_ids, attention_mask, prompt_len: int) -> torch.Tensor:
    """The value head at every answer position (the state before each answer token is chosen)."""
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=_positions(attention_mask)).last_hidden_state  # fmt: skip
    return value_model.score(hidden[:, prompt_len - 1 : -1]).squeeze(-1).float()


class PolicyAndValue(torch.nn.Module):
    """One module for accelerate.prepare (one DDP wrapper, one optimizer over both), as TRL's PPO did. Its forward
    gives both passes, so DDP sees them and all-reduces both models' gradients."""

    def __init__(self, policy, value_model):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids, attention_mask, prompt_len: int, temperature: float):
        return (answer_logprobs(self.policy, input_ids, attention_mask, prompt_len, temperature),
                token_values(self.value_model, input_ids, attention_mask, prompt_len))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# The trainer


class PPOTrainer:
    """`PPOTrainer(cfg, policy, ref_policy, value_model, tokenizer, prompts, reward_fn, gold_fn).train()`.

    `prompts`: list of chat message lists; `reward_fn(prompts, answers, rows) -> list[float]` is what PPO optimises;
    `gold_fn(prompts, answers, rows) -> list[float]` is only logged (None: not logged). `rows[i]` is the i-th
    prompt's record (its `answers` to grade against). Checkpoints (accelerate state) every `save_every` steps under
    `cfg.checkpoint_dir`; `resume()` continues from the newest, with the same prompts as an uninterrupted run.
    """

    def __init__(self, cfg, accelerator, policy, ref_policy, value_model, tokenizer, rows, reward_fn, gold_fn=None):
        self.cfg, self.accelerator, self.tokenizer = cfg, accelerator, tokenizer
        self.rows, self.reward_fn, self.gold_fn = rows, reward_fn, gold_fn
        eos = policy.generation_config.eos_token_id
        self.stop_ids = [eos] if isinstance(eos, int) else list(eos or [])
        model = PolicyAndValue(policy, value_model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.ref_policy = ref_policy.to(accelerator.device).eval()
        for p in self.ref_policy.parameters():
            p.requires_grad_(False)
        self.step, self.history = 0, []

    # -- pieces ------------------------------------------------------------------------------------------------
    def _batch_rows(self, step: int) -> list[dict]:
        """This process's prompts for `step`: a seeded draw, so a resumed run sees the prompts an unbroken one would."""
        rng = random.Random(f"{self.cfg.seed}-{step}")
        n = self.cfg.batch_size * self.accelerator.num_processes
        batch = rng.sample(self.rows, min(n, len(self.rows)))
        return batch[self.accelerator.process_index :: self.accelerator.num_processes]

    def _unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    @torch.no_grad()
    def rollout(self, rows: list[dict]) -> dict:
        with self.accelerator.autocast():  # generation and the reference's scores outside the prepared forward
            return self._rollout(rows)

    def _rollout(self, rows: list[dict]) -> dict:
        tok = self.tokenizer
        texts = [tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
        side, tok.padding_side = tok.padding_side, "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.accelerator.device)
        tok.padding_side = side
        # ZeRO-3 shards the weights: gathered for the rollout, so each process samples its answers on its own
        # (however many tokens each needs) instead of a collective per forward (TRL's own rollouts do the same)
        with DistributedBackend(self.accelerator).gather_params(list(self.model.parameters())):
            policy = self._unwrapped().policy
            policy.eval()
            out = policy.generate(
                **enc, do_sample=True, temperature=self.cfg.temperature, top_k=0, top_p=1.0,
                max_new_tokens=self.cfg.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=self.stop_ids,
            )  # fmt: skip
            policy.train()
        prompt_len = enc["input_ids"].shape[1]
        answer_ids = out[:, prompt_len:]
        mask = answer_mask(answer_ids, self.stop_ids)
        attention = torch.cat([enc["attention_mask"], mask.long()], 1)
        ended = torch.isin(answer_ids, torch.tensor(self.stop_ids, device=answer_ids.device)).any(1)
        answers = tok.batch_decode(answer_ids * mask.long() + tok.pad_token_id * (1 - mask.long()),
                                   skip_special_tokens=True)  # fmt: skip
        prompts = [r["prompt"] for r in rows]
        scores = torch.tensor(self.reward_fn(prompts, answers, rows), dtype=torch.float32, device=out.device)
        scores = scores - self.cfg.missing_eos_penalty * (~ended).float()
        gold = self.gold_fn(prompts, answers, rows) if self.gold_fn is not None else None
        logprobs, values = self._unwrapped()(out, attention, prompt_len, self.cfg.temperature)
        ref_logprobs = answer_logprobs(self.ref_policy, out, attention, prompt_len, self.cfg.temperature)
        rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, self.cfg.kl_coef)
        advantages, returns = gae(rewards, values, mask, self.cfg.gamma, self.cfg.lam)
        advantages = masked_whiten(advantages, mask)
        return {"ids": out, "attention": attention, "mask": mask, "prompt_len": prompt_len, "logprobs": logprobs,
                "values": values, "advantages": advantages, "returns": returns, "scores": scores, "kl": kl,
                "gold": gold, "answers": answers, "ended": ended}  # fmt: skip

    def update(self, r: dict) -> dict:
        cfg, n = self.cfg, r["ids"].shape[0]
        stats = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": []}
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + self.step))
            for start in range(0, n, cfg.mini_batch_size):
                idx = order[start : start + cfg.mini_batch_size].to(r["ids"].device)
                m = r["mask"][idx]
                logprobs, values = self.model(r["ids"][idx], r["attention"][idx], r["prompt_len"], cfg.temperature)
                pg, clipfrac = policy_loss(logprobs, r["logprobs"][idx], r["advantages"][idx], m, cfg.cliprange)
                vf = value_loss(values, r["values"][idx], r["returns"][idx], m, cfg.cliprange_value)
                self.accelerator.backward(pg + cfg.vf_coef * vf)
                if cfg.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
                stats["policy_loss"].append(pg.item())
                stats["value_loss"].append(vf.item())
                stats["clipfrac"].append(clipfrac.item())
                stats["approx_kl"].append(0.5 * masked_mean((logprobs.detach() - r["logprobs"][idx]) ** 2, m).item())
        return {k: sum(v) / len(v) for k, v in stats.items()}

    # -- the loop ----------------------------------------------------------------------------------------------
    def resume(self, resume: str | None) -> None:
        checkpoint.fresh_start(self.cfg.checkpoint_dir, resume, self.cfg.overwrite_checkpoints, self.accelerator)
        path = checkpoint.resolve(resume, self.cfg.checkpoint_dir)
        if path is not None:
            state = checkpoint.load(self.accelerator, path)
            self.step, self.history = state["step"], state["history"]
            self.accelerator.print(f"ppo: resumed from {path} at step {self.step}")

    def train(self) -> list[dict]:
        cfg, acc = self.cfg, self.accelerator
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="ppo", disable=not acc.is_main_process)
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            r = self.rollout(self._batch_rows(self.step))
            stats = self.update(r)
            self.step += 1
            local = {
                "score": r["scores"].mean().item(),
                "gold": sum(r["gold"]) / len(r["gold"]) if r["gold"] is not None else None,
                "kl": r["kl"].sum(1).mean().item(),
                "answer_tokens": r["mask"].sum(1).mean().item(),
                "ended": r["ended"].float().mean().item(),
            }
            merged = {k: _mean_over_processes(acc, v) for k, v in local.items()}
            record = {"step": self.step, **merged, **stats,
                      "answers_per_s": len(r["answers"]) * acc.num_processes / (time.perf_counter() - t0)}  # fmt: skip
            self.history.append(record)
            bar.update(1)
            bar.set_postfix(score=f"{record['score']:.2f}", gold=_fmt(record["gold"]), kl=f"{record['kl']:.3f}",
                            ans_s=f"{record['answers_per_s']:.0f}")  # fmt: skip
            if cfg.log_every and self.step % cfg.log_every == 0 and acc.is_main_process:
                bar.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                checkpoint.save(acc, cfg.checkpoint_dir, self.step, {"step": self.step, "history": self.history},
                                cfg.keep_last)  # fmt: skip
        bar.close()
        return self.history


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mean_over_processes(accelerator, value):
    if value is None or accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="mean").item()


def gold_reward_fn(t: float) -> Callable:
    """The factuality grade of each answer against its row's accepted answers, as a reward (logged as gold)."""
    from posttrain.rewards import factuality

    def gold(prompts, answers, rows):
        return factuality(prompts, answers, answers=[r["answers"] for r in rows],
                          candidates=[r.get("candidates") for r in rows], t=t)  # fmt: skip

    return gold


def write_history(history: list[dict], path: Path) -> None:
    from posttrain.lineage import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))


# ---------------------------------------------------------------------------------------------------------------
# What recipes/ppo.py puts together


def make_accelerator(mixed_precision: str = "auto"):
    """bf16 where the device computes it natively (`runtime.resolve_precision`): the policy/value forward passes
    run under accelerate's autocast, rollouts under the same context; weights and optimizer state stay fp32."""
    from accelerate import Accelerator

    from posttrain.runtime import accelerator_kwargs, resolve_precision

    return Accelerator(**accelerator_kwargs(), mixed_precision=resolve_precision(mixed_precision))


def load_policy(path: str):
    """(causal LM in fp32, chat-ready tokenizer); a bad directory is one clear error (`generation.load_causal_lm`)."""
    from posttrain.chat_template import prepare_chat
    from posttrain.generation import load_causal_lm

    model, tokenizer = load_causal_lm(path, torch.float32)
    prepare_chat(model, tokenizer, assistant_only_loss=False)
    return model, tokenizer


def export(trainer: PPOTrainer, cfg, policy_path: str, reward_path: str, prompts: dict) -> Path:
    """`<run>/<stage>/`: the policy (safetensors, tokenizer, generation config), lineage, metrics and the per-step
    history (`history.jsonl`: proxy score, gold reward, KL, losses), written atomically."""
    from posttrain.configs import to_dict
    from posttrain.lineage import write_lineage
    from posttrain.stages import model_hash

    acc = trainer.accelerator
    policy = trainer._unwrapped().policy
    last = trainer.history[-1] if trainer.history else {}
    summary = {"steps": trainer.step, "final_score": last.get("score"), "final_gold": last.get("gold"),
               "final_kl": last.get("kl")}  # fmt: skip

    def extra(tmp: Path):
        (tmp / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_history(trainer.history, tmp / "history.jsonl")
        parents = {"model": {"path": policy_path, "hash": model_hash(policy_path)},
                   "reward_model": {"path": reward_path, "hash": model_hash(reward_path)}}  # fmt: skip
        write_lineage(tmp, cfg.stage, to_dict(cfg), parents=parents, data_mix=prompts, summary=summary)

    return checkpoint.export_hf(acc, policy, trainer.tokenizer, cfg.export_dir, policy.generation_config, extra)
