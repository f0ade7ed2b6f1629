# Runs the `jaxkink-bifurcation` command from a checkout (`pip install` puts
# the command itself on the PATH). The code, and the --help text (its
# docstring), are in jaxkink/experiments/bifurcation.py.
from jaxkink.experiments import bifurcation

if __name__ == '__main__':
  bifurcation.run()
