r"""RIN on CIFAR-10 32², the official pix2seq recipe (`configs/config_diffusion_cifar10.py`, Tape).

Command:
    python main.py --config=configs/rin_cifar10.py --workdir=/path/to/rin_cifar10
    python main.py --config=configs/rin_cifar10.py --workdir=/path/to/rin_cifar10 --mode=fid_stats
    python main.py --config=configs/rin_cifar10.py --workdir=/path/to/rin_cifar10 --mode=eval
`--config=configs/rin_cifar10.py:uncond` gives the unconditional variant (not the released one).

Hardware: one TPU v3-8 / 8 GPUs class machine (batch 256, 150k steps). Expected: FID 1.81, IS 10.3
(Jabri, google-research/pix2seq#35: `sigmoid@-3,3,0.9` training, 1000 DDPM steps with the cosine
schedule, 50k samples); not reproduced here. The released config is class-conditional (Ting Chen
calls it "the full config" in the same thread); the thread never says whether the 1.81 model was,
so that is our inference.

Every value and its source (pix2seq `config_diffusion_cifar10.py` sweep + `config_diffusion_base.py`):
    patch 2 → 256 tokens; 3 blocks × 2 layers ('2,2,2'); latent_slots 128 (126 learned + time +
    class); latent 512, 16 heads, MLP ×4; tape 256, MLP ×2; read/write 8 heads; dropout
    (drop_units) 0.1, drop_path 0.1 ("one thing important in cifar10 was dropout", Ting Chen,
    pix2seq#35); time_scaling 1000; self_cond 'latent' by masking at rate 0.9; ε-prediction, b = 1,
    no variance normalisation; LAMB 3e-3, cosine@0.8, 10k warm-up, wd 1e-2, β2 0.999; EMA 0.9999;
    batch 256; 150k steps; eval DDPM with the cosine schedule (400 and 1000 steps swept).
Parameters: 30,951,180 (the RIN paper: 31M; `tests/test_rin.py` pins it).
"""

from configs import common


def get_config(arg: str = ''):
  config = common.base_config()
  config.data.name = 'cifar10'
  config.data.image_size = 32
  config.data.num_classes = 0 if arg == 'uncond' else 10
  config.data.random_flip = True
  config.model = common.model_config(
      'rin', patch_size=2, num_blocks=3, num_layers_per_block=2,
      latent_slots=127 if arg == 'uncond' else 128, latent_dim=512, tape_dim=256,
      latent_heads=16, rw_heads=8, latent_mlp_ratio=4, tape_mlp_ratio=2, dropout=0.1,
      drop_path=0.1, time_scale=1000., self_cond=True)
  d = config.diffusion
  d.train_schedule = 'sigmoid@-3,3,0.9'
  d.sample_schedule = 'cosine'
  d.input_scale = 1.0
  d.normalize_input = False
  common.rin_recipe(config, learning_rate=3e-3, cosine_fraction=0.8, batch_size=256,
                    num_steps=150_000)
  t = config.train
  t.checkpoint_every = 10_000
  t.keep_every = 10_000
  t.sample_every = 10_000
  config.sample.batch_size = 500
  return common.finish(config, '' if arg == 'uncond' else arg)
