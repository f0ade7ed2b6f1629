# Runs the `jaxkink-volume` command from a checkout (`pip install` puts
# the command itself on the PATH). The code, and the --help text (its
# docstring), are in jaxkink/experiments/volume.py.
from jaxkink.experiments import volume

if __name__ == '__main__':
  volume.run()
