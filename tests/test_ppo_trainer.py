"""The PPO trainer on tiny models: each option changes what it should, and failures stop cleanly."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from ppo_helpers import build, config
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_trl.ppo.trainer import TrainingDivergedError
from rlhf_trl.tiny.task import make_records


def snapshot(module):
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def changed(before, module):
    return any(not torch.equal(before[name], parameter) for name, parameter in module.named_parameters())


def test_ppo_steps_update_actor_and_critic_and_log_metrics(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir)
    wrapper = trainer.accelerator.unwrap_model(trainer.model)
    actor_before, critic_before = snapshot(wrapper.policy), snapshot(wrapper.critic)
    reference_before = snapshot(trainer.ref_model)
    trainer.train()
    assert changed(actor_before, wrapper.policy)
    assert changed(critic_before, wrapper.critic)
    assert not changed(reference_before, trainer.ref_model), "the reference model must stay frozen"
    lines = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for key in (
        "objective/score",
        "objective/gold_score",
        "objective/kl",
        "objective/entropy",
        "policy/approx_kl",
        "policy/clip_fraction",
        "value/loss",
        "value/clip_fraction",
        "response/length",
        "time/generation_s",
        "time/scoring_s",
        "time/training_s",
    ):
        assert key in lines[-1], key
    samples = (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()
    assert json.loads(samples[0])["gold_score"] is not None
    trainer.save_model()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ppo")
    assert torch.equal(reloaded.get_input_embeddings().weight, wrapper.policy.get_input_embeddings().weight)
    assert (tmp_path / "ppo" / "critic" / "config.json").exists()


def test_reward_functions_alone_drive_training(tmp_path, tiny_base_dir, tiny_reward_dir):
    calls = []

    def prefers_short(prompts, completions, **columns):
        calls.append(sorted(columns))
        return [-float(len(text.split())) for text in completions]

    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, reward_model=False, reward_funcs=[prefers_short])
    metrics = trainer.train()
    assert calls, "the reward function was never called"
    assert metrics["objective/score"] <= 0


def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path, tiny_base_dir, tiny_reward_dir):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, peft_config=lora, learning_rate=5e-2)
    assert trainer.ref_model is None, "LoRA must not hold a second copy of the model"
    trainer.train()
    batch = trainer.next_batch()
    policy = trainer.policy
    with torch.no_grad():
        adapted = policy(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"]).logits
        with policy.disable_adapter():
            reference = policy(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"]).logits
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    with torch.no_grad():
        original = base(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"]).logits
    assert torch.allclose(reference, original, atol=1e-5), "disabled adapters must give the base model"
    assert not torch.allclose(adapted, original, atol=1e-4), "trained adapters must change the actor"


def test_ema_follows_the_actor_with_lag(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, ema_beta=0.5)
    initial = snapshot(trainer.ema)
    trainer.train()
    actor = dict(trainer.policy.named_parameters())
    name = "model.decoder.layers.0.self_attn.q_proj.weight"
    ema = dict(trainer.ema.named_parameters())[name]
    assert not torch.equal(ema, initial[name]), "EMA never moved"
    assert not torch.equal(ema, actor[name]), "EMA must lag the actor"
    # Between the start and the actor: closer to the actor than the start is, after 4 updates with beta 0.5.
    assert (ema - actor[name]).norm() < (initial[name] - actor[name]).norm()
    trainer.save_model()
    assert (tmp_path / "ppo" / "ema" / "config.json").exists()


def test_ptx_changes_the_language_model_loss_on_ptx_data(tmp_path, tiny_base_dir, tiny_reward_dir):
    # A fixed, fully predictable text: its LM loss can only fall if the ptx term trains on it.
    texts = ["Human: sort 1 2 3 Assistant: 1 2 3"] * 64
    ptx = Dataset.from_dict({"text": texts})

    def ptx_loss(trainer):
        torch.manual_seed(0)
        batch = trainer.tokenizer(texts[:32], return_tensors="pt", padding=True, padding_side="right")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        with torch.no_grad():
            return trainer.policy(**batch, labels=labels).loss.item()

    # DS-Chat's coefficient; the same seed gives both runs the same prompts and samples at the start.
    with_ptx = build(
        tmp_path / "a", tiny_base_dir, tiny_reward_dir, ptx_dataset=ptx, ptx_datasets=["x"], ptx_coef=27.8, max_steps=4
    )
    without = build(tmp_path / "b", tiny_base_dir, tiny_reward_dir, max_steps=4)
    start = ptx_loss(without)
    with_ptx.train()
    without.train()
    assert ptx_loss(with_ptx) < start - 0.05, "PPO-ptx must pull the LM loss on its data down"
    assert ptx_loss(with_ptx) < ptx_loss(without) - 0.05


def test_adaptive_kl_moves_coefficient_toward_target(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(
        tmp_path,
        tiny_base_dir,
        tiny_reward_dir,
        adaptive_kl=True,
        kl_target=1e-6,
        kl_horizon=100,
        max_steps=3,
        learning_rate=1e-2,
    )
    trainer.train()
    assert trainer.kl_controller.value > 0.1, "KL above target must raise the coefficient"


def test_ratio_blow_ups_are_skipped_then_stop_training(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_consecutive_skips=3, max_steps=4, num_ppo_epochs=1)
    # A ratio threshold below 1 makes every micro-batch count as a blow-up. PPOConfig refuses such a value (it would
    # skip every update), so it is set on the built trainer to exercise the skip path.
    trainer.args.ratio_threshold = 0.5
    before = snapshot(trainer.accelerator.unwrap_model(trainer.model).policy)
    with pytest.raises(TrainingDivergedError, match="in a row blew up"):
        trainer.train()
    assert not changed(before, trainer.accelerator.unwrap_model(trainer.model).policy), (
        "skipped updates changed weights"
    )


def test_nan_loss_stops_with_a_named_error(tmp_path, tiny_base_dir, tiny_reward_dir, monkeypatch):
    from rlhf_trl.ppo import losses

    clean_value_loss = losses.value_loss

    def nan_value_loss(*args, **kwargs):
        loss, stats = clean_value_loss(*args, **kwargs)
        return loss * float("nan"), stats

    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir)
    monkeypatch.setattr(losses, "value_loss", nan_value_loss)
    with pytest.raises(TrainingDivergedError, match=r"step 0: value loss is nan"):
        trainer.train()


def test_conversational_prompts_use_the_chat_template(tmp_path, tiny_base_dir, tiny_reward_dir):
    records = [
        {"prompt": [{"role": "user", "content": r["prompt"][len("Human: ") : -len(" Assistant:")]}]}
        for r in make_records("ppo", 16)
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}Human: {{ m['content'] }} {% else %}"
        "Assistant: {{ m['content'] }} {% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    tokenizer.save_pretrained(tmp_path / "chat")
    AutoModelForCausalLM.from_pretrained(tiny_base_dir).save_pretrained(tmp_path / "chat")
    trainer = build(tmp_path, tmp_path / "chat", tiny_reward_dir, train=Dataset.from_list(records), max_steps=1)
    assert trainer.train_prompts.prompts[0] == records[0]["prompt"]  # reward functions get the messages
    shown = tokenizer.decode(trainer.train_prompts.ids[0], skip_special_tokens=True)
    assert shown.startswith("Human: sort ") and shown.endswith("Assistant:")
    trainer.train()


def test_bad_batch_sizes_explain_the_fix(tmp_path):
    with pytest.raises(ValueError, match="not divisible by num_mini_batches"):
        config(tmp_path, per_device_train_batch_size=6, num_mini_batches=4)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        config(tmp_path, per_device_train_batch_size=8, num_mini_batches=2, gradient_accumulation_steps=3)
