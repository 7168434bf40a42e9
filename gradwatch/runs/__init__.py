"""Reading runs back: what gradwatch does with runs once they are in MLflow.

    gradwatch.runs.compare    one summary and verdict per run (``gradwatch compare``)
    gradwatch.runs.verdicts   the rules behind the verdicts (pure functions)
    gradwatch.runs.plot       the curves of several runs in one image (matplotlib, optional)
    gradwatch.runs.monitor    alert rules evaluated server-side (``gradwatch monitor``)
    gradwatch.runs.sweep      a script run once per parameter value (``gradwatch sweep``)

Writing runs (the hook, ``gradwatch.tracking``) lives apart; both sides take metric and tag
names from :mod:`gradwatch.schema` and reach MLflow through :mod:`gradwatch.mlflow_access`.
Nothing is imported here, so ``import gradwatch.runs.verdicts`` stays cheap.
"""
