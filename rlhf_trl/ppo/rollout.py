"""Rollout backends: how the actor generates answers inside PPO.

Every backend has ``generate(prompt_ids, prompt_mask) -> completion_ids`` and ``sync_weights()``. The trainer only
talks to this interface, so a faster engine can be plugged in without touching the PPO maths.
``generate_with_logprobs`` also returns the actor's per-token log-probs of the sampled answer where the backend can
read them from the logits it decoded with (the ``hf`` backend), which saves the actor's scoring forward.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext

import torch
from transformers import GenerationConfig

from rlhf_trl.ppo.losses import logprobs_from_logits

logger = logging.getLogger(__name__)


def actor_of(model, accelerator=None):
    """The actor PreTrainedModel inside what Accelerate prepared: the trainer prepares a PolicyAndValueWrapper
    (attribute ``policy``); a bare causal LM is accepted too."""
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    return unwrapped.policy if isinstance(unwrapped, _policy_and_value_wrapper()) else unwrapped


def _policy_and_value_wrapper():
    from rlhf_trl.ppo.modeling import PolicyAndValueWrapper

    return PolicyAndValueWrapper


@contextmanager
def gathered_policy(model, accelerator=None):
    """Yield the actor with its full weights, ready for ``generate`` or a forward pass outside training. Under
    ZeRO-3 its shards are gathered once for the whole block (not once per token or layer) and, when ``model`` is a
    DeepSpeed engine, the engine's per-module fetch/release hooks are lifted meanwhile (they would fetch and release
    every layer at every forward). A model partitioned by ``zero.Init`` at load time, before any engine exists, has
    no hooks and cannot run a forward at all until gathered. Collective under ZeRO-3: every process must enter it."""
    policy = actor_of(model, accelerator)
    parameters = list(policy.parameters())
    if not any(hasattr(parameter, "ds_id") for parameter in parameters):  # not partitioned by ZeRO-3
        yield policy
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(parameters):
        remove_hooks(model)  # a no-op for a bare module (no engine, so no hooks)
        try:
            yield policy
        finally:
            add_hooks(model)


class RolloutBackend(ABC):
    """Generates completions for left-padded prompts with the current actor weights."""

    name: str = "base"

    def __init__(self, model, tokenizer, generation_config: GenerationConfig, accelerator=None):
        """``model`` is the actor as prepared by Accelerate (possibly wrapped by DeepSpeed or DDP)."""
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.accelerator = accelerator
        self.active_backend = self.name  # what actually generates (a backend may fall back), logged by the trainer

    @abstractmethod
    def generate(self, prompt_ids: torch.LongTensor, prompt_mask: torch.LongTensor) -> torch.LongTensor:
        """prompt_ids, prompt_mask: [batch, prompt_len], left-padded. Returns the new tokens only:
        [batch, completion_len], padded on the right with the pad token after each sequence ends."""

    def generate_with_logprobs(
        self, prompt_ids: torch.LongTensor, prompt_mask: torch.LongTensor, temperature: float
    ) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """Like ``generate``, plus log-probs [batch, completion_len] of the sampled tokens at ``temperature`` from
        the decoding logits, or None where the backend cannot give them (then the trainer runs a forward)."""
        return self.generate(prompt_ids, prompt_mask), None

    def sync_weights(self) -> None:  # noqa: B027 - a no-op is right for backends that generate with the actor itself
        """Make the generation engine use the actor's latest weights (called after every PPO update)."""


