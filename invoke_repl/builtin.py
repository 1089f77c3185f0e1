"""`tiny-random`: a small model of the SD 1.x architecture built in code from a fixed seed.

Same classes and data flow as a real SD 1.x checkpoint (CLIP text encoder with the real CLIP tokenizer, a
cross-attention UNet, a KL autoencoder, SD's scheduler config), but small enough that the test-suite can run
hundreds of generations on two CPU cores. Its weights are identical on every machine: they are drawn from a
seeded CPU generator, never downloaded and never stored.
"""

from __future__ import annotations

import hashlib

from invoke_repl.components import Components
from invoke_repl.paths import clip_tokenizer_dir

TINY_RANDOM_SEED = 20221029

# SD 1.x's scheduler config (v1-inference.yaml: linear_start 0.00085, linear_end 0.012, 1000 timesteps).
SD1_SCHEDULER_CONFIG: dict = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "trained_betas": None,
}


def load_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """CLIP's tokenizer from the files under configs/ (SD 2.x pads with "!" instead of <|endoftext|>)."""
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_dir()
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        pad_token=pad_token,
        model_max_length=77,
    )


def build_tiny_random() -> Components:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_RANDOM_SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=16,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=16,
            sample_size=64,
        )
    for module in (text_encoder, unet, vae):
        module.eval().requires_grad_(False)
    return Components(
        name="tiny-random",
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=dict(SD1_SCHEDULER_CONFIG),
        sha256=modules_sha256(text_encoder, unet, vae),
        family="sd-1",
    )


def modules_sha256(*modules) -> str:
    """A stable hash of weights held only in memory (a file-backed model hashes its files instead)."""
    digest = hashlib.sha256()
    for module in modules:
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
