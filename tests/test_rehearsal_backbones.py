"""Dress rehearsal of the text-to-image backbones' real path: tiny random models saved in the official file formats
(Infinity `.pth` + BSQ VAE `.pth` + a T5 folder; HART's released folder layout + tokenizer folder + a Qwen2 folder),
filled into a real profile of params.yaml, and `mvp-vpg sample --model …` run as a user would, to the end."""
import json, subprocess, sys
from pathlib import Path
import pytest, torch, yaml
from safetensors.torch import load_file, save_file

DATA = Path(__file__).parent / 'data'
ROOT = Path(__file__).resolve().parents[1]

def _sub(rec, prefix): return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}

def _run(args, cwd):
    r = subprocess.run([sys.executable, '-m', 'mvp_vpg.stages', *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout + r.stderr

def _params(tmp, profile, paths):
    p = yaml.safe_load((ROOT / 'params.yaml').read_text())
    p['profile'] = profile; p['profiles'][profile].update({k: str(v) for k, v in paths.items()})
    (tmp / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))

def _geneval_prompts(tmp):
    meta = tmp / 'evaluation_metadata.jsonl'
    meta.write_text(''.join(json.dumps({'tag': 'colors', 'prompt': t, 'include': []}) + '\n' for t in ('a red car', 'a blue dog')))
    return meta

def test_infinity_profile_end_to_end(tmp_path):
    from mvp_vpg.models.t5_text import make_tiny_t5
    rec = load_file(str(DATA / 'infinity_A.safetensors'))
    torch.save(_sub(rec, 'infinity.'), tmp_path / 'infinity_2b_reg.pth')
    torch.save({'vae': _sub(rec, 'vae.')}, tmp_path / 'infinity_vae_d32_reg.pth')
    t5 = make_tiny_t5(tmp_path / 'flan-t5-xl', d_model=json.loads((DATA / 'infinity_A.json').read_text())['config']['text_channels'], layers=1)
    _params(tmp_path, 'infinity_2b', {'checkpoint': tmp_path / 'infinity_2b_reg.pth', 'vae': tmp_path / 'infinity_vae_d32_reg.pth', 'text_encoder': t5})
    args = ['sample', '--model', 'infinity', '--params', 'params.yaml', '--prompts', str(_geneval_prompts(tmp_path)), '--layout', 'geneval',
            '--n-per-prompt', '2', '--pn', '0.06M', '--mode', 'reference', '--vpg-lambda', '1', '--out', 'geneval', '--no-progress']
    rc, out = _run(args, tmp_path)
    assert rc == 0, out[-3000:]
    files = sorted(str(f.relative_to(tmp_path / 'geneval')) for f in (tmp_path / 'geneval').rglob('*.png'))
    assert files == ['00000/samples/00000.png', '00000/samples/00001.png', '00001/samples/00000.png', '00001/samples/00001.png']
    assert json.loads((tmp_path / 'geneval' / '00001' / 'metadata.jsonl').read_text())['prompt'] == 'a blue dog'
    man = json.loads((tmp_path / 'geneval' / 'manifest.json').read_text())
    assert man['complete'] and man['settings']['guidance'].startswith('VPG') and len(man['settings']['files_sha256']) == 2
    rc, out = _run(args, tmp_path)                      # the same command again: a resumed, complete run
    assert rc == 0, out[-3000:]
    (tmp_path / 'infinity_2b_reg.pth').write_text('not a checkpoint')
    rc, out = _run(args[:-3] + ['--out', 'other', '--no-progress'], tmp_path)
    assert rc == 2 and 'infinity_2b_reg.pth' in out and 'Traceback' not in out, out[-2000:]

def test_hart_profile_end_to_end(tmp_path):
    from transformers import Qwen2Tokenizer, Qwen2Config, Qwen2Model
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    meta = json.loads((DATA / 'hart_A.json').read_text())
    rec = load_file(str(DATA / 'hart_A.safetensors'))
    llm = tmp_path / 'hart-0.7b-1024px' / 'llm'; llm.mkdir(parents=True)
    (llm / 'config.json').write_text(json.dumps({**meta['config']['transformer'], 'architectures': ['HARTForT2I']}))
    torch.save(_sub(rec, 'hart.'), llm / 'ema_model.bin')
    tok = tmp_path / 'hart-0.7b-1024px' / 'tokenizer'; tok.mkdir()
    (tok / 'config.json').write_text(json.dumps(meta['config']['tokenizer']))
    save_file({'vae.' + k: v.contiguous() for k, v in _sub(rec, 'vae.').items()}, str(tok / 'model.safetensors'))
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}; vocab['<|endoftext|>'] = len(vocab)
    torch.manual_seed(0)
    qdir = tmp_path / 'qwen2'
    Qwen2Tokenizer(vocab=vocab, merges=[]).save_pretrained(qdir)
    Qwen2Model(Qwen2Config(vocab_size=len(vocab), hidden_size=meta['config']['transformer']['context_dim'], intermediate_size=32,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)).save_pretrained(qdir)
    _params(tmp_path, 'hart_0.7b', {'checkpoint': tmp_path / 'hart-0.7b-1024px', 'vae': tok, 'text_encoder': qdir})
    rc, out = _run(['sample', '--model', 'hart', '--params', 'params.yaml', '--prompt', 'a red car', '--prompt', 'a blue dog',
                    '--mode', 'reference', '--out', 'numbered', '--no-progress'], tmp_path)
    assert rc == 0, out[-3000:]
    assert sorted(f.name for f in (tmp_path / 'numbered').glob('*.png')) == ['000000.png', '000001.png']
    assert (tmp_path / 'numbered' / 'texts.txt').read_text().split('\n')[:2] == ['a red car', 'a blue dog']
