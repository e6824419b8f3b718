r"""Class-conditional pixel-space ImageNet 64² with RIN (Chen 2023, Sec. 4).

Command (TPU pod / multi-GPU; see launch/ and the README "Running at scale"):
    python main.py --config=configs/rin_imagenet64.py --workdir=gs://BUCKET/rin_imagenet64 \
        --config.data.manual_dir=/path/to/imagenet_tars

Hardware: the paper trained on TPUv4 pods; global batch 1024, 150_000 steps. Parameters: 157.8M
(`ncsn_rin.models.param_count`, from abstract shapes). Expected: the RIN paper's ImageNet-64 FID (no guidance); not reproduced here.
Schedule: `linear` training with input scale b = 1.0, cosine DDPM
sampling (1000 steps) — the compound strategy. Patch 8, 4 blocks × 4, 128 latents × 768, interface 512 (the official RIN ImageNet-64 recipe).
"""

from configs import common


def get_config():
  return common.imagenet_rin_config(
      image_size=64, patch_size=8, num_blocks=4, num_layers_per_block=4, num_latents=128,
      latent_dim=768, tape_dim=512, input_scale=1.0, normalize_input=False,
      train_schedule='linear', learning_rate=2e-3, batch_size=1024, num_steps=150_000)
