"""The models fit on part of the likes (for the ranker's lists) are freed before the serving
models train on all likes: kept beside them, they raised training's peak memory by their
own size (shortlist.training.pipeline.fit_part_stage)."""

from __future__ import annotations

import gc
import weakref

import pytest

from shortlist.data.synthetic import generate
from shortlist.models import registry
from shortlist.training import pipeline
from shortlist.training.pipeline import TrainConfig, train_bundle


@pytest.mark.slow  # the whole pipeline, on small data
def test_fit_part_models_are_gone_when_the_serving_model_is_built(monkeypatch):
    data = generate(n_users=120, n_items=80, n_topics=4, likes_per_user=12, seed=2)
    cfg = TrainConfig(dim=8, epochs=2, candidates=40, tune_budget=0.0, precomputed=32)
    built: list[tuple[str, weakref.ref]] = []
    alive_then: list[str] = []
    build = registry.build

    def recording(name, options=None):
        if built and name == cfg.model and any(n == cfg.model for n, _ in built):
            gc.collect()  # the serving model: what the fit part built must be gone
            alive_then.extend(n for n, ref in built if ref() is not None)
        model = build(name, options)
        built.append((name, weakref.ref(model)))
        return model

    monkeypatch.setattr(pipeline.registry, "build", recording)
    bundle = train_bundle(data, cfg)
    fit_part = [n for n, _ in built][: [n for n, _ in built].index(cfg.model, 1)]
    assert cfg.model in fit_part and len(fit_part) > 1, built  # the model and its sources
    assert not alive_then, f"fit-part models still held: {alive_then}"
    assert bundle.ranker is not None and bundle.manifest["fusion_choice"] is not None
