"""Official PyTorch checkpoints -> spikejax models (spec §9).

Our module tree mirrors the official state_dict, so each official key is a rename of one of
our variable paths (``to_official_key``) plus a layout change:
conv OIHW -> HWIO (depthwise ``(C,1,k,k)`` -> ``(k,k,1,C)``), Conv1d ``(out,in,1)`` / 1x1 conv
``(out,in,1,1)`` / Linear ``(out,in)`` -> ``(in,out)``, BN weight -> ``scale``,
``running_mean/var`` -> ``mean/var``. ``num_batches_tracked`` is accepted and ignored.

LARGE models (spec §9.2): the conv-stage units sit in spikingjelly's ``SeqToANNContainer``
(``ConvBlock1_1.0.conv1.0.0.weight`` <-> ``conv_block1_1/0/conv1/conv/kernel``); checkpoints of
older spikingjelly releases spell it ``...conv1.0.module.0.weight`` and are accepted too.

Command line::

    python -m spikejax.convert official.pth|.npz --model NAME [--num-classes N] [--kd|--no-kd]
        [--spike-max D] [--img-size S] --out DIR

Options a file states are read from it (``head_kd.*`` keys, the saved training ``args``, a
release name such as ``83M_1x8_384.pth``); a request that contradicts it is an error.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from typing import Any, Mapping

import numpy as np
from flax import nnx

from spikejax.train import paths

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
# Modules whose children `conv` / `bn` are an official nn.Sequential(conv, bn) -> `0` / `1`.
_CONV_BN = {"pwconv1", "pwconv2", "dwconv", "q_conv", "k_conv", "v_conv", "proj_conv",
            "conv1", "conv2"}  # conv1/conv2: LARGE RepConv, RepConv2 and ConvBlock units
_TOP = {"conv_block1_1": "ConvBlock1_1", "conv_block1_2": "ConvBlock1_2",
        "conv_block2_1": "ConvBlock2_1", "conv_block2_2": "ConvBlock2_2"}


def to_official_key(path: tuple) -> str:
  """Our variable path (tuple of str/int) -> the official state_dict key."""
  parts = [str(p) for p in path]
  out = []
  for i, p in enumerate(parts):
    if i == len(parts) - 1:
      out.append(_LEAF.get(p, p))
    elif i == 0:
      out.append(_TOP.get(p, p))
    elif p in ("conv", "bn") and i > 0 and parts[i - 1] in _CONV_BN:
      idx = "0" if p == "conv" else "1"
      if parts[0].startswith("conv_block") and parts[i - 1] in ("conv1", "conv2"):
        idx = "0." + idx  # LARGE ConvBlock: nn.Sequential(SeqToANNContainer(conv, bn))
      out.append(idx)
    elif p == "sep_conv":
      out.append("Conv" if parts[0].startswith("conv_block") else "conv")
    else:
      out.append(p)
  return ".".join(out)


def official_stage_name(name: str) -> str:
  """Our stage name (``spikejax.models.STAGES``) -> the official module name."""
  return _TOP.get(name, name)


def official_v2_neuron_name(path: tuple) -> str:
  """Our neuron's module path -> the official Meta-SpikeFormer (V2) LIF module name.

  V2 names its neurons ``*lif*`` where ours are ``*spike*`` (``encode_spike`` ->
  ``encode_lif``, ``sep_conv/spike1`` -> ``Conv.lif1``); the head neuron is ``lif``.
  """
  parts = tuple(str(p) for p in path)
  if parts == ("head_spike",):
    return "lif"
  prefix = to_official_key(parts[:-1] + ("x",))[:-1] if len(parts) > 1 else ""
  return prefix + parts[-1].replace("spike", "lif")


def _flat_vars(model) -> list[tuple[tuple, Any]]:
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  return list(nnx.to_flat_state(state))


def _expected_official_shape(ours: tuple[int, ...]) -> tuple[int, ...]:
  if len(ours) == 4:
    kh, kw, i, o = ours
    return (o, i, kh, kw)
  if len(ours) == 2:
    return (ours[1], ours[0])
  return ours


def _convert_array(key: str, value: np.ndarray, ours_shape: tuple[int, ...]) -> np.ndarray:
  value = np.asarray(value)
  want = _expected_official_shape(ours_shape)
  shape = tuple(value.shape)
  if len(ours_shape) == 2:  # Linear / Conv1d k=1 / 1x1 conv -> (in, out)
    squeezed = shape
    while len(squeezed) > 2 and squeezed[-1] == 1:
      squeezed = squeezed[:-1]
    if squeezed != want:
      raise ValueError(f"shape mismatch for {key!r}: the checkpoint has {shape}, the model "
                       f"expects {want} (or {want + (1,)} / {want + (1, 1)} for a 1x1 conv); "
                       f"check --model / --num-classes.")
    return value.reshape(want).T
  if shape != want:
    raise ValueError(f"shape mismatch for {key!r}: the checkpoint has {shape}, the model "
                     f"expects {want}; check --model / --num-classes.")
  if len(ours_shape) == 4:
    return value.transpose(2, 3, 1, 0)
  return value


def to_official_array(value: np.ndarray, official_shape: tuple[int, ...] | None = None):
  """Our layout -> the official PyTorch layout (the inverse of loading)."""
  value = np.asarray(value)
  if value.ndim == 4:
    out = value.transpose(3, 2, 0, 1)
  elif value.ndim == 2:
    out = value.T
  else:
    out = value
  if official_shape is not None:
    out = out.reshape(official_shape)
  return out


def export_state_dict(tree_or_model, official_shapes: Mapping[str, tuple] | None = None):
  """Our variables (a model, or an ``nnx.State`` such as gradients) -> official keys/layouts.

  ``official_shapes`` restores trailing singleton dims (Conv1d ``(out,in,1)``, 1x1 conv
  ``(out,in,1,1)``); without it 1x1 convs come out as ``(out, in)``.
  """
  if isinstance(tree_or_model, nnx.Module):
    flat = _flat_vars(tree_or_model)
  else:
    flat = list(nnx.to_flat_state(tree_or_model))
  out = {}
  for path, var in flat:
    key = to_official_key(path)
    value = var.get_value() if hasattr(var, "get_value") else var
    shape = None if official_shapes is None else official_shapes.get(key)
    out[key] = to_official_array(np.asarray(value), shape)
  return out


# Older spikingjelly SeqToANNContainer keeps its layers under `.module.` (spec §9.2).
_OLD_SEQ_TO_ANN = re.compile(r"\.module\.(?=\d)")


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Strips wrappers and prefixes (``model``/``state_dict`` entries, ``module.``, ``state_dict/``).

  Also maps the old spikingjelly spelling ``...conv1.0.module.0.weight`` to ``...conv1.0.0.weight``.
  """
  sd = state_dict
  for wrapper in ("model", "state_dict", "model_ema"):
    if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = sd[wrapper]
      break
  out = {}
  for k, v in sd.items():
    orig = k
    for prefix in ("state_dict/", "module."):
      if k.startswith(prefix):
        k = k[len(prefix):]
    k = _OLD_SEQ_TO_ANN.sub(".", k)
    if k in out:
      raise ValueError(f"the state_dict holds {orig!r} and another spelling of {k!r}.")
    if hasattr(v, "detach"):
      v = v.detach().cpu().numpy()
    out[k] = np.asarray(v)
  return out


