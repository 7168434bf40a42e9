"""Bad input, as a hostile or careless user would give it: every class gets a clear, one-line
gradwatch error (or is handled), never a hang, a deep traceback, a leaked secret or a
silently wrong record. New code in the hook and the config is tried against these.

Classes: non-finite inputs in every position, hostile YAML (aliases, recursion, NUL, huge),
credentials in URI forms, odd steps and scalars, tensors that change mid-run, a script that
never closes its run.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest

from gradwatch import ConfigError, GradWatch, InputError
from gradwatch.config import load_config, parse_config

# --------------------------------------------------------------------------------------------
# Hostile YAML


def _alias_bomb(where: str) -> str:
    """Nine levels of lists that each reference the level below nine times (9**9 leaves)."""
    value = "&a0 [x, x, x, x, x, x, x, x, x]"
    for level in range(1, 9):
        value = f"&a{level} [{value}, " + ", ".join([f"*a{level - 1}"] * 8) + "]"
    return where.replace("BOMB", value)


@pytest.mark.parametrize(
    "where",
    [
        "hook:\n  experiment: BOMB\n",
        "hook:\n  tags: {x: BOMB}\n",
        "hook:\n  params: BOMB\n",
        "alerts:\n  rules: BOMB\n",
        "alerts:\n  rules:\n    - {type: BOMB}\n",
        "alerts:\n  rules:\n    - {type: nonfinite, severity: BOMB}\n",
        "alerts:\n  rules:\n    - {type: nonfinite, actions: BOMB}\n",
        "alerts:\n  rules:\n    - {type: grad_norm_drift, z: BOMB}\n",
        "alerts:\n  webhooks: {slack: BOMB}\n",
        "unknown: BOMB\n",
    ],
)
def test_alias_bomb_is_refused_in_one_line_at_once(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(where))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.perf_counter() - t0 < 0.5
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:") and len(message) < 400


def test_shared_nodes_are_fine_when_small(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "alerts:\n  rules:\n"
        "    - &r {name: a, type: nonfinite, actions: &acts [log, mlflow]}\n"
        "    - {name: b, type: loss_divergence, actions: *acts}\n"
    )
    rules = {r.name: r for r in load_config(path).rules}
    assert rules["a"].actions == rules["b"].actions == ("log", "mlflow")


@pytest.mark.parametrize(
    "text, line",
    [
        ("hook: &a {params: *a}\n", 1),
        ("alerts:\n  rules: &r [*r]\n", 2),
        ("hook:\n  every: 10\n  experiment: a\x00b\n", 3),
    ],
)
def test_recursive_alias_and_nul_byte_are_one_line_errors(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}:{line}:"), message


def test_huge_config_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("hook:\n  every: 10\n" + "# padding\n" * 200_000)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="more than the 1000000"):
        load_config(path)
    assert time.perf_counter() - t0 < 0.5


def test_env_expansion_never_names_a_key_or_a_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("GW_SECRET", "hunter2-s3cr3t")
    with pytest.raises(ConfigError, match="rule names cannot use") as err:
        parse_config('alerts:\n  rules:\n    - {name: "${GW_SECRET}", type: nonfinite}\n', "c.yaml")
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(ConfigError, match="keys cannot use") as err:
        parse_config('hook:\n  params: {"${GW_SECRET}": 1}\n', "c.yaml")
    assert "s3cr3t" not in str(err.value)


def test_secret_reached_through_an_alias_is_still_masked(monkeypatch):
    monkeypatch.setenv("GW_TOKEN", "tok-s3cr3t")
    config = parse_config('hook:\n  tags: &t {owner: "${GW_TOKEN}"}\n  params: *t\n', "c.yaml")
    assert "s3cr3t" not in repr(config.loggable_params())
    assert config.hook_metadata("params") == {"owner": "***"}


# --------------------------------------------------------------------------------------------
# Options: arguments and YAML validated by the same schema


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("seed", -1, ">= 0"),
        ("num_samples", 10**30, "integer from 1 to 2147483647"),  # the engine's own limits
        ("seed", 2**64, "integer from 0 to 2**64 - 1"),
        ("num_samples", 0, ">= 1"),
        ("every", 0, ">= 1"),
        ("budget", 1.5, "<= 1"),
        ("eps", float("nan"), "finite"),
        ("flush_timeout", -1, ">= 0"),
        ("mode", "fast", "not one of"),
        ("stats_every", "sometimes", "integer or auto"),
    ],
)
def test_bad_option_is_refused_the_same_way_as_argument_and_in_yaml(tmp_path, option, value, words):
    with pytest.raises(InputError) as err:
        GradWatch(config=False, **{option: value})
    assert f"`{option}`" in str(err.value) and words in str(err.value)
    path = tmp_path / "gradwatch.yaml"
    shown = ".nan" if isinstance(value, float) and math.isnan(value) else repr(value)
    path.write_text(f"hook:\n  {option}: {shown}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:2: key `hook.{option}`") and words in str(err.value)


def test_numpy_scalars_and_paths_are_accepted_as_options(tmp_path):
    watch = GradWatch(
        every=np.int64(5), budget=np.float32(0.5), journal_dir=tmp_path / "j", config=False
    )
    assert watch.options.every == 5 and watch.options.journal_dir == str(tmp_path / "j")


# --------------------------------------------------------------------------------------------
# Odd steps and scalars given to step()


def _params():
    return {"w": np.ones(3), "b": np.zeros(1)}


def _grads():
    return {"dw": np.full(3, 0.1), "db": np.full(1, 0.1)}


@pytest.fixture
def watch(tracking_uri):
    with GradWatch(every=None, experiment="adversarial", config=False) as w:
        yield w


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"step": 2**70}, "outside the 64-bit"),
        ({"step": -(2**64)}, "outside the 64-bit"),
        ({"step": 3.5}, "must be an integer"),
        ({"step": "7"}, "must be an integer"),
        ({"step": True}, "must be an integer"),
        ({"loss": np.array([5.0, 6.0, 7.0])}, "one number"),
        ({"loss": "1.5"}, "got the string"),
        ({"loss": 1.5 + 2j}, "real number"),
        ({"loss": np.complex128(1.5)}, "real number"),
        ({"loss": object()}, "real number"),
        ({"lr": [0.1, 0.2]}, "one number"),
    ],
)
def test_odd_steps_and_scalars_are_refused(watch, kwargs, words):
    with pytest.raises(InputError, match=words):
        watch.step(_params(), _grads(), **{"loss": 1.0, **kwargs})


def test_a_refused_step_leaves_the_others_landing(tracking_uri):
    with GradWatch(every=None, experiment="adversarial-steps", config=False) as watch:
        params = _params()
        for s in range(6):
            if s == 3:
                with pytest.raises(InputError):
                    watch.step(params, _grads(), loss=9.0, step=2**70)
            watch.step(params, _grads(), loss=float(s), step=s)
        watch.step(params, _grads(), loss=1.0, step=2**63 - 1)  # the largest MLflow step
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(watch.run.run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == [0, 1, 2, 3, 4, 5, 2**63 - 1]


def test_numpy_scalars_and_size_one_arrays_are_accepted(watch):
    watch.step(_params(), _grads(), loss=np.float32(0.5), lr=np.array([0.1]), step=np.int64(4))
    watch.step(_params(), _grads(), loss=np.array(0.25), lr=1, step=5)


# --------------------------------------------------------------------------------------------
# Tensors that change after the first step: an InputError at once, on any step


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda p, g: p.update(extra=np.ones(2)), "added 'extra'"),
        (lambda p, g: p.pop("b"), "removed 'b'"),
        (lambda p, g: p.update(bias=p.pop("b")), "added 'bias'; removed 'b'"),
        (lambda p, g: g.update(dw=np.ones(4)), "gradient for 'w' is of shape (4,)"),
        (lambda p, g: g.update(dw=np.ones((3, 1))), "gradient for 'w' is of shape (3, 1)"),
        (lambda p, g: g.pop("db"), "grads changed"),
        (lambda p, g: g.update(dx=g.pop("dw")), "grads changed"),
    ],
)
def test_layout_change_after_the_first_step_is_an_input_error_at_once(tracking_uri, change, words):
    with GradWatch(every=1000, stats_every=1000, experiment="adv-layout", config=False) as watch:
        for _ in range(5):  # past the first steps: these are quiet steps
            watch.step(_params(), _grads(), loss=1.0, lr=0.1)
        params, grads = _params(), _grads()
        change(params, grads)
        with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
            watch.step(params, grads, loss=1.0, lr=0.1)


def test_list_params_changing_length_is_an_input_error(tracking_uri):
    with GradWatch(every=None, stats_every=1000, experiment="adv-list", config=False) as watch:
        for _ in range(5):
            watch.step([np.ones(2), np.ones(3)], [np.ones(2), np.ones(3)], loss=1.0)
        with pytest.raises(InputError, match="lists of 2 arrays"):
            watch.step([np.ones(2)], [np.ones(2)], loss=1.0)


def test_namedtuple_params_work(tracking_uri):
    from collections import namedtuple

    Params = namedtuple("Params", "w b")
    p = Params(np.ones(3), np.zeros(1))
    with GradWatch(every=2, experiment="adv-namedtuple", config=False) as watch:
        for s in range(4):
            report = watch.step(
                p,
                (np.full(3, 2.0), np.full(1, 1.0)),
                loss=1.0,
                loss_fn=lambda q: float(np.sum(q[0] ** 2) + q[1][0]),
            )
            assert s % 2 or report.passed
    assert watch.checks == 2 and watch.checks_failed == 0


# --------------------------------------------------------------------------------------------
# Non-finite values in every position: reported by the nonfinite rule, never a numpy warning


@pytest.mark.parametrize("position", ["loss", "lr", "param", "grad", "huge"])
def test_non_finite_values_alert_without_numpy_warnings(tracking_uri, position, capsys):
    def inputs(s):
        p, g, loss, lr = _params(), _grads(), 1.0, 0.1
        if s == 6:
            if position == "loss":
                loss = float("nan")
            elif position == "lr":
                lr = float("inf")
            elif position == "param":
                p["w"][1] = np.inf
            elif position == "grad":
                g["dw"][2] = np.nan
            else:  # finite values whose squares overflow float64
                p["w"][:], g["dw"][:] = 1e300, 1e300
        return p, g, loss, lr

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GradWatch(
            every=3, stats_every=1, experiment=f"adv-nonfinite-{position}", config=False
        ) as watch:
            for s in range(10):
                p, g, loss, lr = inputs(s)
                watch.step(
                    p,
                    g,
                    loss=loss,
                    lr=lr,
                    loss_fn=lambda q: float(0.1 * np.sum(q["w"]) + 0.1 * q["b"][0]),
                )
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [
        str(w.message) for w in caught
    ]
    assert "RuntimeWarning" not in capsys.readouterr().err
    fired = [(a.rule, a.step) for a in watch.alerts]
    if position == "huge":  # finite values: no NaN/Inf to report, whatever their norm
        assert not [rule for rule, _ in fired if rule == "nonfinite"], fired
    elif position != "lr":
        assert ("nonfinite", 6) in fired


# --------------------------------------------------------------------------------------------
# Credentials in URI forms never reach the run's artifacts or params


@pytest.mark.parametrize(
    "uri",
    [
        "http://bob:PW-s3cr3t@127.0.0.1:1/x",
        "https://TOKEN-s3cr3t@127.0.0.1:1",
        "postgresql://bob:PW-s3cr3t@db/x",
    ],
)
def test_uploaded_config_masks_webhooks_and_uri_credentials(tracking_uri, tmp_path, uri):
    folder = tmp_path / "cfg"
    folder.mkdir()
    config = folder / "gradwatch.yaml"
    config.write_text(
        textwrap.dedent(f"""
        hook:
          tracking_uri: "{uri}"
          params: {{note: "mirror at {uri}"}}
        alerts:
          webhooks:
            short: "http://127.0.0.1:9/hooks/SHORT-s3cr3t"
            long: {{url: "https://127.0.0.1:9/LONG-s3cr3t", headers: {{X-Token: "HDR-s3cr3t"}}}}
            named: "${{GW_HOOK_URL}}"
            defaulted: "${{GW_UNSET_URL:-http://127.0.0.1:9/DEFAULT-s3cr3t}}"
          rules:
            - {{type: nonfinite, actions: [log, "webhook:short", "webhook:long"]}}
        """)
    )
    import os

    os.environ["GW_HOOK_URL"] = "http://127.0.0.1:9/ENV-s3cr3t"
    try:
        with GradWatch(
            every=None,
            experiment="adv-secrets",
            tracking_uri=tracking_uri,
            config=str(config),
            keep_journal=True,
        ) as watch:
            watch.step(_params(), _grads(), loss=1.0)
    finally:
        del os.environ["GW_HOOK_URL"]
    client = mlflow.MlflowClient(tracking_uri)
    uploaded = Path(client.download_artifacts(watch.run.run_id, "gradwatch/gradwatch.yaml"))
    copies = [p for p in (tmp_path / ".gradwatch").rglob("gradwatch.yaml")]
    assert copies, "the journal keeps its own copy of the config"
    for path in [uploaded, *copies]:
        text = path.read_text()
        assert "s3cr3t" not in text, (path, text)
        assert "short: '***'" in text and "${GW_HOOK_URL}" in text and "secrets masked" in text
    run = client.get_run(watch.run.run_id)
    assert "s3cr3t" not in repr(run.data.params) + repr(run.data.tags)


# --------------------------------------------------------------------------------------------
# A script that never calls close()


@pytest.mark.parametrize(
    "ending, status", [("pass", "FINISHED"), ("raise ValueError('x')", "FAILED")]
)
def test_run_left_open_ends_at_interpreter_exit(tracking_uri, tmp_path, ending, status):
    experiment = f"adv-atexit-{status}"
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(f"""
        import numpy as np, gradwatch
        watch = gradwatch.GradWatch(every=None, experiment={experiment!r},
                                    tracking_uri={tracking_uri!r}, config=False).start()
        for s in range(5):
            watch.step({{"w": np.ones(3)}}, {{"dw": np.ones(3)}}, loss=1.0 / (s + 1))
        {ending}
        """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == (0 if status == "FINISHED" else 1), proc.stderr
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == status
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 5
    if status == "FAILED":
        assert "ValueError: x" in run.data.tags["gradwatch.error"]


@pytest.mark.parametrize(
    "option, bad, good",
    [("seed", 2**64, 2**64 - 1), ("num_samples", 2**31, 2**31 - 1), ("seed", -1, 0)],
)
def test_check_options_have_one_set_of_limits(tmp_path, option, bad, good):
    """check_gradients, GradWatch(...) and gradwatch.yaml accept and refuse the same values."""
    from gradwatch.check import check_gradients

    p = {"w": np.ones(2)}
    with pytest.raises(InputError):
        check_gradients(lambda q: float(q["w"].sum()), p, {"w": np.ones(2)}, **{option: bad})
    with pytest.raises(InputError):
        GradWatch(config=False, **{option: bad})
    path = tmp_path / "gradwatch.yaml"
    path.write_text(f"hook:\n  {option}: {bad}\n")
    with pytest.raises(ConfigError, match=f"key `hook.{option}`"):
        load_config(path)
    assert GradWatch(config=False, **{option: good}).options.as_dict()[option] == good
    path.write_text(f"hook:\n  {option}: {good}\n")
    assert load_config(path).hook[option] == good
