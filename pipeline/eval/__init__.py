"""Stage ``eval``: zero-shot classification, retrieval, and the CLIP §5 table (All / Clean / Overlap)
with its statistics, ``report.md`` and a Figure 17 in ``eval/{model_tag}/``.

Public API (what the CLI, ``clipcurate run`` and other stages may call)::

    from clipcurate import eval as evaluation

    res = evaluation.evaluate(ws)          # the latest train/ checkpoint on every benchmark: an EvalResult
    evaluation.read_table(ws, res.tag)     # the §5 table rows of an evaluated model
    evaluation.resolve_spec(ws, model="ViT-B-32", pretrained="openai")   # (ModelSpec, checkpoint or None)
    evaluation.compare(ws, "all", "clean")  # the counterfactual: two train runs on the same samples

``PREDICTIONS``, ``EVAL`` and ``COMPARE`` are the manifests it writes. Modules: ``stage`` (the
stage), ``table`` (one benchmark's §5 row), ``stats`` (scipy.stats: binomial test, Clopper-Pearson,
McNemar, power, Bonferroni), ``compare`` (the counterfactual), ``provenance`` (how overlap was
decided, what made the predictions), ``report`` (Markdown, self-contained HTML, the figures).
"""

from clipcurate.eval.stage import (EVAL, PREDICTIONS, EvalResult, bonferroni_m, evaluate, find_checkpoint,
                                   read_table, resolve_spec, retrieval, zero_shot)
from clipcurate.eval.compare import COMPARE, CompareResult, compare

__all__ = ["evaluate", "compare", "bonferroni_m", "read_table", "resolve_spec", "find_checkpoint", "zero_shot",
           "retrieval", "EvalResult", "CompareResult", "EVAL", "PREDICTIONS", "COMPARE"]
