r"""Class-conditional pixel-space ImageNet 1024² with RIN (Chen 2023, Sec. 4).

Command (TPU pod / multi-GPU; see launch/ and the README "Running at scale"):
    python main.py --config=configs/rin_imagenet1024.py --workdir=gs://BUCKET/rin_imagenet1024 \
        --config.data.manual_dir=/path/to/imagenet_tars

Hardware: the paper trained on TPUv4 pods; global batch 1024, 1_000_000 steps. Parameters: 413.6M (paper: 412M)
(`ncsn_rin.models.param_count`, from abstract shapes). Expected: FID 8.72 (Chen 2023 headline, 1024²); not reproduced here (no TPU pod).
Schedule: `linear` training with input scale b = 0.1 and variance-normalised input, cosine DDPM
sampling (1000 steps) — the compound strategy. b = 0.1 as in the paper; FSDP and remat on.
"""

from configs import common


def get_config():
  return common.imagenet_rin_config(
      image_size=1024, patch_size=32, num_blocks=6, num_layers_per_block=4, num_latents=256,
      latent_dim=1024, tape_dim=640, input_scale=0.1, normalize_input=True,
      train_schedule='linear', learning_rate=1e-3, batch_size=1024, num_steps=1_000_000)
