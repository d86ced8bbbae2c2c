"""Launch tools: sweeps, TPU pod launch, ahead-of-time compiles."""


def import_config_file(spec: str, module_name: str = "launch_config"):
  """``(module, arg)`` for ``PATH[:ARG]``: the config file imported as a module (the same
  ``get_config(arg)`` files ``spikejax.main --config`` reads). Raises ``FileNotFoundError``
  naming the path when it does not exist."""
  import importlib.util
  import os
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  mod_spec = importlib.util.spec_from_file_location(module_name, path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  return mod, arg or None
