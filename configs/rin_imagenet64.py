r"""Class-conditional pixel-space ImageNet 64² with RIN: the official pix2seq recipe
(`configs/config_diffusion_imagenet64.py`, Tape).

Command (TPU pod / multi-GPU; see launch/ and the README "Running at scale"):
    python main.py --config=configs/rin_imagenet64.py --workdir=gs://BUCKET/rin_imagenet64 \
        --config.data.manual_dir=/path/to/imagenet_tars

Every value and its source (pix2seq `config_diffusion_imagenet64.py` sweep):
    patch 8 → 64 tokens (the released config; it carries a `# 4` comment and the RIN paper, Sec. 4,
    states patch 4 for 64² — we follow the code); 4 blocks × 4 layers; latent_slots 128 (126
    learned + time + class); latent 768, 16 heads, MLP ×4; tape 512, MLP ×4; read/write 16 heads; no
    dropout; 'simple_linear' training schedule (γ = 1 − t), b = 1, no variance normalisation;
    ε-prediction; self-conditioning by masking at 0.9; LAMB 2e-3, cosine@0.7, 10k warm-up, wd 1e-2;
    batch 1024; 150k steps; EMA 0.9999; eval DDPM, cosine schedule, 100/250/1000 steps.
Parameters: pinned in tests/test_rin.py. Expected: the RIN paper's ImageNet-64 FID 1.23 (1000
steps; as cited by later papers); not reproduced here.
"""

from configs import common


def get_config(arg: str = ''):
  config = common.imagenet_rin_config(
      image_size=64,
      model=dict(patch_size=8, num_blocks=4, num_layers_per_block=4, latent_slots=128,
                 latent_dim=768, tape_dim=512, latent_heads=16, rw_heads=16, latent_mlp_ratio=4,
                 tape_mlp_ratio=4),
      input_scale=1.0, normalize_input=False, learning_rate=2e-3, cosine_fraction=0.7,
      num_steps=150_000)
  return common.finish(config, arg)
