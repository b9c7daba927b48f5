"""Using the demo's trained model: the best_of_n asset, `pickapic rerank` on its candidates, the eval prompts."""
import dagster as dg
import pyarrow.parquet as pq

from dagster_project.cli import main as pickapic


def _metadata(home, asset: str) -> dict:
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def test_best_of_n_asset_measured_gains(private_home):
    meta = _metadata(private_home, "best_of_n")
    assert meta["candidates_per_prompt"] == 8 and meta["prompts"] > 0
    assert meta["gain_trained_n1"] == 0 and meta["gain_untrained_n1"] == 0
    oracle = [meta[f"gain_oracle_n{k}"] for k in (1, 2, 4, 8)]
    assert oracle == sorted(oracle) and oracle[-1] > 0
    for k in (2, 4, 8):
        assert meta[f"gain_trained_n{k}"] <= meta[f"gain_oracle_n{k}"]
    assert "data:image/png" in meta["chart"] and "data:image/png" in meta["contact_sheet"]


def test_rerank_cli_reproduces_the_assets_choices(built_home, tmp_path):
    run = next((built_home.models / "preference_model").iterdir())
    out = tmp_path / "reranked"
    assert pickapic(["rerank", "--model", str(run / "best"), "--candidates", str(run / "best_of_n" / "candidates"),
                     "--output", str(out)]) == 0
    ours = pq.read_table(out / "choices.parquet").to_pylist()
    asset = pq.read_table(run / "best_of_n" / "rerank" / "choices.parquet").to_pylist()
    assert [(c["prompt_id"], c["best_image"]) for c in ours] == [(c["prompt_id"], c["best_image"]) for c in asset]
    assert all(c["num_scored"] == c["num_candidates"] == 8 and not c["errors"] for c in ours)


def test_eval_prompts_are_the_test_unique_prompts(built_home, tmp_path):
    assert pickapic(["export", "--home", str(built_home.root), "--format", "eval-prompts",
                     "--output", str(tmp_path / "prompts")]) == 0
    prompts = pq.read_table(tmp_path / "prompts" / "eval_prompts.parquet").to_pylist()
    latest = (built_home.datasets / "latest").resolve()
    unique = [r for f in sorted((latest / "test_unique").glob("pickapic-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(p["test_unique_key"] for p in prompts) == sorted(r["key"] for r in unique)
    assert {p["dataset_version"] for p in prompts} == {latest.name}
    run = next((built_home.models / "preference_model").iterdir())
    candidates = {p.name for p in (run / "best_of_n" / "candidates").iterdir() if p.is_dir()}
    assert candidates == {p["prompt_id"] for p in prompts}  # best-of-n generates for exactly these prompts
