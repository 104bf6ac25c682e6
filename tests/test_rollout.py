"""Rollout backends: every backend reproduces plain ``model.generate``, falls back loudly, and follows new weights."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    OPTForCausalLM,
)

from rlhf_trl.generation import pad_after_end
from rlhf_trl.ppo.deepspeed_engine import resolve_generation_config, rollout_engine_limitation, sampling_config_from
from rlhf_trl.ppo.modeling import PolicyAndValueWrapper
from rlhf_trl.ppo.rollout import HFRollout, build_rollout
from rlhf_trl.ppo.rollout_deepspeed import (
    DEEPSPEED_WITHOUT_KERNELS,
    HF_FALLBACK,
    KERNELS,
    DeepSpeedRollout,
)
from rlhf_trl.tiny.model import build_config, build_tokenizer

PROMPTS = ["Human: sort 3 1 2 Assistant:", "Human: sort 5 Assistant:", "Human: sort 9 8 7 6 5 Assistant:"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def build_model(architecture: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    if architecture == "opt":
        model = OPTForCausalLM(build_config(tokenizer))
    else:
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
        model = LlamaForCausalLM(config)
    # Random tiny models rarely emit EOS; make it likelier so padding after EOS is exercised.
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 3
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def generation_config(tokenizer, **settings) -> GenerationConfig:
    defaults = {"max_new_tokens": 12, "do_sample": False}
    return GenerationConfig(
        **{**defaults, **settings}, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )


def prompts(tokenizer):
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def reference_completions(model, tokenizer, config: GenerationConfig):
    ids, mask = prompts(tokenizer)
    model.eval()
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return output[:, ids.shape[1] :]


# On CPU there are no kernels: the rollout engine runs the model's own forward, and its self-check passes.
EXPECTED_CPU_BACKEND = {
    ("deepspeed", "llama"): DEEPSPEED_WITHOUT_KERNELS,
    ("deepspeed", "opt"): DEEPSPEED_WITHOUT_KERNELS,
}


@pytest.mark.parametrize("architecture", ["opt", "llama"])
@pytest.mark.parametrize("backend", ["hf", "deepspeed"])
def test_greedy_matches_plain_generate(backend, architecture, tokenizer):
    model = build_model(architecture, tokenizer)
    config = generation_config(tokenizer)
    expected = reference_completions(model, tokenizer, config)
    model.train()  # the trainer hands over a model in training mode
    rollout = build_rollout(backend, model, tokenizer, config)
    completions = rollout.generate(*prompts(tokenizer))
    assert torch.equal(completions, expected)
    assert model.training, "the backend must give the actor back in training mode"
    if backend == "deepspeed":
        assert rollout.active_backend == EXPECTED_CPU_BACKEND[(backend, architecture)]


def test_deepspeed_rollout_engine_pads_after_eos_like_generate(tokenizer):
    model = build_model("llama", tokenizer, seed=3)
    with torch.no_grad():  # EOS almost certain after the first token or two, at different steps per row
        model.lm_head.weight[tokenizer.eos_token_id] *= 4
    config = generation_config(tokenizer, max_new_tokens=20)
    expected = reference_completions(model, tokenizer, config)
    completions = DeepSpeedRollout(model, tokenizer, config).generate(*prompts(tokenizer))
    assert (expected == tokenizer.eos_token_id).any(), "test needs at least one answer that ends early"
    assert torch.equal(completions, expected)


def test_deepspeed_sampling_matches_generate_with_same_seed(tokenizer):
    model = build_model("llama", tokenizer)
    config = generation_config(tokenizer, do_sample=True, temperature=0.7, top_k=5, top_p=0.9)
    rollout = DeepSpeedRollout(model, tokenizer, config)
    torch.manual_seed(1234)
    expected = reference_completions(model, tokenizer, config)
    torch.manual_seed(1234)
    assert torch.equal(rollout.generate(*prompts(tokenizer)), expected)


def test_deepspeed_fixed_answer_length_uses_hybrid_engine_generate(tokenizer):
    model = build_model("llama", tokenizer)
    config = generation_config(tokenizer, max_new_tokens=10, min_new_tokens=10)
    expected = reference_completions(model, tokenizer, config)
    completions = DeepSpeedRollout(model, tokenizer, config).generate(*prompts(tokenizer))
    assert completions.shape == (len(PROMPTS), 10)
    assert torch.equal(completions, expected)


def fake_engine_path(monkeypatch, behaviour):
    """Replace the engine's generation path (kernels on CUDA) with ``behaviour``; plain generate stays real."""
    calls = []

    def engine_generate(self, prompt_ids, prompt_mask, config, backend):
        calls.append(backend)
        return behaviour(self, prompt_ids, prompt_mask, config)

    monkeypatch.setattr(DeepSpeedRollout, "_engine_generate", engine_generate)
    return calls


