"""The experiments of the papers, as commands.

Each module is an absl program (flags, ``main``, ``run``), installed as a
console command and runnable from a checkout as ``experiments/<name>.py``:

* ``jaxkink-volume`` (:mod:`~jaxkink.experiments.volume`): the Monte Carlo
  volume of the bifurcation zone (NeurIPS 2021 Table 1, TMLR Tables 2-4);
  its paper presets are in :mod:`~jaxkink.experiments.volume_presets`;
* ``jaxkink-train`` (:mod:`~jaxkink.experiments.train`): training sweeps
  over kink values;
* ``jaxkink-bifurcation`` (:mod:`~jaxkink.experiments.bifurcation`): two
  trainings in lockstep until their weights part;
* ``jaxkink-zero-program`` (:mod:`~jaxkink.experiments.zero_program`):
  programs equal to zero in exact arithmetic, in floating point;
* ``jaxkink-zero-map`` (:mod:`~jaxkink.experiments.zero_map`): the zone in
  a random plane around a bifurcation run's parting weights.

Importing a module defines no flag; ``run()`` defines them and starts absl.
"""
