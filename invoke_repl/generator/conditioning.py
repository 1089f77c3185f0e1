"""Prompt → text conditioning through compel: `(word)++`, `word-`, `.blend()`, `.and()`, negative prompts.

compel 2.5.1 works with transformers 5 and this CLIP tokenizer (checked: weighted, blended and 154-token
prompts encode), so no hand-written weighting is needed. `truncate_long_prompts=False` makes compel encode a
prompt longer than 77 tokens in 75-token chunks instead of silently cutting it, and the positive and negative
conditionings are then padded to the same length so they can share one batched UNet call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from invoke_repl.components import Components


def encode_prompts(components: Components, prompt: str, negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) conditionings, shape (1, tokens, dim), same length, in the UNet's dtype and device.

    For a prompt without weighting syntax this is the same tensor as diffusers' `encode_prompt` (the tests pin
    that), so our pipeline and the stock one see identical conditioning.
    """
    from compel import Compel

    encoder = components.text_encoder
    compel = Compel(
        tokenizer=components.tokenizer,
        text_encoder=encoder,
        truncate_long_prompts=False,
        dtype_for_device_getter=lambda _device: encoder.dtype,
        device=str(encoder.device),
    )
    with torch.no_grad():
        cond = compel(prompt)
        uncond = compel(negative)
        cond, uncond = compel.pad_conditioning_tensors_to_same_length([cond, uncond])
    target = {"device": components.device, "dtype": components.dtype}
    return cond.to(**target), uncond.to(**target)