def wrong_tokens(rollout, prompt_ids, prompt_mask, config):
    right = rollout._plain_generate(prompt_ids, prompt_mask, config)
    return (right + 1) % len(rollout.tokenizer)


def broken_kernel(rollout, prompt_ids, prompt_mask, config):
    raise RuntimeError("illegal memory access in softmax kernel")


@pytest.mark.parametrize(
    ("behaviour", "said"), [(wrong_tokens, "gave different tokens"), (broken_kernel, "raised RuntimeError")]
)
@pytest.mark.parametrize("architecture", ["opt", "llama"])
def test_failed_self_check_falls_back_loudly(architecture, behaviour, said, tokenizer, caplog, monkeypatch):
    model = build_model(architecture, tokenizer)
    config = generation_config(tokenizer)
    expected = reference_completions(model, tokenizer, config)
    calls = fake_engine_path(monkeypatch, behaviour)
    with caplog.at_level(logging.INFO, logger="rlhf_trl.ppo.rollout_deepspeed"):
        rollout = DeepSpeedRollout(model, tokenizer, config)
    assert calls == [DEEPSPEED_WITHOUT_KERNELS], "the check runs the path the backend would use, once"
    assert rollout.active_backend == HF_FALLBACK
    assert said in rollout.fallback_reason and "self-check" in rollout.fallback_reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("falling back to Hugging Face generate" in w and "greedy tokens" in w for w in warnings)
    assert any("self-check" in r.getMessage() and " took " in r.getMessage() for r in caplog.records), "cost logged"
    assert torch.equal(rollout.generate(*prompts(tokenizer)), expected)
    assert calls == [DEEPSPEED_WITHOUT_KERNELS], "after falling back the engine path is never used"


def test_self_check_compares_tokens_of_plain_generate(tokenizer):
    """The check's reference is Transformers generate on the probe prompts: a passing engine reproduces it."""
    model = build_model("opt", tokenizer)
    rollout = DeepSpeedRollout(model, tokenizer, generation_config(tokenizer))
    assert rollout.self_check(DEEPSPEED_WITHOUT_KERNELS) is None
    with torch.no_grad():  # the engine shares the actor's tensors: a changed weight changes both sides alike
        model.lm_head.weight.mul_(-1)
    assert rollout.self_check(DEEPSPEED_WITHOUT_KERNELS) is None


def test_cpu_actor_warns_that_kernels_are_cuda_only(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="rlhf_trl.ppo.rollout_deepspeed"):
        rollout = DeepSpeedRollout(build_model("llama", tokenizer), tokenizer, generation_config(tokenizer))
    assert rollout.active_backend == DEEPSPEED_WITHOUT_KERNELS
    assert rollout.fallback_reason is None
    assert any("CUDA only" in record.getMessage() for record in caplog.records)


def trainer_wrapper(actor) -> PolicyAndValueWrapper:
    """What the PPO trainer prepares: actor and critic (a one-label sequence classifier) as one module."""
    critic_config = copy.deepcopy(actor.config)
    critic_config.num_labels = 1
    return PolicyAndValueWrapper(actor, AutoModelForSequenceClassification.from_config(critic_config))


def test_policy_is_found_inside_trainer_wrapper(tokenizer):
    actor = build_model("llama", tokenizer)
    config = generation_config(tokenizer)
    expected = reference_completions(actor, tokenizer, config)
    rollout = build_rollout("deepspeed", trainer_wrapper(actor), tokenizer, config)
    assert rollout.actor is actor
    assert torch.equal(rollout.generate(*prompts(tokenizer)), expected)


