r"""Class-conditional pixel-space ImageNet 128² with RIN (Chen 2023, Sec. 4).

Command (TPU pod / multi-GPU; see launch/ and the README "Running at scale"):
    python main.py --config=configs/rin_imagenet128.py --workdir=gs://BUCKET/rin_imagenet128 \
        --config.data.manual_dir=/path/to/imagenet_tars

Hardware: the paper trained on TPUv4 pods; global batch 1024, 700_000 steps. Parameters: 158.1M
(`ncsn_rin.models.param_count`, from abstract shapes). Expected: the FID reported for 128² in Chen 2023 (Table 4); not reproduced here.
Schedule: `linear` training with input scale b = 0.7 and variance-normalised input, cosine DDPM
sampling (1000 steps) — the compound strategy. b = 0.7 is our choice: log b interpolated between b = 1 at 64² and b = 0.5 at 256².
"""

from configs import common


def get_config():
  return common.imagenet_rin_config(
      image_size=128, patch_size=4, num_blocks=4, num_layers_per_block=4, num_latents=128,
      latent_dim=768, tape_dim=512, input_scale=0.7, normalize_input=True,
      train_schedule='linear', learning_rate=1e-3, batch_size=1024, num_steps=700_000)
