"""``SWAALM``: lm-eval's Hugging Face model (``HFLM``) with SWAA attached, registered as ``swaa``.

Everything HFLM does (loading, batching, chat templates, truncation) stays HFLM's; SWAA only
attaches its config to the loaded model. Generation then goes through ``model.generate``, which
uses SWAA's bounded cache on its own. Loglikelihood needs one decision of ours: with
``force_fa_decode``, a generated answer's tokens were *decoded* (full attention) while the
prompt was prefilled with the window, so scoring a continuation as one plain forward (the
sliding rule for every token) would score a model nobody runs. Here each continuation is
scored the way it is generated: its tokens are marked as answer tokens (labels), which SWAA
lets attend fully on exactly the layers ``force_fa_decode`` names, the same rule training uses.
Without ``force_fa_decode`` the two coincide and HFLM's batched path runs unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm

from ..config import FIELD_NAMES, SWAAConfig
from ..patch import active_config, apply_swaa, hack_hf_swaa
from .model_args import swaa_config_from_args

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# HFLM's request tuple for loglikelihood: ((context, continuation) or None, context ids, continuation ids)
Request = tuple[Any, list[int], list[int]]


@register_model("swaa")
class SWAALM(HFLM):
    """Evaluate with ``--model swaa --model_args pretrained=PATH,sliding_window_size=W,keep_first=K,...``
    (lm-eval's CLI through ``python -m swaa_patch.lm_eval``, or ``simple_evaluate(model="swaa")``).

    Any SWAAConfig field is a model arg (layer lists separated by ``;``: ``non_sliding_layers=1;3``);
    every other arg is HFLM's. With no SWAA field, a ``swaa_config`` stored in the checkpoint's
    config.json applies, else the model is stock.
    """

    def __init__(self, pretrained: Any, **kwargs: Any) -> None:
        swaa_args = {name: kwargs.pop(name) for name in FIELD_NAMES if name in kwargs}
        config = swaa_config_from_args(swaa_args)
        hack_hf_swaa()  # before loading, so a swaa_config in config.json is validated and hooked
        super().__init__(pretrained=pretrained, **kwargs)
        if config is not None:
            apply_swaa(self.model, config)
        self.swaa_config: SWAAConfig | None = active_config(self.model.config)
        logger.info("lm-eval model with SWAA config %s", self.swaa_config)

    @property
    def scores_as_decoded(self) -> bool:
        """Whether continuation tokens attend differently from prompt tokens (force_fa_decode)."""
        return self.swaa_config is not None and bool(self.swaa_config.force_fa_decode)

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        if not self.scores_as_decoded:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        results = []
        # One request per forward: the answer boundary differs per row, and HFLM's logits cache
        # (shared by requests with the same tokens but other boundaries) would be wrong here.
        for request_str, context, continuation in tqdm(
            requests, disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests (SWAA decode rule)"
        ):
            answer = self.continuation_logprob(context, continuation)
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
            results.append(answer)
        return results

    def continuation_logprob(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """(log-probability of ``continuation`` after ``context``, whether greedy decoding gives it),
        with the continuation's tokens attending as they would when generated."""
        tokens = (context + continuation)[-(self.max_length + 1) :]
        inputs = torch.tensor([tokens[:-1]], dtype=torch.long, device=self.device)
        first_answer = len(tokens) - len(continuation)  # index of the continuation's first token
        call: dict[str, Any] = {}
        if first_answer < inputs.shape[1]:  # a 1-token continuation is predicted by the prefill alone
            labels = torch.full_like(inputs, IGNORE_INDEX)
            labels[:, first_answer:] = inputs[:, first_answer:]
            call["labels"] = labels
        with torch.no_grad(), torch.autocast(
            device_type=self.device.type, dtype=self.mixed_precision_dtype, enabled=self.mixed_precision_dtype is not None
        ):
            logits = self.model(input_ids=inputs, **call).logits[0, -len(continuation) :]
        logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        target = torch.tensor(continuation, dtype=torch.long, device=logprobs.device)
        picked = logprobs.gather(1, target[:, None]).squeeze(1)
        return float(picked.sum()), bool((logprobs.argmax(dim=-1) == target).all())