def load_official_state_dict(model, state_dict: Mapping[str, Any], *, strict: bool = True):
  """Loads official state_dict arrays (weights + BN running stats) into ``model`` in place.

  Raises ValueError naming every missing or unexpected key, or the first mis-shaped key with
  both shapes. ``num_batches_tracked`` entries are ignored. Returns ``model``.
  """
  sd = clean_state_dict(state_dict)
  flat = _flat_vars(model)
  mapping = {to_official_key(path): (path, var) for path, var in flat}
  provided = {k for k in sd if not k.endswith("num_batches_tracked")}
  missing = sorted(set(mapping) - provided)
  unexpected = sorted(provided - set(mapping))
  if strict and (missing or unexpected):
    lines = []
    if missing:
      lines.append(f"{len(missing)} missing key(s): {missing[:10]}" +
                   (" ..." if len(missing) > 10 else ""))
    if unexpected:
      lines.append(f"{len(unexpected)} unexpected key(s): {unexpected[:10]}" +
                   (" ..." if len(unexpected) > 10 else ""))
    raise ValueError("the state_dict does not match the model: " + "; ".join(lines) +
                     ". Check the model name (spikejax.models.list_models()).")
  # Convert everything first, so a bad key leaves the model untouched.
  new = {}
  for key, (path, var) in mapping.items():
    if key not in sd:
      continue
    cur = var.get_value()
    arr = _convert_array(key, sd[key], tuple(cur.shape))
    new[key] = arr.astype(cur.dtype)
  for key, arr in new.items():
    mapping[key][1].set_value(np.asarray(arr))
  return model