@pytest.mark.parametrize("architecture", ["opt", "llama"])
def test_sync_weights_makes_generation_follow_new_weights(architecture, tokenizer):
    actor = build_model(architecture, tokenizer, seed=0)
    other = build_model(architecture, tokenizer, seed=1)
    config = generation_config(tokenizer)
    before = reference_completions(actor, tokenizer, config)
    after = reference_completions(other, tokenizer, config)
    assert not torch.equal(before, after), "the two seeds must generate differently for this test to mean anything"

    rollout = DeepSpeedRollout(actor, tokenizer, config)
    assert torch.equal(rollout.generate(*prompts(tokenizer)), before)
    with torch.no_grad():  # what an optimizer step does: update the same tensors in place
        for parameter, new_value in zip(actor.parameters(), other.parameters()):
            parameter.copy_(new_value)
    rollout.sync_weights()
    assert torch.equal(rollout.generate(*prompts(tokenizer)), after)


def test_build_rollout_rejects_unknown_names_and_hf_options(tokenizer):
    model = build_model("opt", tokenizer)
    with pytest.raises(ValueError, match=r"'vllm'.*deepspeed, hf"):
        build_rollout("vllm", model, tokenizer, generation_config(tokenizer))
    with pytest.raises(ValueError, match="inference_tp_size"):
        build_rollout("hf", model, tokenizer, generation_config(tokenizer), inference_tp_size=2)
    with pytest.raises(TypeError, match="cuda_graph_decode"):
        build_rollout("deepspeed", model, tokenizer, generation_config(tokenizer), cuda_graph_decode=True)
    assert isinstance(build_rollout("hf", model, tokenizer, generation_config(tokenizer)), HFRollout)


def test_pad_after_end_matches_generate_format():
    eos, pad = 1, 0
    completions = torch.tensor([[5, 1, 7, 8, 9], [5, 6, 1, 1, 9], [5, 6, 7, 8, 9]])
    expected = torch.tensor([[5, 1, 0, 0, 0], [5, 6, 1, 0, 0], [5, 6, 7, 8, 9]])
    assert torch.equal(pad_after_end(completions, [eos], pad), expected)
    # When every answer ends early the width shrinks to the longest one, as generate stops there.
    assert torch.equal(pad_after_end(completions[:2], [eos], pad), expected[:2, :3])
    assert torch.equal(pad_after_end(completions, [], pad), completions)


def test_pad_after_end_takes_several_end_ids_and_empty_batches():
    turn_end, eos, pad = 2, 1, 0
    completions = torch.tensor([[5, 2, 7, 1], [5, 6, 1, 2]])
    assert pad_after_end(completions, [eos, turn_end], pad).tolist() == [[5, 2, 0], [5, 6, 1]]
    assert pad_after_end(completions, turn_end, pad).tolist() == [[5, 2, 0, 0], [5, 6, 1, 2]]
    empty = torch.zeros((2, 0), dtype=torch.long)
    assert pad_after_end(empty, [eos], pad).shape == (2, 0)


def resolved(tokenizer, **settings) -> GenerationConfig:
    return resolve_generation_config(generation_config(tokenizer, **settings), GenerationConfig())


def test_rollout_engine_limitation_and_sampling_translation(tokenizer):
    assert rollout_engine_limitation(resolved(tokenizer)) is None
    assert "minimum" in rollout_engine_limitation(resolved(tokenizer, min_new_tokens=3))
    assert rollout_engine_limitation(resolved(tokenizer, num_beams=2)) == "beam search"
    assert "stop strings" in rollout_engine_limitation(resolved(tokenizer, stop_strings=["sort"]))
    assert sampling_config_from(resolved(tokenizer)).temperature == 0.0  # greedy in DeepSpeed's terms
    sampled = sampling_config_from(resolved(tokenizer, do_sample=True, temperature=0.5, top_k=7, top_p=0.8))
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.max_new_tokens) == (0.5, 7, 0.8, 12)
    # Unset fields take the values generate would use (Transformers' default top-k is 50).
    assert sampling_config_from(resolved(tokenizer, do_sample=True)).top_k == 50


