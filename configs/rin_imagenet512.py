r"""Class-conditional pixel-space ImageNet 512² with RIN (Chen 2023's headline: FID 3.95).

Command (TPU pod / multi-GPU; see launch/ and the README "Running at scale"):
    python main.py --config=configs/rin_imagenet512.py --workdir=gs://BUCKET/rin_imagenet512 \
        --config.data.manual_dir=/path/to/imagenet_tars

Sources. Chen 2023's per-resolution tables (its Tables 1 and 2) could not be obtained here, and no
pix2seq config exists above 64², so:
    patch 8 → 4,096 tokens: the RIN paper, Sec. 4 ("8 for larger images");
    latent_slots 256: RIN's author on the larger models (lucidrains/recurrent-interface-network-
      pytorch#2: "16384 tokens with 256 latents" at 1024²);
    latent 1024 / tape 512, 6 blocks × 3 layers: no source — sized to the paper's 320M parameters
      (321.9M);
    b = 0.2 with variance normalisation and γ = 1 − t: no source — log b interpolated between 0.5
      at 256² and 0.1 at 1024² (Chen 2023, Sec. 3.2: smaller b for larger images);
    LAMB 1e-3, cosine@0.7, batch 1024, 10k warm-up, wd 1e-2, EMA 0.9999, self-conditioning 0.9:
      Chen 2023's stated optimiser settings; the learning rate and 1M steps have no source.
Parameters: about 320M (Chen 2023: 320M; tests/test_rin.py pins the count and the 5% check). FSDP
and remat on. Expected: FID 3.95 (50k samples, 1000 DDPM steps); not reproduced here.
"""

from configs import common


def get_config(arg: str = ''):
  config = common.imagenet_rin_config(
      image_size=512,
      model=dict(patch_size=8, num_blocks=6, num_layers_per_block=3, latent_slots=256,
                 latent_dim=1024, tape_dim=512, latent_heads=16, rw_heads=16, latent_mlp_ratio=4,
                 tape_mlp_ratio=4),
      input_scale=0.2, normalize_input=True, learning_rate=1e-3, cosine_fraction=0.7,
      num_steps=1_000_000)
  return common.finish(config, arg)
