"""DeepSpeed rollout backend: the actor generates through DeepSpeed's hybrid engine.

DeepSpeed's hybrid engine switches the actor between training mode and an inference mode in which its decoder
layers run DeepSpeed's fused inference kernels (CUDA only, for the layer types DeepSpeed has an inference policy for).
Which engine actually runs is decided once, when the backend is built, and exposed as ``active_backend``:

- ``"deepspeed-kernels"``: hybrid engine with inference kernels injected into the actor's layers (CUDA).
- ``"deepspeed"``: DeepSpeed's rollout engine over the actor's own forward (off CUDA, or no kernels for the
  architecture).
- ``"hf-fallback"``: Hugging Face ``generate``, with a warning saying why: PEFT adapters, ZeRO-3 weights partitioned
  by a training engine that is not a hybrid engine, or a failed self-check.

Whether the engine can serve the actor is decided by behaviour, not by reading signatures or version numbers: once
built, it generates a few greedy tokens for fixed probe prompts, and they must equal plain ``generate``'s on the same
inputs (``self_check``). Any difference or exception falls back to ``generate``.

Completions have the same format as ``HFRollout``: new tokens only, right-padded with the pad token after the first
end-of-sequence token, as wide as the longest answer (``rlhf_trl.generation.pad_after_end``, the project's one cut
at end-of-text). Building the engine and translating generation settings to it: ``rlhf_trl.ppo.deepspeed_engine``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch
from transformers import GenerationConfig

from rlhf_trl.generation import pad_after_end
from rlhf_trl.ppo.deepspeed_engine import (
    distributed_environment,
    find_actor,
    precision_section,
    resolve_generation_config,
    rollout_engine_limitation,
    sampling_config_from,
)
from rlhf_trl.ppo.rollout import HFRollout, RolloutBackend

logger = logging.getLogger(__name__)

KERNELS = "deepspeed-kernels"
DEEPSPEED_WITHOUT_KERNELS = "deepspeed"
HF_FALLBACK = "hf-fallback"
# Greedy tokens the self-check compares: enough for a wrong cache or attention mask to show, cheap at start-up.
SELF_CHECK_TOKENS = 6
# Two prompts of different lengths, so the check also covers left padding.
PROBE_PROMPTS = ("Human: Hello, how are you? Assistant:", "Human: Hi Assistant:")


def probe_inputs(tokenizer, device) -> tuple[torch.LongTensor, torch.LongTensor]:
    """The self-check's prompts, left-padded as the trainer pads its prompts."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(PROBE_PROMPTS), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = padding_side
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


