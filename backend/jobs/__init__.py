"""What the CLI and the service run: a body fit, an avatar fit, a render, a mesh bake, the demo
(and the built-in sample subject the demo and tests fit)."""
