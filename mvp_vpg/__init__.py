"""MVP (multi-scale visual prompt tuning) and VPG (visual prefix guidance) for next-scale visual autoregressive models

Modules:

- `mvp_vpg.models.infinity`: The Infinity text-to-image transformer (bitwise next-scale prediction) with the official key names, a KV-cached step for sampling, the block-causal teacher-forcing forward, and loading of the official 2B `.pth` and the sharded 8B.
- `mvp_vpg.models.infinity_backbone`: `InfinityBackbone`: the Infinity transformer and its BSQ tokenizer seen through `NextScaleBackbone`, so the shared sampler, guidance rules and prompts run on the official Infinity checkpoints.
- `mvp_vpg.models.infinity_layers`: Scale schedules, the 2D RoPE table, the varlen text condition and the attention blocks of Infinity (bitwise VAR for text-to-image), with the official key names and the official numerics.
- `mvp_vpg.models.infinitystar`: The InfinityStar text-to-video transformer (`infinity_qwen8b`: decoder-only, text prefix in the same self-attention, GQA, 4-axis RoPE, bitwise semantic/detail heads) with the official key names, the KV-cached step of the official sampler, the clip-wise teacher-forcing forward, and loading of the official shard folders.
- `mvp_vpg.models.infinitystar_backbone`: `InfinityStarBackbone`: the InfinityStar transformer and its spacetime bit tokenizer seen through `NextScaleBackbone`, so the shared sampler, guidance rules (APG, CFG, VPG) and prompts run on text-to-video.
- `mvp_vpg.models.infinitystar_layers`: The spacetime scale schedules of InfinityStar (clips, scales, repetitions, semantic/detail boundary), its 4-axis RoPE, the qwen-style decoder block (GQA, per-head q/k RMSNorm, SwiGLU) and the per-scale KV cache.
- `mvp_vpg.models.t5_text`: The flan-T5-XL encoder (through `transformers`, from a local folder) turning prompts into the varlen text condition `TextCond` that Infinity's transformer and backbone take.
- `mvp_vpg.sampling.apg`: InfinityStar's default guidance rule (`use_apg=1`): the CFG difference, capped in RMS and stripped of its component along the conditional logits, as a guidance rule with the branches cond / uncond.
- `mvp_vpg.sampling.infinity`: `sample_infinity`: the official Infinity sampler (`autoregressive_infer_cfg`) expressed with the shared `sample_scales`, so CFG, VPG and MVP prompts run on Infinity unchanged.
- `mvp_vpg.sampling.infinitystar`: `sample_infinitystar`: the official InfinityStar video sampler (`ar_infer_infinity_elegant`) expressed with the shared `sample_scales`, so APG / CFG, VPG and prompts run on InfinityStar unchanged.
- `mvp_vpg.toy.infinity_eval`: Samples of the toy Infinity per Shapes prompt category (`preview_infinity`), and the check that matters: GenEval-style scores (shapes network + `check_prompt`) of images drawn from their own prompts vs from shuffled prompts (`prompt_following`). A model that ignores the text scores the same on both.
- `mvp_vpg.toy.infinity_train`: Train a toy Infinity for the Shapes world on a CPU: the BSQ tokenizer (Infinity's VAE at 32 px, 8x8 latent, 5-scale schedule 1-2-4-6-8) and a small text-conditional Infinity transformer reading per-token states of the frozen toy CLIP text tower. Resumable and atomic like `toy.train`; the folders load with `load_toy_bsq` / `load_toy_infinity`, and `ToyTextEncoder` turns strings into the `TextCond` the transformer reads."""

__version__ = "0.0.1"
