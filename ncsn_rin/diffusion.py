"""Continuous-time Gaussian diffusion of Chen 2023 (pix2seq / RIN): forward process, loss, samplers.

Forward process (Chen 2023, Sec. 2 / Algorithm 1), with y = b·x0 the scaled data (Sec. 3.2):

    x_t = sqrt(γ) · y + sqrt(1 − γ) · ε,   t ~ U(0, 1),   γ = γ(t),   ε ~ N(0, I).

Prediction targets: 'eps' (ε), 'x' (x0 in DATA units, not multiplied by b) and 'v'
(v = sqrt(γ)·ε − sqrt(1 − γ)·y, Salimans & Ho 2022). Everything here is a pure function; the network
enters as a callable and schedules as functions t -> γ (see `ncsn_rin.schedules`).

Shapes: images / data are [B, ...]; γ and t are [B] and broadcast over the non-batch axes.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ncsn_rin import schedules


def _expand(gamma, x):
  """Reshapes per-example γ [B] (or a scalar) to [B, 1, ..., 1] to broadcast against x [B, ...]."""
  gamma = jnp.asarray(gamma, dtype=x.dtype)
  if gamma.ndim == 0:
    return gamma
  return gamma.reshape(gamma.shape + (1,) * (x.ndim - gamma.ndim))


# --------------------------------------------------------------------------------------------------
# Forward process and parameterisations.
# --------------------------------------------------------------------------------------------------


def add_noise(x0, gamma, noise, b=1.):
  """x_t = sqrt(γ)·(b·x0) + sqrt(1 − γ)·ε (Chen 2023, Algorithm 1, Sec. 3.2).

  x0 [B, ...] in data units (e.g. [−1, 1]), gamma [B], noise ε [B, ...] -> x_t [B, ...].
  """
  g = _expand(gamma, x0)
  return jnp.sqrt(g) * (b * x0) + jnp.sqrt(1. - g) * noise


def normalize_variance(x_t):
  """x_t [B, ...] divided by its per-example std (Chen 2023, Sec. 3.2, variance normalization).

  Used on the network input at training and at sampling alike, as pix2seq
  `image_diffusion_model.denoise` (`x /= reduce_std(x, non-batch axes)`, no epsilon: x_t always
  holds noise).
  """
  return x_t / jnp.std(x_t, axis=tuple(range(1, x_t.ndim)), keepdims=True)


def eps_to_y(eps, x_t, gamma):
  """y = b·x0 = (x_t − sqrt(1 − γ)·ε) / sqrt(γ); eps, x_t [B, ...], gamma [B] -> y [B, ...]."""
  g = _expand(gamma, x_t)
  return (x_t - jnp.sqrt(1. - g) * eps) / jnp.sqrt(g)


def y_to_eps(y, x_t, gamma):
  """ε = (x_t − sqrt(γ)·y) / sqrt(1 − γ); y = b·x0, x_t [B, ...], gamma [B] -> ε [B, ...]."""
  g = _expand(gamma, x_t)
  return (x_t - jnp.sqrt(g) * y) / jnp.sqrt(1. - g)


def pred_to_eps(pred, x_t, gamma, target: str = 'eps', b=1.):
  """Converts a network prediction to ε for the raw x_t (Chen 2023 Sec. 2; v of Salimans & Ho 2022).

  'eps': ε = pred. 'x' (x0 in data units): ε = (x_t − sqrt(γ)·b·pred) / sqrt(1 − γ).
  'v': ε = sqrt(γ)·v + sqrt(1 − γ)·x_t. pred [B, ...] in the units of `target`, x_t [B, ...] (raw,
  not variance-normalised), gamma [B] -> ε [B, ...].
  """
  if target == 'eps':
    return pred
  if target == 'x':
    return y_to_eps(b * pred, x_t, gamma)
  g = _expand(gamma, x_t)
  return jnp.sqrt(g) * pred + jnp.sqrt(1. - g) * x_t


def make_target(x0, noise, gamma, target: str = 'eps', b=1.):
  """Regression target of the training loss (Chen 2023, Algorithm 1; v of Salimans & Ho 2022).

  'eps': ε. 'x': x0 (data units). 'v': sqrt(γ)·ε − sqrt(1 − γ)·b·x0. x0, noise [B, ...],
  gamma [B] -> target [B, ...].
  """
  if target == 'eps':
    return noise
  if target == 'x':
    return x0
  g = _expand(gamma, x0)
  return jnp.sqrt(g) * noise - jnp.sqrt(1. - g) * (b * x0)


def _net_input(x_t, normalize_input: bool):
  """Network input: x_t, variance-normalised when `normalize_input` (Chen 2023, Sec. 3.2)."""
  return normalize_variance(x_t) if normalize_input else x_t


def make_eps_fn(net_fn: Callable, *, pred_target: str = 'eps', normalize_input: bool = False, b=1.):
  """Wraps a raw network into `eps_fn(x_t, gamma, self_cond) -> (eps, self_cond_out)` for `sample`.

  `net_fn(net_input, gamma, self_cond) -> (pred, self_cond_out)`: net_input [B, ...] is x_t
  (variance-normalised when `normalize_input`, Chen 2023, Sec. 3.2), gamma [B], self_cond any
  pytree (e.g. RIN latents) or None; pred in the units of `pred_target` ('eps' | 'x' | 'v'). eps
  [B, ...] is for the raw x_t. Without self-conditioning use `lambda x, g: eps_fn(x, g, None)[0]`.
  """

  def eps_fn(x_t, gamma, self_cond=None):
    pred, self_cond_out = net_fn(_net_input(x_t, normalize_input), gamma, self_cond)
    return pred_to_eps(pred, x_t, gamma, pred_target, b), self_cond_out

  return eps_fn


# --------------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------------


def drop_labels(labels, key, rate: float, null_label: int):
  """Replaces each label [B] by `null_label` with probability `rate` (classifier-free guidance
  training, Ho & Salimans 2022, Algorithm 1)."""
  drop = jax.random.bernoulli(key, rate, labels.shape)
  return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def diffusion_loss(net_fn: Callable, x0, key, *, gamma_fn: Callable, b=1., pred_target: str = 'eps',
                   normalize_input: bool = False, self_cond_rate: float = 0.9,
                   self_cond_init: Optional[Any] = None):
  """Unweighted MSE diffusion loss of Chen 2023, Algorithm 1, with pix2seq's self-conditioning.

  Randomness: `key_t, key_noise, key_mask, key_first, key_second = jax.random.split(key, 5)`;
  t = uniform(key_t, [B]), ε = normal(key_noise, x0.shape); the self-conditioning mask and the two
  passes use the other keys, so the passes draw their dropout and label dropout independently (as
  pix2seq, where each pass calls the network with `training=True`).

  `net_fn(net_input, gamma, self_cond, key) -> (pred, self_cond_out)`, pred [B, ...] in the units
  of `pred_target` ('eps' | 'x' | 'v'), key the pass's randomness (dropout, label dropout — see
  `drop_labels`); x0 [B, ...] in data units; gamma_fn the training schedule t -> γ.
  `self_cond_init`: initial self-conditioning pytree (e.g. zero latents), or None for a single pass
  with self_cond=None. Otherwise latent self-conditioning by masking (pix2seq
  `add_self_cond_hidden`, `self_cond_by_masking`): a first pass from `self_cond_init` runs on the
  whole batch; each example keeps its self_cond_out with probability `self_cond_rate` and gets
  zeros otherwise; no gradient flows through it.

  Returns (loss, aux): the scalar mean over all elements of (pred − target)², and
  {'t' [B], 'gamma' [B]}.
  """
  key_t, key_noise, key_mask, key_first, key_second = jax.random.split(key, 5)
  t = jax.random.uniform(key_t, (x0.shape[0],), dtype=x0.dtype)
  noise = jax.random.normal(key_noise, x0.shape, dtype=x0.dtype)
  gamma = gamma_fn(t)
  x_t = add_noise(x0, gamma, noise, b)
  net_input = _net_input(x_t, normalize_input)
  self_cond = None
  if self_cond_init is not None:
    _, first = net_fn(net_input, gamma, self_cond_init, key_first)
    keep = jax.random.bernoulli(key_mask, self_cond_rate, (net_input.shape[0],))
    mask = lambda h: keep.reshape((-1,) + (1,) * (h.ndim - 1)).astype(h.dtype)
    self_cond = jax.tree.map(lambda h: jax.lax.stop_gradient(h * mask(h)), first)
  pred, _ = net_fn(net_input, gamma, self_cond, key_second)
  target = make_target(x0, noise, gamma, pred_target, b)
  loss = jnp.mean(jnp.square(pred - target))
  return loss, {'t': t, 'gamma': gamma}


# --------------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------------


def step_times(step, num_steps: int, time_difference=0.):
  """(t_now, t_next) of sampling step `step` in [0, N) (pix2seq `Scheduler.generate`; Analog Bits,
  Algorithm 2); step may be traced, N = num_steps, td = time_difference in units of one step.

  t_now = 1 − step / N is the time the model is evaluated at; the state moves to
  t_next = max(1 − (step + 1 + td) / N, 0). With td > 0 ("asymmetric time intervals") the state is
  thus always td / N earlier than the time the model is told, i.e. the model sees t + td / N
  (clipped to 1 at the first step, which starts at t = 1).
  """
  step = jnp.asarray(step, dtype=jnp.result_type(float))
  t_now = 1. - step / num_steps
  t_next = jnp.maximum(1. - (step + 1. + time_difference) / num_steps, 0.)
  return t_now, t_next


def _ddpm_step(x, y, g_now, g_next, key, variance: str):
  """Ancestral DDPM update from t to s < t (Ho et al. 2020, Eqs. 6-7; pix2seq `transition_step`).

  α = γ_t / γ_s, β = 1 − α. Mean of q(x_s | x_t, y), written in y rather than ε (equal to Ho et al.
  Eq. 11 for y = (x_t − sqrt(1 − γ_t) ε) / sqrt(γ_t), but stable as γ_t -> 0):
      μ = sqrt(γ_s)·β / (1 − γ_t) · y + sqrt(α)·(1 − γ_s) / (1 − γ_t) · x_t.
  Variance 'large' = β, 'small' = (1 − γ_s) / (1 − γ_t) · β (the posterior variance).
  """
  alpha = jnp.clip(g_now / g_next, 0., 1.)
  beta = 1. - alpha
  mean = (jnp.sqrt(g_next) * beta / (1. - g_now) * y
          + jnp.sqrt(alpha) * (1. - g_next) / (1. - g_now) * x)
  var = beta if variance == 'large' else (1. - g_next) / (1. - g_now) * beta
  return mean + jnp.sqrt(var) * jax.random.normal(key, x.shape, x.dtype)


def _dpm_solver_pp_step(x, y, y_prev, g_now, g_next, lam_prev, is_first):
  """Multistep DPM-Solver++(2M) in data-prediction form (Lu et al. 2022, Algorithm 2 / Eq. 9).

  With α = sqrt(γ), σ = sqrt(1 − γ), λ = log(α / σ), h = λ_next − λ_now, r = h_prev / h:
      D = (1 + 1/(2r))·y − 1/(2r)·y_prev          (first-order D = y at the first and last step)
      x_next = (σ_next / σ_now)·x − α_next·(e^(−h) − 1)·D
             = (σ_next / σ_now)·x + (α_next − σ_next·α_now / σ_now)·D.
  The last step (γ_next = 1, λ_next = ∞) is first-order and lands on x_next = y.
  x [B, ...]; y, y_prev: scaled data predictions at t_now and at the previous step; g_now, g_next:
  γ at the model time and at the next time, lam_prev: λ of the previous model evaluation, is_first
  (True at the first step): scalars. Returns (x_next, lam_now).
  """
  a_now, s_now = jnp.sqrt(g_now), jnp.sqrt(1. - g_now)
  a_next, s_next = jnp.sqrt(g_next), jnp.sqrt(1. - g_next)
  lam_now = 0.5 * schedules.logsnr(g_now)
  lam_next = 0.5 * schedules.logsnr(g_next)
  h_prev = lam_now - lam_prev
  second_order = (~is_first) & jnp.isfinite(lam_next) & (h_prev > 0)
  h = jnp.where(second_order, lam_next - lam_now, 1.)
  coef = jnp.where(second_order, h / (2. * jnp.where(second_order, h_prev, 1.)), 0.)  # 1 / (2r)
  d = (1. + coef) * y - coef * y_prev
  x_next = (s_next / s_now) * x + (a_next - s_next * a_now / s_now) * d
  return x_next, lam_now


def sample(denoise_fn: Callable, shape, key, *, gamma_fn: Callable, num_steps: int,
           method: str = 'ddpm', b=1., time_difference=0., clip_x0: bool = True,
           ddpm_variance: str = 'large', self_cond_init: Optional[Any] = None):
  """Generates data by reverse diffusion from t = 1 to t = 0 (Chen 2023, Algorithm 2; pix2seq).

  Time grid: step i = 0..N−1 evaluates the model at t_now = 1 − i/N and moves the state to
  t_next = max(1 − (i + 1 + td)/N, 0) (see `step_times`; td = `time_difference` >= 0, N =
  `num_steps` >= 1). Starts from x_1 ~ N(0, I). At each step y = (x − sqrt(1 − γ)·ε) / sqrt(γ) is
  clipped to [−b, b] when `clip_x0` (and ε recomputed from the clipped y, pix2seq
  `truncate_noise`), then:

  * 'ddpm': ancestral sampling (Ho et al. 2020), `ddpm_variance` 'large' β_t = 1 − γ_t/γ_s or
    'small' (the posterior variance);
  * 'ddim': deterministic DDIM, η = 0 (Song et al. 2021, Eq. 12; pix2seq),
    x_s = sqrt(γ_s)·y + sqrt(1 − γ_s)·ε;
  * 'dpm_solver++': multistep second-order DPM-Solver++(2M) in data-prediction form (Lu et al.
    2022), first-order at the first and last step; meant for 20–50 steps.

  The whole loop is one `lax.scan`: under `jax.jit` with `denoise_fn`, `shape`, `num_steps`,
  `method` (and `gamma_fn`, `clip_x0`, `ddpm_variance`) static, denoise_fn is traced once.

  Classifier-free guidance is the caller's business: denoise_fn may evaluate the conditional and
  unconditional branches and return (1 + w)·ε_cond − w·ε_uncond; the self_cond pytree can hold the
  state of both branches. Nothing in this function is guidance-specific.

  denoise_fn: `denoise_fn(x_t, gamma) -> eps` if `self_cond_init` is None, else
  `denoise_fn(x_t, gamma, self_cond) -> (eps, self_cond)` with the structure, shapes and dtypes of
  `self_cond_init` kept; x_t is the raw noisy state of shape `shape` = [B, ...], gamma [B], eps the
  ε prediction for x_t (see `make_eps_fn`). gamma_fn: the sampling schedule t -> γ (may differ from
  the training one); b: the training input scale; `clip_x0` also clips the result to [−1, 1].
  Returns the final x0 estimate (the last y-prediction divided by b) of shape `shape`, data units.
  """
  shape = tuple(shape)
  key_init, key_loop = jax.random.split(key)
  x_init = jax.random.normal(key_init, shape)
  batch = shape[0]

  def predict(x, g_vec, self_cond):
    if self_cond_init is None:
      return denoise_fn(x, g_vec), None
    return denoise_fn(x, g_vec, self_cond)

  def body(carry, step):
    x, self_cond, y_prev, lam = carry
    t_now, t_next = step_times(step, num_steps, time_difference)
    g_now = gamma_fn(t_now).astype(x.dtype)
    g_next = gamma_fn(t_next).astype(x.dtype)
    eps, self_cond = predict(x, jnp.full((batch,), g_now), self_cond)
    y = eps_to_y(eps, x, g_now)
    if clip_x0:
      y_clipped = jnp.clip(y, -b, b)
      eps = jnp.where(y_clipped == y, eps, y_to_eps(y_clipped, x, g_now))
      y = y_clipped
    if method == 'ddim':
      x = add_noise(y, g_next, eps)
    elif method == 'ddpm':
      x = _ddpm_step(x, y, g_now, g_next, jax.random.fold_in(key_loop, step), ddpm_variance)
    else:
      x, lam = _dpm_solver_pp_step(x, y, y_prev, g_now, g_next, lam, step == 0)
    return (x, self_cond, y, lam), None

  carry = (x_init, self_cond_init, jnp.zeros(shape, x_init.dtype), jnp.zeros((), x_init.dtype))
  (_, _, y_last, _), _ = jax.lax.scan(body, carry, jnp.arange(num_steps))
  x0 = y_last / b
  return jnp.clip(x0, -1., 1.) if clip_x0 else x0
