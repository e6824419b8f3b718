"""Samplers through the Experiment: classifier-free guidance (pix2seq's formula and latent
hand-over), class labels for FID (uniform, reproducible) and grids (balanced), time difference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ncsn_rin import experiment
from ncsn_rin import sampling
from ncsn_rin import schedules
from ncsn_rin import validation
from tests import helpers


# ----------------------------------------------------------------------------------------------
# Guidance
# ----------------------------------------------------------------------------------------------

def test_guidance_formula_and_latents_of_the_conditional_pass():
  """ε = (1 + w)·ε(x, c) − w·ε(x, ∅); both passes read the same self-conditioning state and the
  conditional pass's new state is carried on (pix2seq `Scheduler.generate`)."""
  seen = []

  def eps_fn(x, gamma, self_cond, labels):
    seen.append((self_cond, np.asarray(labels)))
    return x * labels[:, None].astype(x.dtype), self_cond + labels.astype(x.dtype)

  guided = sampling.guided_eps_fn(eps_fn, 2.5, null_label=10)
  x, labels, state = jnp.ones((3, 2)), jnp.array([1, 4, 10]), jnp.zeros((3,))
  eps, new_state = guided(x, jnp.ones((3,)), state, labels)
  expected = (1 + 2.5) * np.array([[1.], [4.], [10.]]) - 2.5 * 10.
  np.testing.assert_allclose(eps, np.broadcast_to(expected, (3, 2)), rtol=1e-6)
  np.testing.assert_array_equal(new_state, [1., 4., 10.])          # the conditional pass's state
  assert [s is state for s, _ in seen] == [True, True]               # both read the same state
  np.testing.assert_array_equal(seen[1][1], [10, 10, 10])            # the null label
  assert sampling.guided_eps_fn(eps_fn, 0., null_label=10) is eps_fn  # w = 0: one pass


def _conditional_config(self_cond, guidance):
  config = helpers.tiny_rin_config()
  config.model.self_cond = self_cond
  config.diffusion.label_dropout = 0.1
  config.sample.guidance_scale = guidance
  return config


def _perturbed_params(exp):
  """Random non-init values (so the self-conditioning and class paths are not no-ops)."""
  return helpers.perturbed(exp.init_state()['ema_params'], seed=1, scale=0.2)


@pytest.mark.parametrize('self_cond', [True, False])
def test_guided_sampling_runs_and_w0_equals_the_unguided_sampler(self_cond):
  exps = {w: experiment.Experiment(_conditional_config(self_cond, w)) for w in (0., 3.)}
  params = _perturbed_params(exps[0.])
  key = jax.random.PRNGKey(0)
  plain, labels = exps[0.].sample_fn(8, balanced_labels=True)(params, key)
  guided, labels_g = exps[3.].sample_fn(8, balanced_labels=True)(params, key)
  np.testing.assert_array_equal(labels, labels_g)
  unguided_fn = sampling.make_diffusion_sample_fn(
      exps[0.].model, (8, 16, 16, 1), gamma_fn=schedules.get_gamma_fn('cosine'),
      num_steps=4, method='ddpm', b=1., pred_target='eps', normalize_input=False,
      time_difference=0., clip_x0=True, ddpm_variance='large', guidance_scale=0., num_classes=10,
      balanced_labels=True, self_cond=self_cond, sharding=exps[0.].batch_sharding)
  reference, _ = unguided_fn(params, key)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(reference))
  assert np.abs(np.asarray(guided, np.int32) - np.asarray(plain, np.int32)).max() > 0


def test_guidance_without_trained_null_class_is_rejected_naming_both_fields():
  config = helpers.tiny_rin_config()
  config.sample.guidance_scale = 2.
  with pytest.raises(validation.ConfigError,
                     match=r'sample.guidance_scale=2.0.*label_dropout > 0 \(now 0.0\)'):
    validation.validate(config, num_devices=8)


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------

def test_random_labels_are_uniform_and_reproducible():
  labels = np.asarray(sampling.sample_labels(jax.random.PRNGKey(3), 50_000, 10, balanced=False))
  counts = np.bincount(labels, minlength=10)
  assert scipy.stats.chisquare(counts).pvalue > 1e-3, counts
  again = sampling.sample_labels(jax.random.PRNGKey(3), 50_000, 10, balanced=False)
  np.testing.assert_array_equal(labels, again)
  other = sampling.sample_labels(jax.random.PRNGKey(4), 50_000, 10, balanced=False)
  assert (np.asarray(other) != labels).any()
  # Balanced labels would fail the same test the other way: too uniform for a random draw.
  balanced = np.asarray(sampling.sample_labels(None, 50_000, 10, balanced=True))
  assert scipy.stats.chisquare(np.bincount(balanced, minlength=10)).pvalue == 1.
  assert sampling.sample_labels(None, 5, 0, balanced=False) is None


def test_eval_labels_default_to_random_and_grids_to_balanced():
  exp = experiment.Experiment(helpers.tiny_rin_config())
  params = exp.init_state()['ema_params']
  _, grid_labels = exp.sample_fn(16, balanced_labels=True)(params, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(grid_labels, np.arange(16) % 10)
  _, eval_labels = exp.sample_fn(16)(params, jax.random.PRNGKey(0))
  assert not np.array_equal(np.asarray(eval_labels), np.arange(16) % 10)


# ----------------------------------------------------------------------------------------------
# Time difference
# ----------------------------------------------------------------------------------------------

def test_time_difference_changes_the_samples_and_stays_in_range():
  params = None
  outputs = {}
  for td in (0., 0.5):
    config = helpers.tiny_rin_config()
    config.sample.time_difference = td
    exp = experiment.Experiment(config)
    params = params if params is not None else _perturbed_params(exp)
    outputs[td], _ = exp.sample_fn(8)(params, jax.random.PRNGKey(0))
  assert outputs[0.].dtype == np.uint8
  assert np.abs(np.asarray(outputs[0.5], np.int32) - np.asarray(outputs[0.], np.int32)).max() > 0
