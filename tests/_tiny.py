"""Tiny random models saved in their real on-disk formats, shared by the tests that read them as a user's files."""
from pathlib import Path

def tiny_blip2(d: Path) -> Path:
    "A tiny random BLIP-2 (OPT) + processor written with save_pretrained, as a downloaded checkpoint is."
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, Blip2VisionConfig,
                              Blip2QFormerConfig, OPTConfig, PreTrainedTokenizerFast)
    torch.manual_seed(0)
    vis = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    qf = Blip2QFormerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=32, vocab_size=100)
    txt = OPTConfig(vocab_size=1000, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2, word_embed_proj_dim=32)
    cfg = Blip2Config(vision_config=vis.to_dict(), qformer_config=qf.to_dict(), text_config=txt.to_dict(), num_query_tokens=4)
    cfg.image_token_index = 3
    words = ['<pad>', '</s>', '<unk>', '<image>'] + [f'w{i}' for i in range(996)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<unk>')); tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token='<pad>', eos_token='</s>', bos_token='</s>', unk_token='<unk>')
    Blip2ForConditionalGeneration(cfg).save_pretrained(d)
    Blip2Processor(image_processor=BlipImageProcessor(size={'height': 32, 'width': 32}), tokenizer=tok, num_query_tokens=4).save_pretrained(d)
    return d
