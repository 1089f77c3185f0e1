"""Architecture of the embedded model: a small vocabulary CLIP tokenizer and tiny real SD components."""

from __future__ import annotations

import json
from pathlib import Path

from invoke_repl.bpe import bytes_to_unicode

from . import world

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# The longest world caption is 15 tokens with BOS/EOS. 32 positions instead of CLIP's 77 cut a training step from
# 1.17 s to 0.74 s (batch 32, 1 thread; measured 2026-11-27): cross-attention and the text encoder scale with it.
# Longer prompts still work: compel encodes them in model_max_length chunks.
MAX_LEN = 32
# Words beyond the world's captions that still get single tokens (harmless, makes odd prompts cheaper).
EXTRA_WORDS = ("with", "drawing", "picture", "crude", "photo", "big", "tiny", "an", "is", "two")

SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",  # runs 7 and 9 predict epsilon; run 3 (v) drew soft shapes (MODEL_CARD.md)
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
    "timestep_spacing": "leading",
}


def build_merges(words) -> list[tuple[str, str]]:
    """BPE merges (CLIP style, `</w>` end-of-word suffix) so that each word encodes to exactly one token.

    Simulates BPE encoding and adds merges until every word is a single token; merges added later have lower
    priority, and the loop re-checks all words after each round so earlier merges can't break later words.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def encode(word: str) -> list[str]:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
            r, i = min(pairs)
            if r == 1 << 30:
                break
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
        return parts

    for w in sorted(set(words), key=lambda w: (len(w), w)):
        parts = encode(w)
        while len(parts) > 1:  # a new merge has the lowest priority, so it can't change words already merged
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            parts = encode(w)
    bad = [w for w in words if len(encode(w)) != 1]
    if bad:
        raise RuntimeError(f"could not merge {bad}")
    return merges


def write_tokenizer(folder: Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = list(world.WORDS) + list(EXTRA_WORDS)
    merges = build_merges(words)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    seen = set(vocab_list)
    for a, b in merges:
        t = a + b
        if t not in seen:
            vocab_list.append(t)
            seen.add(t)
    vocab_list += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2)
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": MAX_LEN,
                "do_lower_case": True,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "add_prefix_space": False,
                "clean_up_tokenization_spaces": True,
                "errors": "replace",
            },
            indent=2,
        )
    )


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LEN,
        projection_dim=128,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_text_encoder(tokenizer):
    from transformers import CLIPTextModel

    return CLIPTextModel(text_config(tokenizer))


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=world.NATIVE_SIZE,
        scaling_factor=1.0,
        mid_block_add_attention=False,  # fully convolutional: trains on crops, cheap at any size
    )


def make_unet(text_dim: int = 128):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=world.NATIVE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        # 16x16 plain convs, cross-attention at 8x8, 4x4 and the mid block (attention at 16x16 tripled the
        # training step time on the 2-core CPU)
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),  # thin at 16x16: the CPU budget buys ~2.5x more steps than (64, 96, 128)
        layers_per_block=1,
        cross_attention_dim=text_dim,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())
