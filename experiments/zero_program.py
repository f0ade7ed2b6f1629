# Runs the `jaxkink-zero-program` command from a checkout (`pip install` puts
# the command itself on the PATH). The code, and the --help text (its
# docstring), are in jaxkink/experiments/zero_program.py.
from jaxkink.experiments import zero_program

if __name__ == '__main__':
  zero_program.run()
