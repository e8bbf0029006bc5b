"""Length-extension evaluation: every metric runs as an exact chunked recurrence (memory flat in L).

    run.py          evaluate_run(run, EvalConfig) -> result dict; write_outputs, load_result, compare
    registry.py     metric name -> compute function, typed result (MetricResult) and settings check
    context.py      EvalContext, what every compute function receives (and the shared position pass)
    perplexity.py   ppl_vs_length and position_ppl (LongSSM, arXiv:2406.02080)
    remembrance.py  effective_remembrance (Buitrago Ruiz & Gu, arXiv:2507.02782)
    passkey.py      passkey retrieval over length × depth
    state_stats.py  state_stats: state magnitude by position
    cache.py        results cached per checkpoint hash, data hash, metric, length and settings
    report.py       verdicts, the sweep grid, markdown tables (no torch, no matplotlib)
    plots.py        figures with matplotlib's object API (never pyplot: the user's backend is left alone)

Nothing is imported here, so that ``longssm.evaluate.registry`` (used by ``EvalConfig``) stays cheap to import.
"""
