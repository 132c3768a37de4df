"""Instant feedback for the exercise notebooks: ``normlab.check.<task>(student_fn)``.

Each checker calls the student's function on fixed inputs, compares the
results with normlab's reference, prints one summary line such as
``batch_norm_forward: 7/7 checks passed`` and one hint per failed check, and
returns the list of `Check`. Hints give the size and place of an error and name
a recognised classic mistake; they never print the expected values.

The instructor's grader uses the same `Task` objects (``TASKS``) but calls the
student's function in another process, then judges here.
"""
from . import ch1, ch2, ch3, ch4, ch5, ch6, ch7, ch8, ch9
from .ch3 import GRADCHECK_TARGETS, gradcheck_target
from ._task import ArrayTask, Check, Report, Task, check_and_print, run, summary, to_plain

TASKS = {task.name: task for module in (ch1, ch2, ch3, ch4, ch5, ch6, ch7, ch8, ch9) for task in module.TASKS}


def tasks_for_chapter(chapter):
    """The tasks of one exercise notebook, in notebook order."""
    return [task for task in TASKS.values() if task.chapter == chapter]


def _make_checker(task):
    def checker(student_fn):
        return check_and_print(task, student_fn)

    checker.__name__ = checker.__qualname__ = task.name
    checker.__doc__ = (f"Check ``{task.function}`` (chapter {task.chapter}, {task.points:g} points): prints a "
                       "summary line and a hint per failed check, returns the list of Check.")
    return checker


# loop names that cannot shadow a submodule (`_task` is one: `import normlab.check._task` must give it)
for _checker_name, _checker_task in TASKS.items():
    globals()[_checker_name] = _make_checker(_checker_task)

__all__ = ["TASKS", "Task", "ArrayTask", "Check", "Report", "run", "summary", "to_plain", "tasks_for_chapter",
           "gradcheck_target", "GRADCHECK_TARGETS", *TASKS]