class HFRollout(RolloutBackend):
    """Hugging Face ``generate`` with a KV cache. Under ZeRO-3 the sharded weights are gathered once per rollout
    (not once per token) through TRL's ``unwrap_model_for_generation``."""

    name = "hf"

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask):
        return self._generate(prompt_ids, prompt_mask, None)[0]

    @torch.no_grad()
    def generate_with_logprobs(self, prompt_ids, prompt_mask, temperature):
        return self._generate(prompt_ids, prompt_mask, temperature)

    def _generate(self, prompt_ids, prompt_mask, temperature: float | None):
        """-> (completion ids, log-probs or None). ``temperature`` None: no log-probs asked for."""
        # Raw logits, not ``scores``: scores went through the logits processors (top-k/top-p set filtered tokens to
        # -inf, temperature is already applied), while PPO's log-probs are log softmax(raw logits / temperature), as
        # losses.logprobs_from_logits computes them from a forward.
        config = self.generation_config
        # Read step by step from each decoding forward (DecodeLogprobs: one [batch, vocab] tensor held at a time);
        # where generation may compile its decoding step or splits the prompt's forward, ask generate for every
        # step's logits instead (``output_logits``: one [batch, vocab] tensor per generated token until it ends).
        hooked = (
            temperature is not None
            and config.cache_implementation is None
            and getattr(config, "prefill_chunk_size", None) is None
        )
        if temperature is not None and not hooked:
            config = copy.deepcopy(config)
            config.output_logits, config.return_dict_in_generate = True, True
        with gathered_policy(self.model, self.accelerator) as model:
            was_training = model.training
            model.eval()
            reader = DecodeLogprobs(model, temperature) if hooked else nullcontext()
            # The prepared model's forward is autocast under mixed precision, the inner generate is not.
            precision = self.accelerator.autocast() if self.accelerator is not None else nullcontext()
            with precision, reader:
                output = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    generation_config=config,
                    tokenizer=self.tokenizer,  # needed for stop_strings
                )
            model.train(was_training)
        if temperature is None:
            return output[:, prompt_ids.shape[1] :], None
        if hooked:
            completion_ids = output[:, prompt_ids.shape[1] :]
            return completion_ids, reader.logprobs(completion_ids) if completion_ids.shape[1] else None
        completion_ids = output.sequences[:, prompt_ids.shape[1] :]
        if completion_ids.shape[1] == 0:
            return completion_ids, None
        # Taken step by step from the stored logits, so no [batch, length, vocab] copy is made.
        logprobs = [
            step_logprobs(step_logits, completion_ids[:, step], temperature)
            for step, step_logits in enumerate(output.logits)
        ]
        return completion_ids, torch.stack(logprobs, dim=1)


def step_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """[batch] log-probs of ``tokens`` [batch] under one decoding step's raw logits [batch, vocab], at ``temperature``
    (as a forward's log softmax would give them)."""
    return logprobs_from_logits(logits[:, None], tokens[:, None].to(logits.device), temperature)[:, 0]


class DecodeLogprobs:
    """Log-probs of the sampled tokens at ``temperature``, read during ``generate`` from each decoding forward's
    last-position logits, holding one step's logits at a time.

    Hooks on the module whose forward ``generate`` calls (the base model under PEFT): after each forward, its
    last-position logits are kept (as the float32 copy ``generate`` samples from); before the next forward, whose
    last input token is the one sampled from them, that token's log-prob is taken and the logits let go. The last
    token's log-prob comes from the logits still held when ``generate`` returns. Steps beyond the returned answer
    (a stop check that runs one forward late) are cut off; any other mismatch gives None, and the trainer then
    runs the actor's forward instead.
    """

    def __init__(self, model, temperature: float):
        self.module = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.temperature = temperature
        self.held: torch.Tensor | None = None
        self.values: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self):
        self.handles = [
            self.module.register_forward_pre_hook(self._before, with_kwargs=True),
            self.module.register_forward_hook(self._after, with_kwargs=True),
        ]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _before(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self.held is not None and input_ids is not None:
            self.values.append(step_logprobs(self.held, input_ids[:, -1], self.temperature))
            self.held = None

    def _after(self, module, args, kwargs, output):
        logits = getattr(output, "logits", None)
        self.held = logits[:, -1].to(dtype=torch.float32, copy=True) if logits is not None else None

    def logprobs(self, completion_ids: torch.Tensor) -> torch.Tensor | None:
        """[batch, C] log-probs of ``completion_ids`` [batch, C], or None when the steps read do not line up."""
        values, width = list(self.values), completion_ids.shape[1]
        if len(values) == width - 1 and self.held is not None:
            values.append(step_logprobs(self.held, completion_ids[:, -1], self.temperature))
        self.held = None
        if len(values) < width or values[0].shape[0] != completion_ids.shape[0]:
            logger.warning("rollout log-probs: the decoding steps read do not match the answer; recomputing them")
            return None
        return torch.stack(values[:width], dim=1)


def build_rollout(
    name: str, model, tokenizer, generation_config: GenerationConfig, accelerator=None, **options
) -> RolloutBackend:
    """Build the rollout backend called ``name`` (one of ``ppo.config.ROLLOUT_BACKENDS``); ``options`` go to the
    DeepSpeed backend. A new backend subclasses RolloutBackend and gets its entry here and in ROLLOUT_BACKENDS."""
    from rlhf_trl.ppo.rollout_deepspeed import DeepSpeedRollout  # imports deepspeed: only when asked for

    backends = {HFRollout.name: HFRollout, DeepSpeedRollout.name: DeepSpeedRollout}
    if name not in backends:
        raise ValueError(f"Unknown rollout backend {name!r}; choose one of: {', '.join(sorted(backends))}.")
    if name == HFRollout.name:
        if options:
            raise ValueError(f"The 'hf' rollout backend takes no options; got {', '.join(sorted(options))}.")
        return HFRollout(model, tokenizer, generation_config, accelerator)
    return DeepSpeedRollout(model, tokenizer, generation_config, accelerator, **options)
