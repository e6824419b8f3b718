r"""Class-conditional pixel-space ImageNet 128² with RIN and the noise-scheduling recipe (Chen 2023).

Command (TPU pod / multi-GPU; see launch/ and the README "Running at scale"):
    python main.py --config=configs/rin_imagenet128.py --workdir=gs://BUCKET/rin_imagenet128 \
        --config.data.manual_dir=/path/to/imagenet_tars

Sources. Chen 2023's per-resolution tables (its Tables 1 and 2) could not be obtained here, and no
pix2seq config exists above 64², so:
    patch 4 → 1,024 tokens: the RIN paper, Sec. 4 ("a patch size of 4 for 64×64 and 128×128
      images, and 8 for larger images");
    latent_slots 128, latent 768 / tape 512, 4 blocks × 4 layers, heads, MLP ratios: no source —
      the 64² model's widths and depth (pix2seq), as RIN scales resolution through the tokens;
    b = 0.7 with variance normalisation, γ = 1 − t: no source — log b interpolated between b = 1 at
      64² and b = 0.5 at 256² (Chen 2023, Sec. 3.2: smaller b for larger images);
    LAMB 2e-3, cosine@0.7, batch 1024, 10k warm-up, wd 1e-2, EMA 0.9999, self-conditioning 0.9:
      the pix2seq 64² recipe and Chen 2023's stated optimiser settings; 700k steps: no source.
Parameters: pinned in tests/test_rin.py. Expected: the RIN paper's ImageNet-128 FID 2.75; not
reproduced here.
"""

from configs import common


def get_config(arg: str = ''):
  config = common.imagenet_rin_config(
      image_size=128,
      model=dict(patch_size=4, num_blocks=4, num_layers_per_block=4, latent_slots=128,
                 latent_dim=768, tape_dim=512, latent_heads=16, rw_heads=16, latent_mlp_ratio=4,
                 tape_mlp_ratio=4),
      input_scale=0.7, normalize_input=True, learning_rate=2e-3, cosine_fraction=0.7,
      num_steps=700_000)
  return common.finish(config, arg)
