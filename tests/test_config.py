"""gradwatch.yaml loading: schema errors are one line naming file, line and key; secrets stay hidden."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

import gradwatch
from gradwatch.alerts import DETECTORS, AlertEngine, StepObservation
from gradwatch.config import HOOK_OPTIONS, Config, load_config
from gradwatch.errors import ConfigError
from tests.test_alerts_email import PASSWORD, SmtpServer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "alerts.yaml"
SECRET = "https://hooks.example.com/services/T000/B000/s3cr3t-token"


def write(tmp_path: Path, text: str, name: str = "gradwatch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message  # one line
    assert message.startswith(f"{path}:"), message  # names the file
    return info.value


def test_no_file_means_defaults(tmp_path):
    config = load_config()
    assert config.path is None and config.hook == {}
    assert [r.name for r in config.rules] == [
        "check_failure",
        "nonfinite",
        "loss_divergence",
        "vanishing_gradients",
        "exploding_gradients",
        "dead_units",
        "saturated_units",
        "stuck_loss",
        "slow_learning",
    ]
    assert all(r.actions == ("log", "mlflow") for r in config.rules)


def test_gradwatch_yaml_in_cwd_is_found(tmp_path):
    write(tmp_path, "hook: {every: 50, mode: sampled}\n")
    config = gradwatch.load_config()
    assert config.path == "gradwatch.yaml" and config.hook == {"every": 50, "mode": "sampled"}


def test_example_loads_and_documents_every_rule_type_and_parameter(monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK", raising=False)
    config = load_config(EXAMPLE)
    text = EXAMPLE.read_text()
    for kind, spec in DETECTORS.items():
        assert f"type: {kind}" in text, kind
        for param in spec.params:
            if param != "baseline":  # filled by the loader, not written by hand
                assert f"{param}:" in text, (kind, param)
    for option in HOOK_OPTIONS:
        assert f"  {option}:" in text, option
    assert {r.type for r in config.rules} == set(DETECTORS)
    assert set(config.emails) == {"oncall"} and "password" in text
    AlertEngine(config.rules).observe_step(StepObservation(0, 1.0))


def test_rules_webhooks_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK", SECRET)
    path = write(
        tmp_path,
        """
        alerts:
          webhooks: {slack: {url: "${SLACK_WEBHOOK}", timeout: 2, retries: 1}}
          rules:
            - {name: grad-explosion, type: grad_norm_drift, severity: warning, cooldown: 200,
               actions: [log, mlflow, "webhook:slack"], z: 6}
            - {name: nonfinite, enabled: false}
            - {type: loss_divergence, factor: 1e2}
    """,
    )
    config = load_config(path)
    by_name = {r.name: r for r in config.rules}
    assert (
        by_name["grad-explosion"].params == {"z": 6.0} and by_name["grad-explosion"].cooldown == 200
    )
    assert by_name["nonfinite"].enabled is False  # a default switched off
    assert by_name["loss_divergence"].params == {"factor": 100.0}  # `1e2` read as a number
    assert config.webhooks["slack"].url == SECRET and config.webhooks["slack"].retries == 1
    engine_rules = [r.name for r in AlertEngine(config.rules).rules]
    assert engine_rules[:2] == ["check_failure", "loss_divergence"]  # nonfinite switched off
    assert engine_rules[-1] == "grad-explosion" and "nonfinite" not in engine_rules


def test_secrets_never_in_loggable_params(tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK", SECRET)
    monkeypatch.setenv("TEAM_TOKEN", "tok-s3cr3t")
    monkeypatch.setenv("MLFLOW_PASSWORD_URI", "http://bob:s3cr3t@127.0.0.1:5000")
    path = write(
        tmp_path,
        """
        hook:
          every: 20
          tracking_uri: "${MLFLOW_PASSWORD_URI}"
          tags: {owner: bob, token: "${TEAM_TOKEN}"}
        alerts:
          webhooks:
            slack: {url: "${SLACK_WEBHOOK}", headers: {Authorization: "Bearer ${TEAM_TOKEN}"}}
            plain: {url: "http://127.0.0.1:9/literal-s3cr3t"}
          rules:
            - {name: grad-explosion, type: grad_norm_drift, actions: ["webhook:slack"]}
    """,
    )
    config = load_config(path)
    params = config.loggable_params()
    assert all(k.startswith("gradwatch.") and isinstance(v, str) for k, v in params.items())
    assert "s3cr3t" not in repr(params) and "tok-" not in repr(params)
    assert params["gradwatch.every"] == "20" and params["gradwatch.tracking_uri"] == "***"
    assert params["gradwatch.tags"] == "{owner: bob, token: ***}"
    assert params["gradwatch.alerts.webhooks"] == "plain,slack"
    assert "grad_norm_drift" in params["gradwatch.alerts.rule.grad-explosion"]
    assert "s3cr3t" not in repr(config.webhooks)
    literal = Config(hook={"tracking_uri": "http://bob:pw123@host:5000"})
    assert literal.loggable_params()["gradwatch.tracking_uri"] == "http://bob:***@host:5000"


def test_env_default_and_numbers_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_EVERY", "25")
    path = write(tmp_path, 'hook: {every: "${GW_EVERY}", experiment: "${GW_EXP:-mlp}"}\n')
    assert load_config(path).hook == {"every": 25, "experiment": "mlp"}


# --------------------------------------------------------------------------------------------
# One test per kind of bad file: one line, file and line named.


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(
        tmp_path,
        """
        alerts:
          rules:
            - name: grad-explosion
              type: grad_norm_drift
              cooldwn: 200
    """,
    )
    err = error_of(path)
    assert err.line == 5 and err.key == "alerts.rules[0].cooldwn"
    assert "did you mean `cooldown`?" in str(err)
    assert str(err).startswith(f"{path}:5: key `alerts.rules[0].cooldwn`: unknown key")


def test_unknown_top_level_and_hook_keys(tmp_path):
    err = error_of(write(tmp_path, "hook:\n  evry: 100\n"))
    assert err.line == 2 and "did you mean `every`?" in str(err)
    err = error_of(write(tmp_path, "hook: {}\nalert: {}\n"))
    assert err.line == 2 and "did you mean `alerts`?" in str(err)


def test_wrong_type(tmp_path):
    err = error_of(write(tmp_path, "hook:\n  every: 100\n  budget: lots\n"))
    assert err.line == 3 and err.key == "hook.budget" and "expected a number" in str(err)
    err = error_of(write(tmp_path, "alerts:\n  rules: {type: nonfinite}\n"))
    assert err.line == 2 and "must be a list" in str(err)


def test_bad_thresholds(tmp_path):
    err = error_of(write(tmp_path, "alerts:\n  rules:\n    - {type: nonfinite, cooldown: -5}\n"))
    assert err.line == 3 and "cooldown" in err.key and ">= 0" in str(err)
    err = error_of(
        write(tmp_path, "alerts:\n  rules:\n    - type: nonfinite\n      severity: fatal\n")
    )
    assert err.line == 4 and "allowed: info, warning, critical" in str(err)
    err = error_of(
        write(tmp_path, "alerts:\n  rules:\n    - {type: loss_divergence, factor: 0.5}\n")
    )
    assert err.line == 3 and "must be > 1" in str(err)
    err = error_of(
        write(tmp_path, "alerts:\n  rules:\n    - {type: nonfinite, actions: [log, email]}\n")
    )
    assert err.line == 3 and "unknown action 'email'" in str(err)
    err = error_of(
        write(tmp_path, "alerts:\n  rules:\n    - {type: nonfinite, actions: ['webhook:slak']}\n")
    )
    assert "no webhook named 'slak'" in str(err)


def test_unknown_rule_type_lists_the_allowed_ones(tmp_path):
    err = error_of(write(tmp_path, "alerts:\n  rules:\n    - name: x\n      type: grad_norm\n"))
    assert err.line == 4 and "did you mean `grad_norm_drift`?" in str(err)
    assert "allowed: check_failure, rel_error_drift, grad_norm_drift" in str(err)


def test_python_object_tag_is_a_clean_error(tmp_path):
    path = write(tmp_path, 'hook:\n  every: !!python/object/apply:os.system ["echo pwned"]\n')
    err = error_of(path)
    assert err.line == 2 and "!!python/object/apply:os.system is not allowed" in str(err)
    err = error_of(write(tmp_path, "alerts: !!python/object:gradwatch.config.Config {}\n"))
    assert err.line == 1


def test_empty_file(tmp_path):
    for text in ("", "\n\n", "# only a comment\n"):
        err = error_of(write(tmp_path, text))
        assert err.line == 1 and "empty" in str(err)


def test_yaml_syntax_error_and_bad_indentation(tmp_path):
    err = error_of(write(tmp_path, "hook:\n  every: 100\n   mode: auto\n"))
    assert err.line == 3 and "invalid YAML" in str(err)
    err = error_of(write(tmp_path, "alerts:\n  rules: [ {type: nonfinite}\n"))
    assert err.line is not None and "invalid YAML" in str(err)


def test_duplicate_keys_are_errors(tmp_path):
    err = error_of(write(tmp_path, "hook:\n  every: 1\n  every: 2\n"))
    assert err.line == 3 and "duplicate key" in str(err)


@pytest.mark.parametrize(
    "text, line",
    [
        ("hook:\n  experiment: " + "[" * 5000 + "]" * 5000 + "\n", 2),  # flow, one line
        ("hook:\n  params: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", 2),
        ("hook:\n  experiment:\n    " + "- " * 5000 + "x\n", 3),  # block, one line
        ("hook:\n" + "".join(" " * (i + 2) + f"k{i}:\n" for i in range(600)), 32),  # indented
    ],
)
def test_deep_nesting_is_refused_as_too_deep_at_once(tmp_path, text, line):
    """No aliases here: the message says depth, and the scanner stops at the limit instead of
    looking ahead through thousands of levels."""
    t0 = time.process_time()
    err = error_of(write(tmp_path, text))
    assert time.process_time() - t0 < 0.25
    assert err.line == line and "nested more than 32 levels deep" in str(err)
    assert "alias" not in str(err)


def test_merge_keys_work_and_a_recursive_merge_is_one_line(tmp_path):
    path = write(tmp_path, "hook: {<<: {every: 7, mode: full}, num_samples: 4}\n")
    assert load_config(path).hook == {"every": 7, "mode": "full", "num_samples": 4}
    err = error_of(write(tmp_path, "alerts:\n  webhooks: &w {<<: *w}\n"))
    assert err.line == 2 and "recursive alias" in str(err)


def test_too_many_values_are_refused_with_the_line(tmp_path):
    params = ", ".join(f"k{i}: 1" for i in range(20_001))
    err = error_of(write(tmp_path, f"hook:\n  every: 3\n  params: {{{params}}}\n"))
    assert err.line == 3 and "more than 20000 values" in str(err)


def test_missing_env_var_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK", raising=False)
    path = write(tmp_path, 'alerts:\n  webhooks:\n    slack: {url: "${SLACK_WEBHOOK}"}\n')
    err = error_of(path)
    assert err.line == 3 and "SLACK_WEBHOOK is not set" in str(err)


def test_bad_secret_value_is_not_echoed(tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK", "ftp://s3cr3t")
    err = error_of(write(tmp_path, 'alerts:\n  webhooks:\n    slack: "${SLACK_WEBHOOK}"\n'))
    assert "http://" in str(err) and "s3cr3t" not in str(err)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_hook_options_follow_the_hooks_semantics(tmp_path):
    path = write(
        tmp_path, "hook: {every: null, budget: null, stats_every: auto, rank_suffix: true}\n"
    )
    assert load_config(path).hook == {
        "every": None,
        "budget": None,
        "stats_every": "auto",
        "rank_suffix": True,
    }
    err = error_of(write(tmp_path, "hook:\n  stats_every: sometimes\n"))
    assert err.line == 2 and "integer or auto" in str(err)


def test_masked_text_hides_webhooks_and_uri_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK", SECRET)
    path = write(
        tmp_path,
        """
        hook: {tracking_uri: "http://bob:pw-s3cr3t@127.0.0.1:5000", experiment: mlp}
        alerts:
          webhooks:
            short: "http://127.0.0.1:9/hooks/short-s3cr3t"
            env: {url: "${SLACK_WEBHOOK}", headers: {Authorization: "Bearer tok-s3cr3t"}}
    """,
    )
    text = load_config(path).masked_text()
    assert "s3cr3t" not in text and text.startswith("# gradwatch.yaml as used by this run")
    assert "http://bob:***@127.0.0.1:5000" in text and "${SLACK_WEBHOOK}" in text
    assert "short: '***'" in text and "experiment: mlp" in text
    assert Config().masked_text() is None


@pytest.fixture
def smtp_server():
    server = SmtpServer()
    yield server
    server.close()


def test_email_target_in_yaml_delivers_to_a_real_smtp_server(tmp_path, monkeypatch, smtp_server):
    smtp = smtp_server
    monkeypatch.setenv("SMTP_PW", PASSWORD)
    path = write(
        tmp_path,
        f"""
        alerts:
          email:
            oncall: {{host: 127.0.0.1, port: {smtp.port}, from: gw@example.com,
                      to: [a@example.com], username: gw, password: "${{SMTP_PW}}",
                      timeout: 2, retries: 0}}
            inline: {{host: 127.0.0.1, from: gw@example.com, to: b@example.com,
                      password: plain-pw-s3cr3t}}
          rules:
            - {{type: nonfinite, actions: [log, "email:oncall"]}}
    """,
    )
    config = load_config(path)
    assert config.emails["oncall"].password == PASSWORD
    params = str(config.loggable_params())
    assert PASSWORD not in params and "plain-pw-s3cr3t" not in params
    assert config.loggable_params()["gradwatch.alerts.email"] == "inline,oncall"
    text = config.masked_text()
    assert PASSWORD not in text and "plain-pw-s3cr3t" not in text and "${SMTP_PW}" in text
    engine = AlertEngine(config.rules)
    delivery = config.delivery()
    alerts = engine.observe_step(StepObservation(3, loss=float("nan")))
    assert [a.actions for a in alerts] == [("log", "email:oncall")]
    for a in alerts:
        delivery.deliver(a)
    assert smtp.wait(1)
    delivery.close(5.0)
    assert smtp.logins == [("gw", PASSWORD)]
    assert smtp.envelopes == [("gw@example.com", ["a@example.com"])]
    assert "nonfinite" in str(smtp.messages[0]["Subject"])


def test_bad_email_targets_name_the_line(tmp_path):
    err = error_of(write(tmp_path, "alerts:\n  email: {x: {host: h, from: a@b}}\n"))
    assert "email needs `to`" in str(err) and err.line == 2
    err = error_of(
        write(
            tmp_path, "alerts:\n  email:\n    x: {host: h, from: a@b, to: c@d,\n        prot: 25}\n"
        )
    )
    assert "did you mean `port`" in str(err) and err.line == 4
    text = "alerts:\n  rules:\n    - {type: nonfinite}\n    - {type: nan, actions: ['email:x']}\n"
    err = error_of(write(tmp_path, text.replace("nan", "loss_divergence")))
    assert "no email target named 'x'" in str(err) and err.line == 4
    assert err.key == "alerts.rules[1].actions[0]"
