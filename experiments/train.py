# Runs the `jaxkink-train` command from a checkout (`pip install` puts
# the command itself on the PATH). The code, and the --help text (its
# docstring), are in jaxkink/experiments/train.py.
from jaxkink.experiments import train

if __name__ == '__main__':
  train.run()