def test_generation_paths_are_exercised(tokenizer, monkeypatch):
    """Greedy without a minimum length goes through DeepSpeed's rollout engine, a fixed length through generate."""
    rollout = DeepSpeedRollout(build_model("llama", tokenizer), tokenizer, generation_config(tokenizer))
    calls = []

    def failing_rollout_engine(request, sampling):
        calls.append((request.prompt_ids.shape, sampling.temperature))
        raise RuntimeError("stop here")

    monkeypatch.setattr(rollout.rollout_engine, "generate", failing_rollout_engine)
    with pytest.raises(RuntimeError, match="stop here"):
        rollout.generate(*prompts(tokenizer))
    assert calls == [(prompts(tokenizer)[0].shape, 0.0)]
    assert rollout.actor.training, "the actor goes back to training mode even when generation fails"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("architecture", ["opt", "llama"])
@pytest.mark.parametrize("backend", ["hf", "deepspeed"])
def test_greedy_matches_plain_generate_on_cuda(backend, architecture, tokenizer):
    model = build_model(architecture, tokenizer).cuda()
    config = generation_config(tokenizer)
    ids, mask = (tensor.cuda() for tensor in prompts(tokenizer))
    model.eval()
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, ids.shape[1] :]
    rollout = build_rollout(backend, model, tokenizer, config)
    assert torch.equal(rollout.generate(ids, mask), expected)
    if backend == "deepspeed":
        # Kernels when their self-check reproduces generate, otherwise a loud fallback: either way the same tokens.
        assert rollout.active_backend in (KERNELS, HF_FALLBACK)
        assert (rollout.active_backend == HF_FALLBACK) == (rollout.fallback_reason is not None)


def deepspeed_training_engine(module: nn.Module, zero_stage: int):
    """The PPO trainer's layout under DeepSpeed: actor and critic in one engine with an optimizer."""
    import deepspeed

    from rlhf_trl.ppo.deepspeed_engine import distributed_environment

    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,
    }
    # A torch optimizer: DeepSpeed's own AdamW would compile its CPU extension first (minutes).
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    with distributed_environment():
        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


def test_deepspeed_rollout_follows_zero2_training_steps(tokenizer):
    actor = build_model("llama", tokenizer)
    engine = deepspeed_training_engine(trainer_wrapper(actor), zero_stage=2)
    config = generation_config(tokenizer)
    rollout = DeepSpeedRollout(engine, tokenizer, config)
    assert rollout.active_backend == DEEPSPEED_WITHOUT_KERNELS and rollout.actor is actor
    before = rollout.generate(*prompts(tokenizer))

    ids, mask = prompts(tokenizer)
    for _ in range(3):  # push the actor hard towards always answering "7"
        logits = engine.module.policy(input_ids=ids, attention_mask=mask).logits
        loss = nn.functional.cross_entropy(
            logits[:, -1], torch.full((len(PROMPTS),), tokenizer.convert_tokens_to_ids("7"))
        )
        engine.backward(loss)
        engine.step()
    rollout.sync_weights()

    after = rollout.generate(*prompts(tokenizer))
    assert not torch.equal(after, before), "training must change what the actor generates"
    assert torch.equal(after, reference_completions(actor, tokenizer, config))


def test_zero3_partitioned_actor_falls_back_to_gathered_hf_generate(tokenizer):
    actor = build_model("llama", tokenizer)
    config = generation_config(tokenizer)
    expected = reference_completions(actor, tokenizer, config)
    engine = deepspeed_training_engine(trainer_wrapper(actor), zero_stage=3)
    rollout = DeepSpeedRollout(engine, tokenizer, config)
    assert rollout.active_backend == HF_FALLBACK
    assert "ZeRO-3" in rollout.fallback_reason
    assert torch.equal(rollout.generate(*prompts(tokenizer)), expected)


@pytest.mark.parametrize("family_dir", ["tiny_chat_dir", "tiny_qwen2_chat_dir"])
def test_chat_model_passes_self_check_and_matches_generate(family_dir, request):
    """Current architectures with a byte-level tokenizer and chat-templated prompts: the self-check passes and the
    engine reproduces generate on real prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = request.getfixturevalue(family_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    config = GenerationConfig(
        max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        for text in ("sort 3 1 2", "sort 9 8 7 6 5")
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        output = model.generate(**batch, generation_config=config)
    expected = output[:, batch["input_ids"].shape[1] :]
    model.train()
    rollout = DeepSpeedRollout(model, tokenizer, config)
    assert rollout.active_backend == DEEPSPEED_WITHOUT_KERNELS, rollout.fallback_reason
    assert torch.equal(rollout.generate(batch["input_ids"], batch["attention_mask"]), expected)