class DeepSpeedRollout(RolloutBackend):
    """Generation through DeepSpeed's hybrid engine, sharing the actor's parameter tensors with the trainer.

    Options (they become the ``hybrid_engine`` section of the engine's DeepSpeed config):
        inference_tp_size: split each layer over this many GPUs during generation only.
        release_inference_cache: free the inference workspace (KV cache) after every rollout, at the cost of
            reallocating it next time.
        pin_parameters: under ZeRO-3, keep gathered layers in memory for the whole rollout instead of re-gathering
            them for every token.
        cuda_graph: replay decode steps from CUDA graphs (used when answers have a fixed length, i.e.
            min_new_tokens == max_new_tokens; DeepSpeed refuses it with ZeRO-3, tensor parallelism or a released
            cache and says so).
        max_prompt_length: longest prompt; with max_new_tokens it sizes the inference workspace (max_out_tokens).
        tp_gather_partition_size: layers gathered at a time under ZeRO-3 with tensor parallelism.
    """

    name = "deepspeed"

    def __init__(
        self,
        model,
        tokenizer,
        generation_config: GenerationConfig,
        accelerator=None,
        *,
        inference_tp_size: int = 1,
        release_inference_cache: bool = False,
        pin_parameters: bool = True,
        cuda_graph: bool = False,
        max_prompt_length: int = 512,
        tp_gather_partition_size: int = 8,
    ):
        super().__init__(model, tokenizer, generation_config, accelerator)
        self.hybrid_engine_options = {
            "inference_tp_size": inference_tp_size,
            "release_inference_cache": release_inference_cache,
            "pin_parameters": pin_parameters,
            "enable_cuda_graph": cuda_graph,
            "max_out_tokens": max_prompt_length + (generation_config.max_new_tokens or generation_config.max_length),
            "tp_gather_partition_size": tp_gather_partition_size,
        }
        self.actor = find_actor(model)
        self.engine = None
        self.rollout_engine = None
        self.fallback: HFRollout | None = None
        self.fallback_reason: str | None = None
        self.active_backend = self._start_engine()
        logger.info("Rollout backend in use: %s", self.active_backend)

    # ------------------------------------------------------------------ choosing and building the engine

    def _start_engine(self) -> str:
        from deepspeed.runtime.hybrid_engine import DeepSpeedHybridEngine

        if isinstance(self.model, DeepSpeedHybridEngine) and self.model.module is self.actor:
            # The actor was prepared on its own with a hybrid_engine section (DeepSpeed-Chat's layout): use that
            # engine directly; it also handles ZeRO-3 gathering itself.
            self.engine = self.model
            self._build_rollout_engine()
        else:
            problem = self._known_unsupported()
            if problem is not None:
                return self._fall_back(problem)
            on_cuda = next(self.actor.parameters()).device.type == "cuda"
            if not on_cuda:
                logger.warning(
                    "DeepSpeed's inference kernels run on CUDA only; the actor is on %s, so DeepSpeed's rollout "
                    "engine runs the model's own forward.",
                    next(self.actor.parameters()).device,
                )
            self._build_own_engine(with_kernels=on_cuda)
        # A plain DeepSpeedEngine (kernels off) has no containers; a hybrid engine has none for layers it lacks a
        # policy for, and then runs the model's own forward.
        candidate = KERNELS if getattr(self.engine, "_inference_containers", None) else DEEPSPEED_WITHOUT_KERNELS
        failed_check = self.self_check(candidate)
        if failed_check is not None:
            self._restore_native_generate()
            return self._fall_back(failed_check)
        return candidate

    def _known_unsupported(self) -> str | None:
        """Cases the engine is known not to handle, decided without building it."""
        from deepspeed import DeepSpeedEngine
        from peft import PeftModel

        if isinstance(self.actor, PeftModel):
            return "PEFT adapters are not understood by DeepSpeed's inference kernels"
        if isinstance(self.model, DeepSpeedEngine) and self.model.zero_optimization_partition_weights():
            return (
                "the actor's weights are partitioned by ZeRO-3 in a training engine that is not a hybrid engine; "
                "a second engine over partitioned weights would not see them"
            )
        return None

    def self_check(self, candidate: str) -> str | None:
        """Generate ``SELF_CHECK_TOKENS`` greedy tokens for the probe prompts through the engine (the path
        ``generate`` takes) and through plain Transformers ``generate``; return which check failed and how, or None
        when the tokens are equal. The time it took is logged."""
        if self.engine.zero_optimization_partition_weights():
            # Only the trainer's own hybrid engine gets here with partitioned weights: a plain generate for the
            # reference would need them gathered, which that engine does itself during generation.
            logger.info("Rollout self-check skipped: ZeRO-3 weights are gathered by the hybrid engine only.")
            return None
        check = f"self-check '{candidate}': {SELF_CHECK_TOKENS} greedy tokens against Transformers generate"
        started = time.perf_counter()
        greedy = GenerationConfig(
            max_new_tokens=SELF_CHECK_TOKENS,
            do_sample=False,
            pad_token_id=self.generation_config.pad_token_id,
            eos_token_id=self.generation_config.eos_token_id,
        )
        try:
            prompt_ids, prompt_mask = probe_inputs(self.tokenizer, next(self.actor.parameters()).device)
            expected = self._plain_generate(prompt_ids, prompt_mask, greedy)
            got = self._engine_generate(prompt_ids, prompt_mask, greedy, candidate)
        except Exception as error:  # any failure of the engine path means it cannot serve this actor
            return f"{check} raised {type(error).__name__}: {error}"
        finally:
            logger.info("Rollout %s took %.2f s.", check, time.perf_counter() - started)
        if got.shape != expected.shape or not torch.equal(got.to(expected.device), expected):
            return f"{check} gave different tokens ({got.tolist()} instead of {expected.tolist()})"
        return None

    @torch.no_grad()
    def _plain_generate(self, prompt_ids, prompt_mask, config: GenerationConfig):
        """Transformers' own generate on the actor's own layers (the class method: the hybrid engine replaces the
        instance's ``generate`` when it injects kernels)."""
        was_training = self.actor.training
        self.actor.eval()
        try:
            output = type(self.actor).generate(
                self.actor, input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config
            )
        finally:
            self.actor.train(was_training)
        return self._completions(output[:, prompt_ids.shape[1] :], config)

    def _restore_native_generate(self) -> None:
        """Undo what the hybrid engine did to the actor: layers back to their own forward, ``generate`` back to
        Transformers' own."""
        self.engine.train(self.actor.training)
        if "generate" in vars(self.actor):
            del self.actor.generate

    def _fall_back(self, reason: str) -> str:
        self.fallback_reason = reason
        # HFRollout gathers ZeRO-3 shards through the accelerator; without one, hand it the actor itself (a ZeRO-3
        # actor then fetches its shards layer by layer through DeepSpeed's hooks).
        self.fallback = HFRollout(
            self.model if self.accelerator is not None else self.actor,
            self.tokenizer,
            self.generation_config,
            self.accelerator,
        )
        logger.warning(
            "Rollout backend 'deepspeed' cannot serve this actor (%s); falling back to Hugging Face generate.",
            reason,
        )
        return HF_FALLBACK

    def _build_own_engine(self, with_kernels: bool) -> None:
        """A second DeepSpeed engine over the actor module without an optimizer: it holds the same parameter
        tensors as the training engine, so it sees every update without copying."""
        import deepspeed

        config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 0},
            # Without kernels the hybrid engine would still try to build them (and fail off CUDA), so it stays off.
            "hybrid_engine": {"enabled": with_kernels, **self.hybrid_engine_options},
            **precision_section(self.actor),
        }
        with distributed_environment():
            self.engine, *_ = deepspeed.initialize(model=self.actor, config=config)
        self._build_rollout_engine()

    def _build_rollout_engine(self) -> None:
        from deepspeed.runtime.rollout import HybridEngineRollout

        self.rollout_engine = HybridEngineRollout(self.engine, self.tokenizer)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask):
        if self.fallback is not None:
            return self._completions(self.fallback.generate(prompt_ids, prompt_mask), self.generation_config)
        return self._engine_generate(prompt_ids, prompt_mask, self.generation_config, self.active_backend)

    @torch.no_grad()
    def _engine_generate(self, prompt_ids, prompt_mask, generation_config: GenerationConfig, backend: str):
        """Generate through the DeepSpeed engine (``backend``: what it runs as, kernels or not)."""
        resolved = resolve_generation_config(generation_config, self.actor.generation_config)
        was_training = self.actor.training
        # eval() swaps the actor's layers to the inference kernels (when injected); train() swaps them back.
        self.engine.eval()
        try:
            with self._generation_config_in_place(resolved):
                if rollout_engine_limitation(resolved) is None and not self._needs_pinned_length(backend):
                    completions = self._generate_with_rollout_engine(prompt_ids, prompt_mask, resolved)
                else:
                    completions = self._generate_with_hybrid_engine(prompt_ids, prompt_mask, resolved)
        finally:
            self.engine.train(was_training)
        return self._completions(completions, generation_config)

    @staticmethod
    def _completions(completions, generation_config: GenerationConfig):
        """New tokens in ``HFRollout``'s format: padded after the first end-of-text token, as wide as the longest
        answer."""
        eos = generation_config.eos_token_id
        eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        pad_id = generation_config.pad_token_id
        if pad_id is None:
            pad_id = eos_ids[0] if eos_ids else 0
        return pad_after_end(completions, eos_ids, pad_id)

    def _needs_pinned_length(self, backend: str) -> bool:
        """CUDA-graph decode is only used when the generate call itself says min_new_tokens == max_new_tokens."""
        return backend == KERNELS and self.engine._config.hybrid_engine.enable_cuda_graph

    def _generate_with_rollout_engine(self, prompt_ids, prompt_mask, resolved: GenerationConfig):
        from deepspeed.runtime.rollout import RolloutRequest

        batch = self.rollout_engine.generate(RolloutRequest(prompt_ids, prompt_mask), sampling_config_from(resolved))
        return batch.input_ids[:, prompt_ids.shape[1] :]

    def _generate_with_hybrid_engine(self, prompt_ids, prompt_mask, resolved: GenerationConfig):
        # With kernels injected, actor.generate is the hybrid engine's generate (gathers, fuses LoRA, times).
        output = self.actor.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=resolved, tokenizer=self.tokenizer
        )
        return output[:, prompt_ids.shape[1] :]

    @contextmanager
    def _generation_config_in_place(self, resolved: GenerationConfig):
        """The rollout engine calls generate without a GenerationConfig, so the actor's own config is the base of
        its settings; make that ours for the call (pad and end ids included) and restore it afterwards."""
        original = self.actor.generation_config
        self.actor.generation_config = resolved
        try:
            yield
        finally:
            self.actor.generation_config = original

    def sync_weights(self) -> None:
        """The engine shares the actor's parameter tensors, so new values are seen directly. Injected kernels keep
        their own references (transposed and fused views) that must be pointed at the current tensors again, which
        the hybrid engine otherwise does only after its own optimizer steps."""
        if self.active_backend != KERNELS or self.engine is self.model:
            return  # nothing cached, or the trainer's own hybrid engine, which refreshes itself in step()
        for container in self.engine._inference_containers:
            container.reset_params()
