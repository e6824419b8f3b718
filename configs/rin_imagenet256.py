r"""Class-conditional pixel-space ImageNet 256² with RIN (Chen 2023, Sec. 4).

Command (TPU pod / multi-GPU; see launch/ and the README "Running at scale"):
    python main.py --config=configs/rin_imagenet256.py --workdir=gs://BUCKET/rin_imagenet256 \
        --config.data.manual_dir=/path/to/imagenet_tars

Hardware: the paper trained on TPUv4 pods; global batch 1024, 700_000 steps. Parameters: 267.9M
(`ncsn_rin.models.param_count`, from abstract shapes). Expected: the FID reported for 256² in Chen 2023 (Table 4); not reproduced here.
Schedule: `linear` training with input scale b = 0.5 and variance-normalised input, cosine DDPM
sampling (1000 steps) — the compound strategy. b = 0.5 as in the paper.
"""

from configs import common


def get_config():
  return common.imagenet_rin_config(
      image_size=256, patch_size=8, num_blocks=4, num_layers_per_block=4, num_latents=256,
      latent_dim=1024, tape_dim=512, input_scale=0.5, normalize_input=True,
      train_schedule='linear', learning_rate=1e-3, batch_size=1024, num_steps=700_000)
