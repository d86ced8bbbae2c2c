"""Writes tests/data/v2_official_float64_train.npz: the official Meta-SpikeFormer (V2) train
pass in float64 on the weights and input of ../shared/golden/metaspikformer_d32_T4_res64_seed0.npz.

Why: the golden file's train pass is float32, and with batch statistics a membrane within float32
rounding of a LIF threshold flips a spike that every later BatchNorm spreads (the official code
itself gives loss 2.34700 in float32 and 2.35932 in float64 on this file). In float64 neither side
flips: the test compares our float64 train pass with this file (tests/test_golden_v2.py).

It keeps what is small: logits, loss, BN running statistics after the pass, spikes per LIF
module, and per gradient tensor its norm and its projection on a fixed random direction.

Run with the torch + spikingjelly venv of ../shared/tools/README.md:
  V2_MIRROR=<git dir of BICLab/Spike-Driven-Transformer-V2> \\
    python tests/data/make_v2_float64_reference.py [--golden DIR]
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "v2_official_float64_train.npz")
GOLDEN = "metaspikformer_d32_T4_res64_seed0.npz"


def projection_direction(shape, index: int) -> np.ndarray:
  """The fixed random direction for gradient tensor number ``index`` (sorted key order)."""
  return np.random.default_rng(index).standard_normal(shape)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--golden", default=os.path.join(os.path.dirname(REPO), "shared", "golden"))
  args = p.parse_args()
  sys.path.insert(0, os.path.join(os.path.dirname(REPO), "shared", "tools"))
  import torch
  import official_ref_v2 as ref
  g = dict(np.load(os.path.join(args.golden, GOLDEN)))
  mod = ref.load_official()
  model = ref.build(mod, [int(d) for d in g["meta/embed_dim"]], int(g["meta/num_classes"]),
                    int(g["meta/time_steps"]))
  model.load_state_dict({k[len("state_dict/"):]: torch.from_numpy(np.array(v))
                         for k, v in g.items() if k.startswith("state_dict/")})
  model = model.to(torch.float64)
  spikes = {}

  def hook(name):
    def f(m, i, o):
      spikes[name] = float(o.detach().sum())
    return f
  for n, m in model.named_modules():
    if type(m).__name__ == "MultiStepLIFNode":
      m.register_forward_hook(hook(n))
  x = torch.from_numpy(g["input"]).to(torch.float64)
  model.train()
  logits = model(x)
  loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(g["labels"]))
  loss.backward()
  ref.reset(model)
  out = {"logits_train": logits.detach().numpy(), "loss_train": np.array(loss.item())}
  grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
  for i, k in enumerate(sorted(grads)):
    out["grad_norm/" + k] = np.array(np.linalg.norm(grads[k]))
    out["grad_proj/" + k] = np.array((grads[k] * projection_direction(grads[k].shape, i)).sum())
  for k, v in model.state_dict().items():
    if k.endswith(("running_mean", "running_var")):
      out["running_after_train/" + k] = v.numpy()
  for k, v in spikes.items():
    out["spikes_train/" + k] = np.array(v)
  np.savez_compressed(OUT, **out)
  print(f"wrote {OUT}: loss {loss.item():.10f}, {len(grads)} gradient tensors, "
        f"{len(spikes)} LIF modules")


if __name__ == "__main__":
  main()
