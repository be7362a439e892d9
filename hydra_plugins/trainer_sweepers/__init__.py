"""trainer's Hydra sweepers; Hydra finds them through the `hydra_plugins` namespace package."""
