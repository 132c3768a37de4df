"""Advisory: which tasks' code calls torch's or normlab's own implementation of what the task asks.

The code is read as a syntax tree, never run. Imports are followed
(``import torch.nn.functional as F``, ``from normlab import batch_norm as bn``),
so ``F.batch_norm`` is seen as ``torch.nn.functional.batch_norm``. A task's
code is its function and the top-level functions it calls, transitively. The
finding never changes a score: the instructor decides what it means.
"""
import ast
import fnmatch
import re

_BACKWARD = ("torch.autograd.*", "torch.func.*", "*.backward", "*.grad")
_BN = ("torch.nn.functional.batch_norm", "torch.batch_norm", "torch.nn.BatchNorm*",
       "torch.nn.modules.batchnorm.*", "normlab.batch_norm*", "normlab.nn.BatchNorm*", "normlab.core.*")
_GN = ("torch.nn.functional.group_norm", "torch.group_norm", "torch.nn.GroupNorm",
       "normlab.group_norm*", "normlab.nn.GroupNorm", "normlab.core.*")
_RMS = ("torch.nn.functional.rms_norm", "torch.rms_norm", "torch.nn.RMSNorm", "normlab.rms_norm*",
        "normlab.nn.RMSNorm", "normlab.core.*")
_DROPOUT = ("torch.nn.functional.dropout", "torch.dropout", "torch.nn.Dropout", "normlab.dropout*",
            "normlab.nn.Dropout")
_SYNC = ("normlab.distributed.*", "torch.nn.SyncBatchNorm", "torch.nn.modules.batchnorm.*")
_RUNNING = ("normlab.running_stats.*",)

# What counts as "the library's own implementation" of each task (glob patterns over dotted names).
IMPLEMENTATIONS = {
    "layer_stats": (),  # statistics of activations: the library's reductions are the point
    "shift_metric": (),
    "batch_norm_forward": _BN,
    "batch_norm_conv": _BN,
    "batch_norm_backward_staged": _BN + _BACKWARD,
    "batch_norm_backward_compact": _BN + _BACKWARD,
    "grad_check": ("normlab.gradcheck.numerical_gradient", "normlab.numerical_gradient", "torch.autograd.*",
                   "torch.func.*"),  # rel_error is a given helper
    "update_running_stats": _RUNNING + _BN,
    "batch_norm_eval": _BN,
    "fold_linear": ("normlab.fold*", "torch.nn.utils.fusion.*", "torch.ao.*",
                    "torch.fx.experimental.optimization.*"),
    "cumulative_mean": _RUNNING,
    "ema_bias_corrected": _RUNNING,
    "kalman_scalar": _RUNNING,
    "group_norm_forward": _GN,
    "group_norm_backward": _GN + _BACKWARD,
    "layer_norm_via_group_norm": ("torch.nn.functional.layer_norm", "torch.layer_norm", "torch.nn.LayerNorm",
                                  "normlab.layer_norm*", "normlab.nn.LayerNorm"),
    "rms_norm_forward": _RMS,
    "rms_norm_backward": _RMS + _BACKWARD,
    "pre_ln_block": ("torch.nn.TransformerEncoderLayer", "torch.nn.TransformerEncoder", "torch.nn.Transformer"),
    "dropout_forward": _DROPOUT,
    "dropout_backward": _DROPOUT + _BACKWARD,
    "local_response_norm_forward": ("torch.nn.functional.local_response_norm", "torch.nn.LocalResponseNorm",
                                    "normlab.local_response_norm*", "normlab.nn.LocalResponseNorm"),
    "sgd_step": ("torch.optim.*",),
    "merge_two_ranks": _SYNC,
    "sync_running_stats": _SYNC + _RUNNING,
    "sync_batch_norm_backward": _SYNC + _BN + _BACKWARD,
}
_REEXPORTS = re.compile(r"^normlab\.(functional|nn)\.")  # normlab.functional.x is normlab.x


def _parse(cells):
    """Each cell's syntax tree; IPython magics and shell lines are blanked, unparsable cells skipped."""
    trees = []
    for source in cells:
        text = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
        try:
            trees.append(ast.parse(text))
        except (SyntaxError, ValueError):
            continue
    return trees


def _aliases(trees):
    """Local name -> the dotted name it was imported as, over every import in the notebook."""
    names = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        names[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        names[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node, aliases):
    """``F.batch_norm`` -> ``torch.nn.functional.batch_norm``; an attribute of anything else -> ``?.name``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        base = aliases.get(node.id, "?" if parts else None)
    else:
        base = "?"  # e.g. loss(x).backward
    if base is None:
        return None
    return ".".join([base, *reversed(parts)])


def _functions(trees):
    """Top-level functions by name (the last definition wins, as when the notebook runs)."""
    defs = {}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs[node.name] = node
    return defs


def _reached(name, defs):
    """The function ``name`` and every top-level function it calls, transitively."""
    todo, seen = [name], []
    while todo:
        current = todo.pop()
        if current in seen or current not in defs:
            continue
        seen.append(current)
        todo += [n.func.id for n in ast.walk(defs[current])
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    return [defs[n] for n in seen]


def _matches(name, patterns):
    candidates = {name, _REEXPORTS.sub("normlab.", name)}
    return any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns)


def library_calls(cells, tasks):
    """``[{"task": name, "calls": [dotted names]}]`` for each task whose code uses its library implementation."""
    trees = _parse(cells)
    aliases, defs = _aliases(trees), _functions(trees)
    found = []
    for task in tasks:
        patterns = IMPLEMENTATIONS.get(task.name, ())
        calls = []
        for fn in _reached(task.function, defs):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Attribute, ast.Name)):
                    name = _dotted(node, aliases)
                    if name and name not in calls and _matches(name, patterns):
                        calls.append(name)
        # a chain like torch.nn.functional.batch_norm also yields torch.nn.functional: keep the longest
        calls = [c for c in calls if not any(o != c and o.startswith(c + ".") for o in calls)]
        if calls:
            found.append({"task": task.name, "calls": sorted(calls)})
    return found
