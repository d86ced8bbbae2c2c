"""An event-camera emulator: static images -> DVS event streams recorded the N-MNIST way.

N-MNIST (Orchard et al., 2015) was recorded by moving an ATIS sensor in front of a static image
shown on a monitor: three quick straight *saccades* along a triangle, 100 ms each, the 28x28
digit seen through a 34x34 pixel window. A DVS pixel emits an event each time its
log-intensity changes by a contrast threshold C from the level of its last event: ON (p = 1)
for an increase, OFF (p = 0) for a decrease.

``emulate_events`` does this for a batch of images, vectorised over the batch:

* the image sits centred in a ``sensor x sensor`` window and is translated along the saccade
  path (``path_vertices`` x ``amplitude`` pixels, plus a per-example sub-pixel offset drawn from
  the example's seed), rendered with bilinear interpolation at ``samples_per_saccade`` time
  samples per saccade;
* log intensity ``L = log(I / 255 + log_eps)``; every pixel keeps the reference level of its
  last event; between two samples L is taken as linear, so a pixel crossing n thresholds emits
  n events at the interpolated crossing times (microsecond integers);
* the thresholds differ per pixel (fixed-pattern mismatch ``threshold_sigma``, one map per
  ``sensor_seed``: one emulated sensor records the whole data set), separately for ON and OFF;
* background-activity noise: Poisson events at ``noise_hz`` per pixel, random polarity.

Every stream is a pure function of ``(image, seed, index)``: the same example always gives the
same events, whatever the batch it is emulated in. Results on these data are *emulated* event
data, not recordings.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EmulatorConfig:
  """The emulated sensor and motion (defaults: N-MNIST geometry, 3 x 100 ms saccades)."""
  sensor: int = 34                  # square window side (N-MNIST: 34 for 28 px digits)
  saccade_us: int = 100_000         # duration of one saccade
  samples_per_saccade: int = 24     # rendering steps per saccade (<= 0.2 px motion per step)
  amplitude: float = 3.0            # pixels; the path's vertices are scaled by this
  path_vertices: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.5, 1.0), (1.0, 0.0),
                                                    (0.0, 0.0))  # (dx, dy), triangle
  jitter: float = 0.5               # per-example uniform sub-pixel offset of the path, pixels
  threshold: float = 0.4            # contrast threshold C on log intensity
  threshold_sigma: float = 0.05     # relative per-pixel threshold mismatch (fixed per sensor)
  log_eps: float = 0.2              # L = log(I / 255 + log_eps)
  noise_hz: float = 0.5             # background activity per pixel
  sensor_seed: int = 0

  def __post_init__(self):
    if self.sensor < 1 or self.samples_per_saccade < 1 or self.saccade_us < 1:
      raise ValueError("sensor, samples_per_saccade and saccade_us must be >= 1")
    if len(self.path_vertices) < 2:
      raise ValueError("path_vertices needs at least 2 points (one saccade)")
    if self.threshold <= 0 or self.log_eps <= 0:
      raise ValueError("threshold and log_eps must be > 0")

  @property
  def num_saccades(self) -> int:
    return len(self.path_vertices) - 1

  @property
  def duration_us(self) -> int:
    return self.num_saccades * self.saccade_us


def _path(cfg: EmulatorConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Time stamps (us) and (dx, dy) offsets of the K + 1 rendering samples."""
  v = np.asarray(cfg.path_vertices, np.float64) * cfg.amplitude
  n = cfg.samples_per_saccade
  pts = [v[0][None]]
  for a, b in zip(v[:-1], v[1:]):
    f = (np.arange(1, n + 1) / n)[:, None]
    pts.append(a + f * (b - a))
  pts = np.concatenate(pts)
  t = np.arange(len(pts)) * (cfg.saccade_us / n)
  # centre the path on the window
  pts = pts - (pts.max(0) + pts.min(0)) / 2
  return t, pts[:, 0], pts[:, 1]


def _thresholds(cfg: EmulatorConfig) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng([cfg.sensor_seed, 0x5EED])
  s = cfg.sensor
  on = cfg.threshold * (1 + cfg.threshold_sigma * rng.standard_normal((s, s)))
  off = cfg.threshold * (1 + cfg.threshold_sigma * rng.standard_normal((s, s)))
  floor = 0.1 * cfg.threshold
  return np.maximum(on, floor), np.maximum(off, floor)


def _render(images: np.ndarray, ox: np.ndarray, oy: np.ndarray, sensor: int) -> np.ndarray:
  """Bilinear samples of ``images`` (B, h, w) float in a ``sensor`` window, shifted by
  (ox, oy) (B,) pixels (positive = right / down); zero outside the image."""
  b, h, w = images.shape
  pad = np.zeros((b, h + 2, w + 2), images.dtype)
  pad[:, 1:-1, 1:-1] = images
  c0y, c0x = (sensor - h) / 2, (sensor - w) / 2
  ys = np.arange(sensor)[None, :, None] - c0y - oy[:, None, None] + 1  # padded coordinates
  xs = np.arange(sensor)[None, None, :] - c0x - ox[:, None, None] + 1
  ys = np.clip(ys, 0, h + 1 - 1e-6)
  xs = np.clip(xs, 0, w + 1 - 1e-6)
  y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
  fy, fx = ys - y0, xs - x0
  y1, x1 = np.minimum(y0 + 1, h + 1), np.minimum(x0 + 1, w + 1)
  bi = np.arange(b)[:, None, None]
  y0b, y1b = np.broadcast_to(y0, (b, sensor, 1)), np.broadcast_to(y1, (b, sensor, 1))
  top = pad[bi, y0b, x0] * (1 - fx) + pad[bi, y0b, x1] * fx
  bot = pad[bi, y1b, x0] * (1 - fx) + pad[bi, y1b, x1] * fx
  return top * (1 - fy) + bot * fy


