"""Pure-torch building blocks that techniques put into or around a model (no Lightning, no Hydra)."""
