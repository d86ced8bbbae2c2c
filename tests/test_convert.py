"""Official checkpoint conversion: key mapping, errors, the command line, orbax round trip."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import golden_files, load_golden
from spikejax import convert
from spikejax.models import create_model
from spikejax.train import checkpoints

LISTING = pathlib.Path(__file__).resolve().parents[2] / "shared" / "spec" / \
    "official_param_listing.txt"


@pytest.fixture(scope="module")
def t_model():
  return create_model("espikeformer_t", num_classes=10, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def t_state_dict(t_model):
  """A state dict in the official layout, made from our own model (no golden needed)."""
  sd = convert.export_state_dict(t_model)
  for k in list(sd):
    if k.endswith(("fc1_conv.weight", "fc2_conv.weight")):
      sd[k] = sd[k][..., None]                     # Conv1d (out, in, 1)
    elif sd[k].ndim == 2 and not k.startswith("head"):
      sd[k] = sd[k][..., None, None]               # 1x1 Conv2d (out, in, 1, 1)
    if k.endswith("running_var"):
      sd[k.replace("running_var", "num_batches_tracked")] = np.asarray(7)
  return sd


def _listing_section(title):
  """{key: shape} of one model in the official state_dict listing (spec §9)."""
  out, inside = {}, False
  for line in LISTING.read_text().splitlines():
    if line.startswith("## "):
      inside = line.endswith(":: " + title)
      continue
    if inside and line and not line.startswith("#"):
      key, shape = line.split("\t")[:2]
      out[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
  return out


@pytest.mark.parametrize("name,title,entries", [
    ("espikeformer_t", "Efficient_Spiking_Transformer_t()", 605),
    ("espikeformer_s", "Efficient_Spiking_Transformer_s()", 605),
    ("espikeformer_dvs", "Efficient_Spiking_Transformer_scaling_8_19M()", 629)])
def test_keys_and_shapes_match_official_listing(name, title, entries):
  if not LISTING.exists():
    pytest.skip(f"{LISTING} is absent")
  listing = _listing_section(title)
  assert len(listing) == entries
  listing = {k: v for k, v in listing.items() if not k.endswith("num_batches_tracked")}
  model = nnx.eval_shape(lambda: create_model(name))
  ours = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    key = convert.to_official_key(path)
    ours[key] = convert._expected_official_shape(tuple(var.get_value().shape))
  assert set(ours) == set(listing)
  for key, shape in listing.items():
    squeezed = shape
    while len(squeezed) > 2 and squeezed[-1] == 1 and len(ours[key]) == 2:
      squeezed = squeezed[:-1]
    assert ours[key] == squeezed, key


def test_roundtrip_official_layout(t_model, t_state_dict):
  other = create_model("espikeformer_t", num_classes=10, rngs=nnx.Rngs(99))
  convert.load_official_state_dict(other, t_state_dict)
  a = nnx.to_flat_state(nnx.state(t_model, nnx.Any(nnx.Param, nnx.BatchStat)))
  b = dict(nnx.to_flat_state(nnx.state(other, nnx.Any(nnx.Param, nnx.BatchStat))))
  for path, v in a:
    np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(b[path].get_value()))


def test_missing_unexpected_and_misshaped_keys(t_state_dict):
  model = create_model("espikeformer_t", num_classes=10)
  before = np.asarray(model.head.kernel[...]).copy()
  sd = dict(t_state_dict)
  del sd["block3.2.attn.q_conv.1.running_var"]
  sd["block9.0.attn.q_conv.0.weight"] = np.zeros((1,))
  with pytest.raises(ValueError, match=r"1 missing key\(s\): \['block3.2.attn.q_conv.1.running_var'\]"
                     r".*1 unexpected key\(s\): \['block9.0.attn.q_conv.0.weight'\]"):
    convert.load_official_state_dict(model, sd)
  sd = dict(t_state_dict)
  sd["downsample2.encode_conv.weight"] = np.zeros((48, 24, 5, 5), np.float32)
  sd["head.weight"] = np.ones((10, 128), np.float32)
  with pytest.raises(ValueError, match=r"shape mismatch for 'downsample2.encode_conv.weight': "
                     r"the checkpoint has \(48, 24, 5, 5\), the model expects \(48, 24, 3, 3\)"):
    convert.load_official_state_dict(model, sd)
  # nothing was written into the model
  np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), before)


def test_wrong_class_count_is_named(t_state_dict):
  model = create_model("espikeformer_t", num_classes=1000)
  with pytest.raises(ValueError, match=r"'head\.(weight|bias)'.*\(10.*\(1000"):
    convert.load_official_state_dict(model, t_state_dict)


def test_cli_writes_orbax_and_load_model_restores(tmp_path, t_model, t_state_dict):
  npz = tmp_path / "official.npz"
  np.savez(npz, **{"module." + k: v for k, v in t_state_dict.items()})
  out = tmp_path / "ckpt"
  assert convert.main([str(npz), "--model", "Efficient_Spiking_Transformer_t", "--out",
                       str(out)]) == 0
  restored = checkpoints.load_model(str(out))
  assert restored.config.num_classes == 10
  t_model.eval()
  restored.eval()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  f = nnx.jit(lambda m, x: m(x))
  np.testing.assert_array_equal(np.asarray(f(t_model, x)), np.asarray(f(restored, x)))
  # refuses to overwrite
  with pytest.raises(FileExistsError, match="not empty"):
    convert.main([str(npz), "--model", "espikeformer_t", "--out", str(out)])


def test_read_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    convert.read_checkpoint_file(str(tmp_path / "nope.pth"))
  bad = tmp_path / "x.ckpt"
  bad.write_text("x")
  with pytest.raises(ValueError, match="unknown checkpoint format"):
    convert.read_checkpoint_file(str(bad))


@pytest.mark.skipif(not golden_files(), reason="../shared/golden is absent")
def test_golden_npz_reads_directly(golden_dir):
  path = golden_dir / "espikeformer_t_res64_seed0.npz"
  sd = convert.read_checkpoint_file(str(path))
  assert "head.weight" in sd and "input" not in sd
  assert convert.infer_num_classes(sd) == 10


def test_pth_reading(tmp_path, t_state_dict):
  torch = pytest.importorskip("torch", reason="reading .pth needs the optional torch extra")
  path = tmp_path / "official.pth"
  torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in t_state_dict.items()}},
             path)
  sd = convert.read_checkpoint_file(str(path))
  model = create_model("espikeformer_t", num_classes=10)
  convert.load_official_state_dict(model, sd)


# --- options a released file states (issue: official weights) ------------------------------

@pytest.mark.parametrize("name,want", [
    ("83M_1x4.pth", {"time_steps": 1, "spike_max": 4}),
    ("171M_1x8_384.pth", {"time_steps": 1, "spike_max": 8, "image_size": 384}),
    ("/x/y/83M_1x8.npz", {"time_steps": 1, "spike_max": 8}),
    ("espikeformer_t_res64_seed0.npz", {}),
    ("10M.pth", {}),
])
def test_release_file_names(name, want):
  assert convert.options_from_file_name(name) == want


def test_resolve_options_reads_the_file_and_refuses_contradictions():
  with_kd = {"head.weight": 0, "head_kd.weight": 0}
  no_kd = {"head.weight": 0}
  r = convert.resolve_options
  assert r(with_kd, {}, "83M_1x8_384.pth", family="spikformer") == \
      ({"kd": True, "spike_max": 8}, 384)
  assert r(no_kd, {"input_size": 224}, "171M.pth", family="spikformer") == ({"kd": False}, 224)
  assert r(no_kd, {}, "t.npz", family="espikeformer", spike_max=8) == ({"spike_max": 8}, None)
  with pytest.raises(ValueError, match="--kd but 171M.pth has no head_kd.* keys.*--no-kd"):
    r(no_kd, {}, "171M.pth", family="spikformer", kd=True)
  with pytest.raises(ValueError, match="--no-kd but .* holds a distillation head"):
    r(with_kd, {}, "x.pth", family="spikformer", kd=False)
  with pytest.raises(ValueError, match="saved args say kd=True but its keys lack head_kd"):
    r(no_kd, {"kd": True}, "x.pth", family="spikformer")
  with pytest.raises(ValueError, match="--spike-max 4 but the file name '83M_1x8.pth' says 1x8"):
    r(with_kd, {}, "83M_1x8.pth", family="spikformer", spike_max=4)
  with pytest.raises(ValueError, match="conflicting image sizes: --img-size 224, its saved "
                                       "args .input_size. 384, its file name 384"):
    r(with_kd, {"input_size": 384}, "83M_1x8_384.pth", family="spikformer", image_size=224)
  with pytest.raises(ValueError, match="espikeformer model has no distillation head"):
    r(with_kd, {}, "x.pth", family="espikeformer")


def test_cli_takes_d_from_the_release_name_and_records_it(tmp_path, t_state_dict):
  npz = tmp_path / "t_1x8.npz"
  np.savez(npz, **t_state_dict)
  out = tmp_path / "ckpt"
  assert convert.main([str(npz), "--model", "espikeformer_t", "--out", str(out)]) == 0
  meta = checkpoints.read_model_meta(str(out))
  assert meta["kwargs"] == {"num_classes": 10, "spike_max": 8}
  assert meta["source"] == str(npz)
  assert checkpoints.load_model(str(out)).spike.spike_max == 8
  assert convert.cli([str(npz), "--model", "espikeformer_t", "--spike-max", "4", "--out",
                      str(tmp_path / "other")]) == 2
  assert not (tmp_path / "other").exists()


def test_official_save_model_dict_reads_safely(tmp_path, t_state_dict):
  """The official ``save_model`` writes ``{"model", "optimizer", "epoch", "scaler", "args"}``,
  ``args`` an ``argparse.Namespace``: read with ``weights_only=True`` plus that one class."""
  torch = pytest.importorskip("torch", reason="reading .pth needs the optional torch extra")
  import argparse
  path = tmp_path / "checkpoint-299.pth"
  torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in t_state_dict.items()},
              "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "epoch": 299,
              "scaler": {"scale": 65536.0},
              "args": argparse.Namespace(model="Efficient_Spiking_Transformer_t", kd=False,
                                         input_size=224)}, path)
  sd, saved = convert.read_official(str(path))
  assert saved["input_size"] == 224 and "head.weight" in sd and "epoch" not in sd
  out = tmp_path / "ckpt"
  assert convert.main([str(path), "--model", "espikeformer_t", "--out", str(out)]) == 0
  assert checkpoints.read_model_meta(str(out))["image_size"] == 224

  class Evil:
    def __reduce__(self):
      return (print, ("unpickled!",))

  torch.save({"model": {}, "args": Evil()}, tmp_path / "evil.pth")
  with pytest.raises(ValueError, match="cannot be read as a PyTorch checkpoint"):
    convert.read_official(str(tmp_path / "evil.pth"))
