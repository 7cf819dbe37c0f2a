"""The configs and the cache keys derived from them: every setting that changes a trained model
changes its key, and only its key."""
from __future__ import annotations

import ast
import dataclasses

import pytest

from cvae_utils import BUDGETS, BaselineConfig, ClassifierConfig, CVAEConfig, tutorial_config
from cvae_utils.cache import MODEL_CODE, _strip_docstrings, code_digest, model_key

SMOKE = BUDGETS["smoke"]


def _other_value(value):
    """A valid value different from ``value`` (of the same type)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.25
    if isinstance(value, str):
        return {"auto": "fp32", "fp32": "bf16", "bf16": "fp32", "exp": "softplus",
                "cvae": "gsnn"}[value]
    raise TypeError(value)


CVAE_FIELDS = [f.name for f in dataclasses.fields(CVAEConfig) if f.name != "baseline"]
BASELINE_FIELDS = [f.name for f in dataclasses.fields(BaselineConfig)]


@pytest.mark.parametrize("name", CVAE_FIELDS)
def test_every_cvae_field_changes_the_cvaes_key_and_not_the_baselines(name):
    config = CVAEConfig()
    changed = config.replace(**{name: _other_value(getattr(config, name))})
    assert model_key("cvae", changed, SMOKE, 1) != model_key("cvae", config, SMOKE, 1)
    assert model_key("baseline", changed, SMOKE, 1) == model_key("baseline", config, SMOKE, 1)


@pytest.mark.parametrize("name", BASELINE_FIELDS)
def test_every_baseline_field_changes_both_keys(name):
    config = CVAEConfig()
    changed = config.replace(baseline={name: _other_value(getattr(config.baseline, name))})
    for kind in ("baseline", "cvae"):
        assert model_key(kind, changed, SMOKE, 2) != model_key(kind, config, SMOKE, 2), kind


def test_budget_and_quadrants_enter_the_key():
    config = CVAEConfig()
    for kind in ("baseline", "cvae"):
        assert model_key(kind, config, SMOKE, 1) != model_key(kind, config, SMOKE, 2)
        assert model_key(kind, config, SMOKE, 1) != model_key(kind, config, BUDGETS["quick"], 1)
    classifier = ClassifierConfig()
    assert (model_key("classifier", classifier, SMOKE)
            != model_key("classifier", classifier.replace(dropout=0.1), SMOKE))


def test_auto_precision_enters_the_key_as_what_the_machine_uses(monkeypatch):
    import cvae_utils.speed as speed

    keys = {}
    for fast in (True, False):
        monkeypatch.setattr(speed, "fast_bfloat16", lambda device=None, fast=fast: fast)
        key = model_key("cvae", CVAEConfig(), SMOKE, 1)
        assert key["config"]["precision"] == key["config"]["baseline"]["precision"] == (
            "bf16" if fast else "fp32")
        keys[fast] = key
        # "auto" and the precision it stands for are the same model
        explicit = CVAEConfig(precision="bf16" if fast else "fp32",
                              baseline=BaselineConfig(precision="bf16" if fast else "fp32"))
        assert model_key("cvae", explicit, SMOKE, 1) == key
    assert keys[True] != keys[False]


def test_the_code_that_trains_a_model_enters_its_key(monkeypatch):
    import cvae_utils.cache as cache

    baseline, cvae = (model_key(k, CVAEConfig(), SMOKE, 1) for k in ("baseline", "cvae"))
    # a change to the CVAE's optimiser changes the CVAE's key, not the baseline's
    real = code_digest.__wrapped__

    def edited(*modules):
        return real(*modules) + ("-edited" if "optim" in modules else "")

    monkeypatch.setattr(cache, "code_digest", edited)
    assert model_key("baseline", CVAEConfig(), SMOKE, 1) == baseline
    assert model_key("cvae", CVAEConfig(), SMOKE, 1) != cvae
    assert set(MODEL_CODE["baseline"]) < set(MODEL_CODE["cvae"])


def test_the_code_digest_ignores_docstrings_and_comments_but_not_code():
    def digest(source):
        return ast.dump(_strip_docstrings(ast.parse(source)))

    plain = 'def f(x):\n    """Doc."""\n    return x + 1  # a comment\n'
    assert digest(plain) == digest('def f(x):\n    """Other words."""\n    return x + 1\n')
    assert digest(plain) != digest('def f(x):\n    """Doc."""\n    return x + 2\n')
    assert len(code_digest("train")) == 16 and code_digest("train") != code_digest("data")


def test_tutorial_config_is_available_by_name_and_differs_from_the_default():
    tutorial = tutorial_config()
    assert not tutorial.decoder_sees_x and tutorial.batch_size == tutorial.baseline.batch_size
    assert tutorial != CVAEConfig()


@pytest.mark.parametrize("config, match", [
    (lambda: CVAEConfig(decoder_sees_x="no"), "decoder_sees_x must be True or False"),
    (lambda: CVAEConfig(lr=float("inf")), "lr must be a finite number"),
    (lambda: CVAEConfig(lr=float("nan")), "lr must be a finite number"),
    (lambda: BaselineConfig(lr=float("inf")), r"BaselineConfig.lr must be a finite number"),
    (lambda: BaselineConfig(batch_size=0), "batch_size must be an int >= 1"),
    (lambda: BaselineConfig(batch_size=2.0), "batch_size must be an int >= 1"),
    (lambda: CVAEConfig(z_dim=True), "z_dim must be an int >= 1"),
    (lambda: CVAEConfig(precision="fp16"), "precision must be one of 'auto', 'fp32', 'bf16'"),
    (lambda: CVAEConfig(objective="vae"), "objective must be one of"),
    (lambda: CVAEConfig(min_delta=-0.1), "min_delta must be a finite number"),
    (lambda: CVAEConfig(min_delta="0.05"), "min_delta must be a finite number"),
    (lambda: CVAEConfig(min_delta=None), "min_delta must be a finite number"),
    (lambda: CVAEConfig(lr_decay=0), "lr_decay must be a finite number in"),
    (lambda: CVAEConfig(hybrid_alpha=1.5), "hybrid_alpha must be a finite number"),
    (lambda: CVAEConfig(baseline={"lr": 1}), "baseline must be a BaselineConfig"),
    (lambda: ClassifierConfig(hidden=()), "hidden must be a non-empty sequence"),
    (lambda: ClassifierConfig(dropout=1.0), "dropout must be a finite number"),
])
def test_bad_config_values_are_refused_by_name(config, match):
    with pytest.raises(ValueError, match=match):
        config()


def test_replace_names_unknown_fields_and_changes_the_baseline_by_dict():
    config = CVAEConfig()
    with pytest.raises(TypeError, match="no field cvae_lr; its fields are"):
        config.replace(cvae_lr=1e-3)
    changed = config.replace(baseline={"lr": 0.01})
    assert changed.baseline.lr == 0.01 and changed.lr == config.lr
    with pytest.raises(TypeError, match="BaselineConfig has no field z_dim"):
        config.replace(baseline={"z_dim": 3})


def test_differences_name_each_changed_field_with_this_configs_value():
    book = CVAEConfig()
    assert book.differences(book) == {}
    other = book.replace(z_dim=50, baseline={"lr": 0.01})
    assert other.differences(book) == {"z_dim": 50, "baseline": other.baseline.to_dict()}
    assert book.differences(other) == {"z_dim": book.z_dim, "baseline": book.baseline.to_dict()}
    assert other.baseline.differences(book.baseline) == {"lr": 0.01}
