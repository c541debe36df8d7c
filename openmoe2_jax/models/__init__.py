"""Models: layers, routing, MoE and the transformer stack (flax.linen, logical axis names only)."""
