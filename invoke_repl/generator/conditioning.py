"""Prompt → text conditioning through compel: `(word)++`, `word-`, `.blend()`, `.and()`, negative prompts.

compel 2.5.1 works with transformers 5 and this CLIP tokenizer (checked: weighted, blended and 154-token
prompts encode), so no hand-written weighting is needed. `truncate_long_prompts=False` makes compel encode a
prompt longer than 77 tokens in 75-token chunks instead of silently cutting it, and the positive and negative
conditionings are then padded to the same length so they can share one batched UNet call.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from invoke_repl.components import Components


def encode_prompts(components: Components, prompt: str, negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) conditionings, shape (1, tokens, dim), same length, in the UNet's dtype and device.

    For a prompt without weighting syntax this is the same tensor as diffusers' `encode_prompt` (the tests pin
    that), so our pipeline and the stock one see identical conditioning.
    """
    target = {"device": components.device, "dtype": components.dtype}
    plain = _plain_encode(components, prompt), _plain_encode(components, negative)
    if plain[0] is not None and plain[1] is not None:
        return plain[0].to(**target), plain[1].to(**target)

    for text in (prompt, negative):
        if _LORA.search(text):
            raise PromptError(
                "withLora(...) or <lora:…> asks for a LoRA, and invoke-repl loads none, so the image would be made "
                "without it; remove it from the prompt"
            )
        if _EMPTY_GROUP.search(text):  # compel fails on it with a bare IndexError
            raise PromptError("the prompt has empty parentheses (); put words inside them or remove them")
        if _SWAP.search(text):
            # compel parses it into cross-attention control options that only InvokeAI's own attention
            # processor reads; through the plain UNet the conditioning is the text before `.swap(`, unchanged.
            raise PromptError(
                ".swap(...) (cross-attention control) is not supported: the image would be made as if it were not "
                "there; remove it, or use .blend()"
            )
    _memoize_compels_grammar()
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
        try:
            cond = compel(prompt)
            uncond = compel(negative)
        except Exception as exc:  # compel's grammar errors come as bare IndexError/ValueError/pyparsing errors
            detail = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise PromptError(f"cannot read the prompt's weighting syntax ({type(exc).__name__}: {detail})") from exc
        cond, uncond = compel.pad_conditioning_tensors_to_same_length([cond, uncond])
    if not (bool(torch.isfinite(cond).all()) and bool(torch.isfinite(uncond).all())):
        # `.blend(0, 0)` divides by a zero weight sum; reported later as "the sampler produced NaN", whose advice
        # (precision, sampler, steps) cannot help.
        raise PromptError("the prompt's weights give no usable conditioning (a .blend() whose weights sum to 0?)")
    return cond.to(**target), uncond.to(**target)


def _memoize_compels_grammar() -> None:
    """Turn on pyparsing's packrat memoization (once; it is process-wide) before compel parses.

    compel's grammar re-parses nested parentheses at every level without it: `((((((((a))))))))`-style emphasis,
    common in shared prompts, took 0.3 s at depth 3, 4.5 s at 5, 20 s at 6 and 65 s at 7 (compel 3.3.3, pyparsing
    3, this CPU, 2026-12-03), inside the parser where Ctrl-C cannot reach; with it, 0.01-0.05 s up to the nesting
    limit of 32. Parse results were compared equal with and without it over weights, blends, conjunctions,
    escapes, .swap and unclosed parentheses."""
    global _MEMOIZED
    if not _MEMOIZED:
        import pyparsing

        pyparsing.ParserElement.enable_packrat()
        _MEMOIZED = True


_MEMOIZED = False


class PromptError(ValueError):
    """A prompt that cannot be turned into conditioning, said in one line."""


_LORA = re.compile(r"withLora\s*\(|<(?:lora|lyco|hypernet):", re.IGNORECASE)  # compel's and AUTOMATIC1111's
_SWAP = re.compile(r"\.swap\s*\(")
_EMPTY_GROUP = re.compile(r"(?<![\w\\])\(\s*\)")  # `()`, `(())`, `()1.5`; not `.and()`, not an escaped `\(`


# Words, digits, spaces and commas only: nothing compel's grammar gives a meaning to (weights, blends, escapes).
# One character class repeated, so a match can only go one way: the earlier `[^\W_]*(?:[\s,]+[^\W_]*)*` (same
# language) could split each ", " several ways, and on a tag list ending in "." it backtracked through all of them,
# doubling with every tag (24 tags: 30.6 s, inside the regex engine, where Ctrl-C cannot reach; audit 2026-11-28).
# Two commas in a row are left to compel too: CLIP's tokenizer reads ",," as one token, compel as ", ," (audit
# 2026-12-03), so a negative's conditioning depended on whether the positive prompt had weighting syntax.
_PLAIN = re.compile(r"(?:[^\W_]|\s|,(?!\s*,))*")


def _plain_encode(components: Components, text: str) -> torch.Tensor | None:
    """CLIP's encoding of a prompt with no weighting syntax that fits one chunk, else None (compel's job).

    compel builds its pyparsing grammar and parses on every call: 28 ms of the 40 ms a plain prompt took here
    (cProfile, embedded model, 1 thread, 2026-11-27), more than the k_lms cache saves per 10-step image. For such
    a prompt compel's result is exactly this tensor (the tests pin it bit for bit), so skipping it changes nothing.
    """
    if not _PLAIN.fullmatch(text):
        return None
    tokenizer, encoder = components.tokenizer, components.text_encoder
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    if ids.shape[1] > tokenizer.model_max_length:
        return None
    with torch.no_grad():
        return encoder(ids.to(encoder.device))[0]
