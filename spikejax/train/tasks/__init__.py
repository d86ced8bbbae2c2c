"""Training tasks: ``classify``, ``distill`` (classification with a teacher), ``mim``,
``segment`` (semantic segmentation), ``detect`` (Mask R-CNN detection).

``get_task(name)`` / ``TASKS`` is the table; ``from_config(config)`` the task a config runs
(``config.task``, default ``classify``; ``classify`` with ``config.distill.teacher`` is
``distill``). A new task is one module: a ``Task`` subclass and ``register(...)``
(``spikejax.train.tasks.base`` says what a task defines).
"""

from spikejax.train.tasks.base import (DEFAULT_TASK, TASKS, Task, check_eval_views,
                                       check_model, from_config, get_task, register,
                                       unregister)
import spikejax.train.tasks.classify  # noqa: F401,E402  (the tasks register themselves)
import spikejax.train.tasks.distill  # noqa: F401,E402
import spikejax.train.tasks.mim  # noqa: F401,E402
import spikejax.train.tasks.segment  # noqa: F401,E402
import spikejax.train.tasks.detect  # noqa: F401,E402

__all__ = ["DEFAULT_TASK", "TASKS", "Task", "check_eval_views", "check_model", "from_config",
           "get_task",
           "register", "unregister"]
