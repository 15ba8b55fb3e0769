from captcha.constants import DEFAULT_MAX_PARAMS
from captcha.sweep import run_grid
from captcha.train import TrainConfig


def test_grid_gives_dense_models_fixed_heads_and_measures_them_over_the_budget(easy_data, tmp_path):
    base = TrainConfig(data=str(easy_data), epochs=1, cache_dir=str(tmp_path / "c"), init="none")
    rows = run_grid(base, tmp_path / "grid", models=["sepnet", "baseline"], preprocessors=["gray"], log=lambda s: None)
    heads = {r["model"]: r["head"] for r in rows}
    assert heads == {"sepnet": "attention", "baseline": "fixed"}  # baseline reads pooled features only
    baseline = next(r for r in rows if r["model"] == "baseline")
    assert baseline["parameters"] > DEFAULT_MAX_PARAMS and 0.0 <= baseline["sequence"] <= 1.0
    table = (tmp_path / "grid" / "sweep.md").read_text()
    assert "| baseline | fixed | gray |" in table and "(over 1M)" in table
    assert "| sepnet | attention | gray |" in table
