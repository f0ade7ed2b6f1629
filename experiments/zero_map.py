# Runs the `jaxkink-zero-map` command from a checkout (`pip install` puts
# the command itself on the PATH). The code, and the --help text (its
# docstring), are in jaxkink/experiments/zero_map.py.
from jaxkink.experiments import zero_map

if __name__ == '__main__':
  zero_map.run()