def read_official(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """An official ``.pth``/``.pt`` (needs torch) or ``.npz`` file -> ``(state_dict as numpy
  arrays, the training arguments saved with it as a dict, or {})``.

  The official ``save_model`` writes ``{"model", "optimizer", "epoch", "scaler", "args"}`` with
  ``args`` an ``argparse.Namespace``. It is read with ``torch.load(weights_only=True)``, which
  unpickles tensors and plain containers only; ``argparse.Namespace`` is the one class added to
  that allowlist. Anything else in the file is refused, never unpickled blindly.
  """
  if not paths.exists(path):
    raise FileNotFoundError(f"checkpoint file {path!r} does not exist.")
  # a file in a bucket is read into memory (torch.load and np.load take file objects)
  src = io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path
  if path.endswith(".npz"):
    import zipfile
    if not zipfile.is_zipfile(src):   # np.load would call it "pickled data"
      raise ValueError(f"{path} is not a .npz archive (not a zip file): write one with "
                       f"numpy.savez(path, **state_dict) or pass the official .pth file.")
    try:
      if not isinstance(src, str):
        src.seek(0)
      with np.load(src, allow_pickle=False) as z:
        keys = [k for k in z.files if k.startswith("state_dict/")] or list(z.files)
        return clean_state_dict({k: z[k] for k in keys}), {}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
      raise ValueError(f"{path} cannot be read as a .npz of arrays ({type(e).__name__}: "
                       f"{e}); object arrays are refused: save plain numeric arrays.") from None
  if path.endswith((".pth", ".pt", ".bin")):
    try:
      import torch
    except ImportError as e:
      raise ImportError("reading .pth files needs PyTorch: pip install 'spikejax[torch]' "
                        "(or convert to .npz elsewhere).") from e
    try:
      with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
      raise ValueError(f"{path} cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:300]}); pass the official .pth file, or a "
                       f".npz of its state_dict.") from None
    saved = obj.get("args") if isinstance(obj, Mapping) else None
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else dict(saved or {})
    return clean_state_dict(obj), saved
  raise ValueError(f"unknown checkpoint format {path!r}: expected .pth, .pt or .npz.")


def read_checkpoint_file(path: str) -> dict[str, np.ndarray]:
  """The state_dict of an official ``.pth``/``.pt`` or ``.npz`` file (``read_official``)."""
  return read_official(path)[0]


def infer_num_classes(sd: Mapping[str, np.ndarray]) -> int | None:
  w = sd.get("head.weight")
  return None if w is None else int(w.shape[0])


# Released file names state T x D and the resolution: ``83M_1x8_384.pth`` (spec §1.3).
_RELEASE_NAME = re.compile(r"(?<![0-9])(\d+)x(\d+)(?:_(\d{3}))?(?![0-9])")


def options_from_file_name(path: str) -> dict[str, int]:
  """``time_steps``, ``spike_max`` and ``image_size`` as an official release's file name
  states them (``171M_1x8_384.pth`` -> 1, 8, 384); {} for other names."""
  m = _RELEASE_NAME.search(os.path.basename(path))
  if not m:
    return {}
  out = {"time_steps": int(m[1]), "spike_max": int(m[2])}
  if m[3]:
    out["image_size"] = int(m[3])
  return out


def resolve_options(sd: Mapping[str, Any], saved_args: Mapping[str, Any], path: str, *,
                    family: str, kd: bool | None = None, spike_max: int | None = None,
                    image_size: int | None = None) -> tuple[dict[str, Any], int | None]:
  """The model options a checkpoint needs, from what was asked, its keys, its saved
  arguments and its file name: ``(create_model options, image size or None)``. A request that
  contradicts the file raises ``ValueError`` naming both."""
  has_kd = any(k.startswith("head_kd.") for k in sd)
  opts: dict[str, Any] = {}
  if family == "spikformer":
    if kd is True and not has_kd:
      raise ValueError(f"--kd but {path} has no head_kd.* keys (a model finetuned without "
                       f"distillation): pass --no-kd.")
    if kd is False and has_kd:
      raise ValueError(f"--no-kd but {path} holds a distillation head (head_kd.*): pass --kd.")
    saved_kd = saved_args.get("kd")
    if saved_kd is not None and bool(saved_kd) != has_kd:
      raise ValueError(f"{path}: its saved args say kd={saved_kd} but its keys "
                       f"{'hold' if has_kd else 'lack'} head_kd.*; the file is inconsistent.")
    opts["kd"] = has_kd
  elif has_kd or kd:
    raise ValueError(f"{'the file holds head_kd.* keys' if has_kd else '--kd'}, but a "
                     f"{family} model has no distillation head; pick a LARGE model "
                     f"(spikformer12_512 / spikformer12_768).")
  named = options_from_file_name(path)
  if spike_max is not None and "spike_max" in named and named["spike_max"] != spike_max:
    raise ValueError(f"--spike-max {spike_max} but the file name {os.path.basename(path)!r} "
                     f"says {named['time_steps']}x{named['spike_max']} (D = "
                     f"{named['spike_max']}); a checkpoint trained at one D gives wrong outputs "
                     f"at another.")
  d = spike_max if spike_max is not None else named.get("spike_max")
  if d is not None:
    opts["spike_max"] = int(d)
  if named.get("time_steps", 1) != 1:
    opts["time_steps"] = named["time_steps"]
  sizes = {k: v for k, v in (("--img-size", image_size),
                             ("its saved args (input_size)", saved_args.get("input_size")),
                             ("its file name", named.get("image_size"))) if v is not None}
  if len(set(map(int, sizes.values()))) > 1:
    raise ValueError(f"{path}: conflicting image sizes: " +
                     ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".")
  return opts, (int(next(iter(sizes.values()))) if sizes else None)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m spikejax.convert",
                              description="Convert an official E-SpikeFormer checkpoint to an "
                                          "orbax checkpoint of spikejax.")
  p.add_argument("checkpoint", help="official .pth/.pt or .npz file")
  p.add_argument("--model", required=True, help="spikejax model name (or official name)")
  p.add_argument("--num-classes", type=int, default=None,
                 help="classes of the head (default: read from head.weight)")
  p.add_argument("--kd", action=argparse.BooleanOptionalAction, default=None,
                 help="LARGE models: the distillation head head_kd (default: whether the file "
                      "holds head_kd.* keys; a contradiction is an error)")
  p.add_argument("--spike-max", type=int, default=None,
                 help="D, the integer ceiling the model was trained with (1x8 releases: 8); "
                      "default: from the file name's TxD, else the model's (4)")
  p.add_argument("--img-size", type=int, default=None,
                 help="input resolution it was finetuned at (384 for *_384 releases), recorded "
                      "in model.json; default: its saved args (input_size) or file name")
  p.add_argument("--out", required=True, help="output directory (must not exist yet)")
  args = p.parse_args(argv)

  from spikejax.models import create_model, get_variant
  from spikejax.train import checkpoints

  if paths.isfile(args.out) or paths.listdir(args.out):
    raise FileExistsError(f"--out {args.out} exists and is not empty; choose a new --out "
                          f"directory (nothing was overwritten).")
  variant = get_variant(args.model)
  sd, saved = read_official(args.checkpoint)
  opts, image_size = resolve_options(sd, saved, args.checkpoint, family=variant.family,
                                     kd=args.kd, spike_max=args.spike_max,
                                     image_size=args.img_size)
  n_cls = args.num_classes or infer_num_classes(sd) or 1000
  model = create_model(variant.name, num_classes=n_cls, rngs=nnx.Rngs(0), **opts)
  load_official_state_dict(model, sd)
  checkpoints.save_model(args.out, model, model_name=variant.name,
                         model_kwargs={"num_classes": n_cls, **opts},
                         extra={"source": paths.resolve(args.checkpoint),
                                **({"image_size": image_size} if image_size else {})})
  shown = ", ".join([f"{n_cls} classes"] + [f"{k}={v}" for k, v in opts.items()] +
                    ([f"{image_size} px"] if image_size else []))
  print(f"wrote {variant.name} ({shown}) to {paths.resolve(args.out)}")
  return 0


def cli(argv=None) -> int:
  """``main`` for the command line: bad input (a missing or unreadable file, an unknown model,
  keys or shapes that do not match, an ``--out`` in use) is one line on stderr and exit 2."""
  try:
    return main(argv)
  except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(cli())
