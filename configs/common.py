"""What every experiment config shares (big_vision style): the ``arg`` parser, the trainer's
defaults and the smoke mode.

An experiment file ``configs/NAME.py`` defines ``get_config(arg)`` for
``--config=configs/NAME.py:ARG`` and states only what differs from here::

  def get_config(arg=None):
    a = common.parse_arg(arg, size=common.one_of("s", "m"), d8=False, runlocal=False)
    c = common.trainer_defaults(dataset="imagenet2012", eval_split="validation")
    c.model_name = "espikeformer_" + a.size
    ...
    if a.runlocal:
      common.apply_runlocal(c, image_size=64)
    return c

``ARG`` is a comma-separated list: a flag's name (``runlocal``), a choice's value (``m``, with
``size=m`` the same), or ``key=value`` for any declared key. Anything else is an error naming
the argument and listing the accepted ones.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder


@dataclasses.dataclass(frozen=True)
class OneOf:
  """A ``parse_arg`` key taking one of ``choices``, each of which may be given bare."""
  choices: tuple[str, ...]
  default: str


def one_of(*choices: str, default: str | None = None) -> OneOf:
  """A choice for ``parse_arg``: ``one_of("s", "m", default="s")``; the default is the first."""
  if not choices or not all(isinstance(x, str) for x in choices):
    raise TypeError(f"one_of takes one or more strings, got {choices!r}")
  default = choices[0] if default is None else default
  if default not in choices:
    raise ValueError(f"default {default!r} is not one of {list(choices)}")
  return OneOf(tuple(choices), default)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _describe(name: str, spec: Any) -> str:
  if isinstance(spec, OneOf):
    return f"{'|'.join(spec.choices)} (or {name}=...; default {spec.default})"
  if isinstance(spec, bool):
    return name
  return f"{name}=<{type(spec).__name__}> (default {spec!r})"


def _hint(word: str, candidates) -> str:
  close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
  return f" (did you mean {close[0]!r}?)" if close else ""


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """The config ``arg`` (``"a,b,key=value"``) as a ConfigDict holding every key of ``spec``.

  Each keyword of ``spec`` declares one key and its default: a bool is a flag (``name`` alone
  sets it, ``name=false`` clears it), ``one_of(...)`` a choice (a choice's value alone selects
  it), an int, float or str a value given as ``name=value``. Empty items are skipped. Raises
  ``ValueError`` for an argument that is none of these (naming it, with the closest accepted
  one and the list of all), a value of the wrong type, or one key given two different values.
  """
  bare: dict[str, tuple[str, Any]] = {}
  for name, s in spec.items():
    if not isinstance(s, (OneOf, bool, int, float, str)):
      raise TypeError(f"parse_arg: {name}={s!r}: use a bool, int, float, str or one_of(...)")
    words = s.choices if isinstance(s, OneOf) else (name,) if isinstance(s, bool) else ()
    for w in words:
      if w in bare or (w != name and w in spec):
        raise ValueError(f"parse_arg: {w!r} names two config arguments")
      bare[w] = (name, True if isinstance(s, bool) else w)
  accepted = "; ".join(_describe(n, s) for n, s in spec.items()) or "none"

  values = {n: (s.default if isinstance(s, OneOf) else s) for n, s in spec.items()}
  given: dict[str, Any] = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" in item:
      name, text = (t.strip() for t in item.split("=", 1))
      if name not in spec:
        raise ValueError(f"unknown config argument {name!r} in {item!r}{_hint(name, spec)}; "
                         f"accepted: {accepted}")
      value = _convert(name, text, spec[name], accepted)
    elif item in bare:
      name, value = bare[item]
    else:
      raise ValueError(f"unknown config argument {item!r}{_hint(item, [*bare, *spec])}; "
                       f"accepted: {accepted}")
    if name in given and given[name] != value:
      raise ValueError(f"config argument {name!r} given twice ({given[name]!r} and {value!r}); "
                       f"choose one: {_describe(name, spec[name])}")
    given[name] = values[name] = value
  return ml_collections.ConfigDict(values)


def _convert(name: str, text: str, spec: Any, accepted: str) -> Any:
  if isinstance(spec, OneOf):
    if text not in spec.choices:
      raise ValueError(f"config argument {name}={text!r} is not one of {list(spec.choices)}"
                       f"{_hint(text, spec.choices)}")
    return text
  if isinstance(spec, bool):
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise ValueError(f"config argument {name}={text!r}: expected true or false")
  try:
    return type(spec)(text)
  except ValueError:
    raise ValueError(f"config argument {name}={text!r}: expected {type(spec).__name__}; "
                     f"accepted: {accepted}") from None


def trainer_defaults(**overrides: Any) -> ml_collections.ConfigDict:
  """Every key ``spikejax.train.trainer`` reads, at its default (a small Fashion-MNIST-scale
  run on one host), with top-level ``overrides`` applied first (for values whose type differs
  from the default's, e.g. ``augment`` as a ConfigDict). ``model`` starts empty; ``dataset``,
  ``model_name``, ``data_dir``, ``image_size``, ``channels``, ``init_from`` and the run limits
  are typed placeholders (``None`` until set; ``--config.KEY=...`` can set them). Raises
  ``ValueError`` for an override that is not a default key."""
  c = dict(
      seed=0,
      task="classify",                  # classify | mim
      # data
      dataset=placeholder(str),
      data_dir=placeholder(str),        # tfds data dir (None: tfds' default)
      train_split="train",
      eval_split="test",
      image_size=placeholder(int),      # None: the data set's own size
      channels=placeholder(int),        # None: the data set's own channels
      crop_pct=placeholder(float),      # None: the pipeline's 224/232 (center-crop sets)
      augment="none",                   # "none" or a ConfigDict (spikejax.data augmentation)
      batch_size=64,                    # global, over all devices and hosts
      eval_batch_size=500,
      # model
      model_name=placeholder(str),
      model=ml_collections.ConfigDict(),  # create_model keyword arguments
      init_from=placeholder(str),       # a workdir whose model values start training
      mode="sfa",                       # sfa: integer spikes; vanilla: binary spikes (LIF)
      spike=dict(spike_max=4, time_steps=1, rounding="half_even"),  # D, T (spec §1)
      # optimisation
      optimizer=dict(name="adamw", lr=3e-3, weight_decay=0.05, decay_all=False, b1=0.9,
                     b2=0.999, eps=1e-8, grad_clip_norm=1.0, layer_decay=1.0),
      warmup_epochs=0.5,
      min_lr=1e-5,                      # end of the per-step cosine schedule
      num_epochs=1.0,
      ema_decay=0.0,                    # 0: no EMA weights
      dtype="float32",                  # float32 | bfloat16 (activations)
      mesh=dict(data=-1, fsdp=1),       # -1: every device the other axes leave
      # run limits
      max_train_steps=placeholder(int),  # cut the run (and the schedule) to this many steps
      stop_after_steps=placeholder(int),  # stop early, checkpointed, schedule unchanged
      time_limit_minutes=placeholder(float),  # stop (evaluate, save) past this wall time
      # plan the run length (the whole schedule) to end inside this many minutes from the
      # process start, from the step rate measured in the warm-up (spikejax/train/budget.py);
      # 0 or None: num_epochs sets the length
      time_budget_minutes=placeholder(float),
      # logging, evaluation, checkpoints
      log_every_steps=50,
      progress_bar=True,
      eval_every_epochs=1,
      eval_flip=False,                  # classify: mean logits of each image and its mirror
      eval_shift=0,                     # classify: also the image moved 1..k px (4k views)
      eval_every_steps=placeholder(int),  # extra evaluations every this many steps
      max_eval_steps=placeholder(int),
      firing_stats=False,               # per-layer firing of each evaluation -> firing.json
      checkpoint_every_steps=500,
      keep_checkpoints=3,
  )
  for key, value in overrides.items():
    if key not in c:
      raise ValueError(f"trainer_defaults: {key!r} is not a default key{_hint(key, c)}; set "
                       "it on the returned config instead")
    c[key] = value
  return ml_collections.ConfigDict(c)


RUNLOCAL = dict(batch_size=16, eval_batch_size=16, num_epochs=1.0, warmup_epochs=0.0,
                max_train_steps=2, max_eval_steps=1, log_every_steps=1,
                checkpoint_every_steps=2, dtype="float32", progress_bar=False)


def apply_runlocal(c: ml_collections.ConfigDict, **overrides: Any) -> ml_collections.ConfigDict:
  """The shared smoke mode (``:runlocal``) on ``c``, in place: ``RUNLOCAL`` (a small batch, two
  train steps and one eval step, float32, an eval and a checkpoint inside the run) with
  top-level ``overrides``. The model is shrunk by each config. Raises ``ValueError`` for a key
  ``c`` does not have."""
  for key, value in {**RUNLOCAL, **overrides}.items():
    if key not in c:
      raise ValueError(f"apply_runlocal: {key!r} is not a key of the config{_hint(key, c)}")
    c[key] = value
  return c
