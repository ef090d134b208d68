"""Stage ``eval``: zero-shot classification, retrieval, and the CLIP §5 table (All / Clean / Overlap)
with its statistics, ``report.md`` and a Figure 17 in ``eval/{model_tag}/``.

Public API (what the CLI, ``clipcurate run`` and other stages may call)::

    from clipcurate import eval as evaluation

    res = evaluation.evaluate(ws)          # the latest train/ checkpoint on every benchmark: an EvalResult
    evaluation.read_table(ws, res.tag)     # the §5 table rows of an evaluated model
    evaluation.resolve_spec(ws, model="ViT-B-32", pretrained="openai")   # (ModelSpec, checkpoint or None)

``PREDICTIONS`` and ``EVAL`` are the manifests it writes. Modules: ``stage`` (the stage),
``stats`` (binomial test, Clopper-Pearson, Bonferroni), ``report`` (Markdown and the figure).
"""

from clipcurate.eval.stage import (EVAL, PREDICTIONS, EvalResult, evaluate, find_checkpoint, read_table,
                                   resolve_spec, retrieval, zero_shot)

__all__ = ["evaluate", "read_table", "resolve_spec", "find_checkpoint", "zero_shot", "retrieval", "EvalResult",
           "EVAL", "PREDICTIONS"]
