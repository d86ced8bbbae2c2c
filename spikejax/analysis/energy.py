"""Energy estimate of any registered spiking model run spike-driven (spec §7, B.5).

    E = E_MAC * T * FL_stem + E_AC * sum_{l != stem} SOP_l,     SOP_l = FL_l * T * fr_l

* ``FL_l``: dense MACs of layer ``l`` per image and real timestep: ``k^2 H_out W_out C_in/g
  C_out`` for a conv, ``in * out * tokens`` for a linear layer, and for the softmax-free
  attention the spike matrix products as coded, ``N^2 C`` (Q K^T) and ``N^2 lambda C``
  ((Q K^T) V), per block.
* Layers fed real values do MACs: the stem conv (the image) and any non-spiking layer (e.g.
  RepConv's second conv, a non-spiked head), as the op records of the spike-driven run say
  (``spike_driven.layer_records``). Every other layer consumes spikes: ACs,
  weighted by ``fr_l``, the mean integer activation of the spiking layer feeding it (spikes
  per neuron and real timestep, summed over the D sub-steps; in ``[0, D]``). Q K^T is
  weighted by the Q firing rate and (Q K^T) V by the V firing rate. BN is folded, residual
  additions are not counted.
* ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ`` (45 nm, 32-bit float; Horowitz 2014) by default.
* The ANN equivalent runs every layer once with MACs: ``E_ANN = E_MAC * sum_l FL_l``.

The official repository has no energy code and the paper's supplement is not available: the
rule is the one of Spike-driven Transformer V1/V2 adapted to SFA counts (spec §7).

    python -m spikejax.analysis.energy --model espikeformer_s --json
    python -m spikejax.analysis.energy --checkpoint workdirs/fmnist --batches 20 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Mapping

E_MAC_PJ = 4.6
E_AC_PJ = 0.9

FORMULA = ("E = E_MAC * T * FL_stem + E_AC * sum_l FL_l * T * fr_l;  FL_l: dense MACs of layer "
           "l per image and real timestep; fr_l: mean integer activation (spikes per neuron "
           "and timestep over the D sub-steps) of the spiking layer feeding l; E_ANN = E_MAC * "
           "sum_l FL_l")


def energy_report(model, image_shape, rates: Mapping[str, float] | Any | None = None, *,
                  e_mac_pj: float = E_MAC_PJ, e_ac_pj: float = E_AC_PJ) -> dict[str, Any]:
  """Per-layer MACs, input firing rates, SOPs and energy for one image of ``image_shape``.

  ``image_shape``: one input's shape, e.g. ``(1, 224, 224, 3)`` (batch 1, NHWC).
  ``rates``: ``{spiking layer name: mean integer activation}`` or a ``firing.FiringStats``;
  ``None`` gives the dense counts and the ANN energy only (SNN energy ``None``).
  """
  from spikejax.analysis import firing as firing_lib
  from spikejax.analysis.spike_driven import layer_records
  if isinstance(rates, firing_lib.FiringStats):
    rates = {k: v.mean for k, v in rates.layers.items()}
  T = model.spike.time_steps
  rows, snn_pj, ann_pj, macs_total, sops_total = [], 0.0, 0.0, 0, 0.0
  for rec in layer_records(model, image_shape):
    row = {"layer": rec.name, "kind": rec.kind, "macs": rec.macs, "input": rec.input}
    macs_total += rec.macs
    ann_pj += e_mac_pj * rec.macs
    if rec.input is None:                          # real-valued input: MACs every timestep
      row.update(op="MAC", input_rate=None, sops=None, energy_pj=e_mac_pj * rec.macs * T)
    elif rates is None:
      row.update(op="AC", input_rate=None, sops=None, energy_pj=None)
    else:
      if rec.input not in rates:
        raise KeyError(f"no firing rate for spiking layer {rec.input!r} (feeding {rec.name}); "
                       f"rates must cover every spiking layer of the model.")
      fr = float(rates[rec.input])
      sops = rec.macs * T * fr
      sops_total += sops
      row.update(op="AC", input_rate=fr, sops=sops, energy_pj=e_ac_pj * sops)
    if row["energy_pj"] is not None:
      snn_pj += row["energy_pj"]
    rows.append(row)
  have = rates is not None
  real = [r for r in rows if r["op"] == "MAC"]
  stem = real[:1] if rows and rows[0]["op"] == "MAC" else []
  return {
      "formula": FORMULA, "e_mac_pj": e_mac_pj, "e_ac_pj": e_ac_pj, "time_steps": T,
      "spike_max": model.spike.spike_max if model.spike.sub_steps > 1 else None,
      "firing": model.spike.firing, "image_shape": list(image_shape),
      "dense_macs": macs_total,
      "dense_macs_conv_linear": sum(r["macs"] for r in rows if r["kind"] != "matmul"),
      "dense_macs_attention": sum(r["macs"] for r in rows if r["kind"] == "matmul"),
      "stem_macs": sum(r["macs"] for r in stem),
      "stem_energy_mj": sum(r["energy_pj"] for r in stem) * 1e-9,
      "real_input_macs": sum(r["macs"] for r in real),
      "real_input_energy_mj": sum(r["energy_pj"] for r in real) * 1e-9,
      "sops": sops_total if have else None,
      "snn_energy_mj": snn_pj * 1e-9 if have else None,
      "ann_energy_mj": ann_pj * 1e-9,
      "ann_over_snn": (ann_pj / snn_pj) if have and snn_pj else None,
      "layers": rows,
  }


def format_table(report: dict[str, Any]) -> str:
  """The report as a fixed-width text table with totals and the formula."""
  lines = [f"{'layer':46s} {'op':3s} {'MACs':>12s} {'in rate':>8s} {'SOPs':>12s} {'E (pJ)':>12s}"]
  for r in report["layers"]:
    rate = "-" if r["input_rate"] is None else f"{r['input_rate']:.4f}"
    sops = "-" if r["sops"] is None else f"{r['sops']:.4g}"
    e = "-" if r["energy_pj"] is None else f"{r['energy_pj']:.4g}"
    lines.append(f"{r['layer'][:46]:46s} {r['op']:3s} {r['macs']:12d} {rate:>8s} {sops:>12s} "
                 f"{e:>12s}")
  lines.append("")
  lines.append(f"dense MACs {report['dense_macs'] / 1e9:.4f} G (conv+linear "
               f"{report['dense_macs_conv_linear'] / 1e9:.4f} G, attention "
               f"{report['dense_macs_attention'] / 1e6:.2f} M, stem {report['stem_macs'] / 1e6:.2f} M)")
  snn = report["snn_energy_mj"]
  lines.append(f"energy per image: SNN {'n/a (no firing rates)' if snn is None else f'{snn:.4f} mJ'}"
               f", ANN equivalent {report['ann_energy_mj']:.4f} mJ"
               + ("" if not report["ann_over_snn"] else f" ({report['ann_over_snn']:.1f}x)"))
  spikes = (f"D = {report['spike_max']}" if report["spike_max"] is not None
            else "binary spikes")
  lines.append(f"E_MAC = {report['e_mac_pj']} pJ, E_AC = {report['e_ac_pj']} pJ, T = "
               f"{report['time_steps']}, {spikes}")
  lines.append(report["formula"])
  return "\n".join(lines)


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m spikejax.analysis.energy",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default=None, help="registered model name (dense counts only "
                 "unless --checkpoint gives a trained model)")
  p.add_argument("--checkpoint", default=None, help="a model directory (model.json) or a "
                 "training workdir (config.json + checkpoints/)")
  p.add_argument("--config", default=None, help="config file[:args] giving the data set for "
                 "firing rates (default: the workdir's own config)")
  p.add_argument("--rounding", default=None, choices=("half_even", "half_up"))
  p.add_argument("--resolution", type=int, default=None, help="input size (default: the "
                 "config's image_size, else 224)")
  p.add_argument("--in-channels", type=int, default=None)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--batches", type=int, default=10, help="eval batches for firing rates")
  p.add_argument("--batch-size", type=int, default=None)
  p.add_argument("--e-mac", type=float, default=E_MAC_PJ, help="pJ per MAC")
  p.add_argument("--e-ac", type=float, default=E_AC_PJ, help="pJ per AC")
  p.add_argument("--json", action="store_true", help="print the JSON report after the table")
  args = p.parse_args(argv)
  if not args.model and not args.checkpoint:
    p.error("give --model NAME (dense counts) or --checkpoint DIR (trained model and firing)")
  return args


def main(argv=None) -> int:
  args = _parse(argv)
  import numpy as np
  from flax import nnx
  from spikejax.analysis import cli
  from spikejax.analysis import firing as firing_lib
  stats, config = None, None
  if args.checkpoint:
    model, config = cli.load(args)
  else:
    from spikejax.models import create_model
    kw = {} if args.in_channels is None else {"in_channels": args.in_channels}
    model = create_model(args.model, num_classes=args.num_classes, rngs=nnx.Rngs(0), **kw)
  size = args.resolution or (config.image_size if config is not None else 224)
  backbone = getattr(model, "backbone", model)     # dense models: the backbone's input
  shape = (1, size, size, backbone.config.in_channels)
  model.check_input(np.zeros(shape, np.float32))
  if config is not None:
    stats = firing_lib.collect(model, cli.eval_batches(config, args, size))
  report = energy_report(model, shape, stats, e_mac_pj=args.e_mac, e_ac_pj=args.e_ac)
  report["model"] = args.model or (config.model_name if config is not None else None)
  if stats is not None:
    report["firing"] = {"images": stats.images, "accuracy": stats.accuracy,
                        "mean_rate": stats.mean_rate(),
                        "nsfr_curve": stats.nsfr_curve().tolist()}
  print(format_table(report))
  if stats is not None:
    print(f"firing measured on {stats.images} images of {config.dataset}/{config.eval_split}"
          + ("" if stats.accuracy is None else f" (accuracy {stats.accuracy:.4f})")
          + f"; mean rate {stats.mean_rate():.4f}")
  if args.json:
    print(json.dumps(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