def emulate_events(images: np.ndarray, indices: np.ndarray | int, *, seed: int = 0,
                   config: EmulatorConfig = EmulatorConfig()) -> list[dict[str, np.ndarray]]:
  """Event streams for ``images`` (B, h, w) or (B, h, w, 1) uint8 (see the module docstring).

  Args:
    images: greyscale images, 0..255.
    indices: the examples' indices in their data set (B,) (or the first index as an int);
      with ``seed`` they fix each stream's random draws.
    seed: data-set seed.
    config: the sensor and the motion.

  Returns:
    One dict per image with ``t`` (int32 us, non-decreasing), ``x``, ``y`` (int16, pixel
    column / row in the ``sensor`` window) and ``p`` (uint8, 1 = ON).
  """
  images = np.asarray(images)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3:
    raise ValueError(f"expected greyscale images (B, h, w) or (B, h, w, 1); got {images.shape}")
  b = images.shape[0]
  idx = np.arange(indices, indices + b) if np.isscalar(indices) else np.asarray(indices)
  if idx.shape != (b,):
    raise ValueError(f"indices must have shape ({b},), got {idx.shape}")
  cfg, s = config, config.sensor
  t, px, py = _path(cfg)
  rngs = [np.random.default_rng([seed, int(i)]) for i in idx]
  jit = np.array([r.uniform(-cfg.jitter, cfg.jitter, 2) for r in rngs]).reshape(b, 2)
  c_on, c_off = _thresholds(cfg)
  img = images.astype(np.float64)

  def log_frame(k):
    f = _render(img, px[k] + jit[:, 0], py[k] + jit[:, 1], s)
    return np.log(f / 255.0 + cfg.log_eps)

  prev = log_frame(0)
  ref = prev.copy()
  parts = []  # (example, t, y, x, p) per sample step
  for k in range(1, len(t)):
    cur = log_frame(k)
    for pol, c in ((1, c_on), (0, c_off)):
      sign = 1.0 if pol else -1.0
      n = np.floor(sign * (cur - ref) / c).astype(np.int64)
      n = np.maximum(n, 0)
      if not n.any():
        continue
      eb, ey, ex = np.nonzero(n)
      cnt = n[eb, ey, ex]
      rep = np.repeat(np.arange(len(cnt)), cnt)
      j = np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt) + 1  # 1..n per pixel
      eb, ey, ex = eb[rep], ey[rep], ex[rep]
      level = ref[eb, ey, ex] + sign * j * c[ey, ex]
      p0, p1 = prev[eb, ey, ex], cur[eb, ey, ex]
      frac = np.clip((level - p0) / np.where(p1 == p0, 1.0, p1 - p0), 0.0, 1.0)
      te = t[k - 1] + frac * (t[k] - t[k - 1])
      parts.append((eb, te, ey, ex, np.full(len(eb), pol, np.uint8)))
      ref += sign * n * c
    prev = cur

  if parts:
    eb, te, ey, ex, ep = (np.concatenate(a) for a in zip(*parts))
  else:
    eb, ey, ex = (np.zeros((0,), np.int64) for _ in range(3))
    te, ep = np.zeros((0,)), np.zeros((0,), np.uint8)
  order = np.lexsort((ex, ey, te, eb))
  eb, te, ey, ex, ep = eb[order], te[order], ey[order], ex[order], ep[order]
  bounds = np.searchsorted(eb, np.arange(b + 1))
  out = []
  for i in range(b):
    lo, hi = bounds[i], bounds[i + 1]
    ts, ys, xs, ps = te[lo:hi], ey[lo:hi], ex[lo:hi], ep[lo:hi]
    if cfg.noise_hz > 0:
      r = rngs[i]
      m = r.poisson(cfg.noise_hz * cfg.duration_us * 1e-6 * s * s)
      ts = np.concatenate([ts, r.uniform(0, cfg.duration_us, m)])
      ys = np.concatenate([ys, r.integers(0, s, m)])
      xs = np.concatenate([xs, r.integers(0, s, m)])
      ps = np.concatenate([ps, r.integers(0, 2, m).astype(np.uint8)])
      o = np.argsort(ts, kind="stable")
      ts, ys, xs, ps = ts[o], ys[o], xs[o], ps[o]
    out.append({"t": np.floor(ts).astype(np.int32), "x": xs.astype(np.int16),
                "y": ys.astype(np.int16), "p": ps.astype(np.uint8)})
  return out
