"""Training sweeps: a (seed x kink) grid of trainings as one vmapped program.

``make_grid`` lists the members, ``run_sweep`` trains them all (one jitted
step per minibatch, called in a loop; metrics and a checkpoint after each
epoch), and
``PRESETS`` holds the papers' settings. The pieces (``make_train_step``,
``make_train_epoch``, ``make_eval``, ``init_state``) are public for custom
loops and benchmarks.
"""

from jaxkink.training import checkpoint
from jaxkink.training.core import Grid
from jaxkink.training.core import OPTIMIZERS
from jaxkink.training.core import OptimizerConfig
from jaxkink.training.core import SCHEDULES
from jaxkink.training.core import TrainState
from jaxkink.training.core import augment_keys
from jaxkink.training.core import auto_batching
from jaxkink.training.core import epoch_order
from jaxkink.training.core import eval_batches
from jaxkink.training.core import init_params
from jaxkink.training.core import make_batch_fn
from jaxkink.training.core import init_state
from jaxkink.training.core import make_eval
from jaxkink.training.core import make_grid
from jaxkink.training.core import make_member_step
from jaxkink.training.core import make_optimizer
from jaxkink.training.core import make_train_epoch
from jaxkink.training.core import make_train_step
from jaxkink.training.core import weight_distances
from jaxkink.training.loop import EpochReporter
from jaxkink.training.loop import SweepConfig
from jaxkink.training.loop import member_table
from jaxkink.training.loop import run_sweep
from jaxkink.training.loop import shard_members
from jaxkink.training.loop import sweep_settings
from jaxkink.training.presets import PRESETS
from jaxkink.training.presets import Preset
from jaxkink.training.presets import get_preset

__all__ = (
    'EpochReporter',
    'Grid',
    'OPTIMIZERS',
    'OptimizerConfig',
    'PRESETS',
    'Preset',
    'SCHEDULES',
    'SweepConfig',
    'TrainState',
    'augment_keys',
    'auto_batching',
    'checkpoint',
    'epoch_order',
    'eval_batches',
    'get_preset',
    'init_params',
    'init_state',
    'make_batch_fn',
    'make_eval',
    'make_grid',
    'make_member_step',
    'make_optimizer',
    'make_train_epoch',
    'make_train_step',
    'member_table',
    'run_sweep',
    'shard_members',
    'sweep_settings',
    'weight_distances',
)
